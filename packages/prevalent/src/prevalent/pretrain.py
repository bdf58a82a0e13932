"""``prevalent-pretrain``: pre-train the PREVALENT encoder on image-text-action triplets.

Triplets are (instruction, current panorama, teacher action) — one per step of a shortest-path
teacher walking each R2R-format training path, as in the paper. Two self-supervised losses are
summed: attended masked language modelling on the cross-attended text, and action prediction
from ``[CLS]`` over the panoramic candidates (STOP at index 0). The run logs both losses and, every
``--eval-every`` steps, MLM accuracy and action accuracy on triplets of held-out (unseen) houses.

With no arguments it trains on the embedded synthetic worlds (speaker-style augmentation: the
pretraining paths are ``--augment`` times as many as the fine-tuning paths, in the same training
houses) and writes the encoder bundle to ``<run_dir>/encoder`` — ``runs/prevalent-pretrain/encoder``
by default, which is where ``prevalent-finetune`` looks for it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dgm_core import cli
from dgm_core.cli import option
from dgm_core.errors import UserError
from dgm_core.runtime.schedules import warmup_linear_decay
from dgm_core.training import TrainingConfig, TrainingRun
from prevalent.data.synthetic import SyntheticConfig
from prevalent.env import STOP_ACTION, BatchNavEnv
from prevalent.model.encoder import EncoderConfig, size_options
from prevalent.model.heads import IGNORE_INDEX, PrevalentPretrainingModel
from prevalent.model.masking import MaskingRule, mask_tokens
from prevalent.model.pretrained import save_bundle
from prevalent.model.tokenizer import InstructionTokenizer, build_tokenizer
from prevalent.rollout import World, data_paths, open_world, synthetic_world
from prevalent.tasks import NavEpisode, TaskOptions, fixed_sample, get_task, training_texts


@dataclass(frozen=True)
class Triplet:
    """One teacher step: episode ``episode`` standing at ``viewpoint`` facing ``heading``/``elevation``.

    The panorama and the teacher action are looked up when the triplet is batched, so millions of
    triplets cost a few numbers each.
    """

    episode: int
    viewpoint: str
    heading: float
    elevation: float


def teacher_triplets(episodes: list[NavEpisode], world: World, max_steps: int = 30) -> list[Triplet]:
    """Walk every episode with the shortest-path teacher; one triplet per state, STOP included."""
    env = BatchNavEnv(world.graphs)
    env.reset(
        [e.scan for e in episodes],
        [e.start for e in episodes],
        [e.heading for e in episodes],
        instr_ids=[e.instr_id for e in episodes],
    )
    goals = [e.teacher_goal for e in episodes]
    triplets: list[Triplet] = []
    for _ in range(max_steps):
        if env.all_ended:
            break
        triplets += [
            Triplet(b, ep.viewpoint, ep.heading, ep.elevation)
            for b, ep in enumerate(env.episodes)
            if not ep.ended
        ]
        env.step(env.teacher_actions(goals))
    return triplets


@dataclass
class TripletBatch:
    input_ids: torch.Tensor
    text_mask: torch.Tensor
    views: torch.Tensor
    vision_mask: torch.Tensor
    num_candidates: int
    mlm_labels: torch.Tensor
    action_labels: torch.Tensor

    def to(self, device: torch.device) -> TripletBatch:
        return TripletBatch(
            self.input_ids.to(device),
            self.text_mask.to(device),
            self.views.to(device),
            self.vision_mask.to(device),
            self.num_candidates,
            self.mlm_labels.to(device),
            self.action_labels.to(device),
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        """The per-triplet tensors (first dimension = triplet), e.g. to split into micro-batches."""
        return {
            "input_ids": self.input_ids,
            "text_mask": self.text_mask,
            "views": self.views,
            "vision_mask": self.vision_mask,
            "mlm_labels": self.mlm_labels,
            "action_labels": self.action_labels,
        }

    def model_inputs(self) -> dict:
        return dict(
            input_ids=self.input_ids,
            text_mask=self.text_mask,
            views=self.views,
            vision_mask=self.vision_mask,
            num_candidates=self.num_candidates,
            mlm_labels=self.mlm_labels,
            action_labels=self.action_labels,
        )


class TripletBatcher:
    """Turns triplet indices into model inputs: tokens (masked), panorama ⊕ candidates, teacher action."""

    def __init__(
        self,
        episodes: list[NavEpisode],
        triplets: list[Triplet],
        world: World,
        tokenizer: InstructionTokenizer,
        max_text_length: int,
        angle_feature_size: int,
        rule: MaskingRule,
    ):
        self.episodes = episodes
        self.triplets = triplets
        self.rule = rule
        self.tokenizer = tokenizer
        self.env = BatchNavEnv(world.graphs, world.features, angle_feature_size)
        encoded = [tokenizer.token_ids(e.instruction, max_text_length) for e in episodes]
        self.tokens = [ids for ids, _ in encoded]
        self.truncated = sum(cut for _, cut in encoded)

    def __len__(self) -> int:
        return len(self.triplets)

    def batch(self, indices: list[int], generator: torch.Generator) -> TripletBatch:
        chosen = [self.triplets[i] for i in indices]
        episodes = [self.episodes[t.episode] for t in chosen]
        self.env.reset(
            [e.scan for e in episodes],
            [t.viewpoint for t in chosen],
            [t.heading for t in chosen],
            [t.elevation for t in chosen],
        )
        obs = self.env.observe()
        actions = self.env.teacher_actions([e.teacher_goal for e in episodes])
        panorama = torch.from_numpy(obs.panorama_features)
        candidates = torch.from_numpy(obs.candidate_features[:, 1:])  # row 0 is STOP: the head scores it
        views = torch.cat([panorama, candidates], dim=1)
        vision_mask = torch.cat(
            [torch.ones(panorama.shape[:2], dtype=torch.bool), torch.from_numpy(obs.candidate_mask[:, 1:])],
            dim=1,
        )
        text = self.tokenizer.pad([self.tokens[t.episode] for t in chosen])
        masked, labels = mask_tokens(text.input_ids, self.rule, generator)
        return TripletBatch(
            masked,
            text.text_mask,
            views,
            vision_mask,
            candidates.shape[1],
            labels,
            torch.from_numpy(actions.astype(np.int64)),
        )


def accumulate_gradients(
    run: TrainingRun, model: torch.nn.Module, batch: TripletBatch
) -> dict[str, torch.Tensor]:
    """Forward and backward one optimizer step's ``batch`` in ``--grad-accum`` micro-batches.

    The losses are means over the whole step's targets (masked tokens for MLM, triplets for the
    action), whatever the split: each micro-batch's mean losses are weighted by its share of those
    targets, so the accumulated gradients equal those of the step's batch in one piece (micro-batches
    hold different numbers of masked tokens; averaging their means would weigh tokens unequally).
    Returns the step's losses (detached, on the run's device: no synchronisation here).
    """
    mlm_targets = max(int((batch.mlm_labels != IGNORE_INDEX).sum()), 1)
    action_targets = max(int((batch.action_labels != IGNORE_INDEX).sum()), 1)
    totals: dict[str, torch.Tensor] = {}
    for chunk, sync in run.micro_batches(model, batch.tensors()):
        micro = TripletBatch(**chunk, num_candidates=batch.num_candidates)
        mlm_share = int((micro.mlm_labels != IGNORE_INDEX).sum()) / mlm_targets
        action_share = int((micro.action_labels != IGNORE_INDEX).sum()) / action_targets
        with sync, run.precision.autocast():
            out = model(**micro.to(run.device).model_inputs())
            losses = {"mlm_loss": out.mlm_loss * mlm_share, "action_loss": out.action_loss * action_share}
            losses["loss"] = losses["mlm_loss"] + losses["action_loss"]
        run.precision.backward(losses["loss"])
        for name, value in losses.items():
            totals[name] = totals[name] + value.detach() if name in totals else value.detach()
    return totals


@torch.no_grad()
def evaluate(
    model: PrevalentPretrainingModel,
    batcher: TripletBatcher,
    batch_size: int,
    device: torch.device,
    seed: int,
) -> dict[str, float]:
    """MLM accuracy (masked tokens) and action accuracy, also split by STOP, on every triplet of ``batcher``.

    ``eval_stop_accuracy`` is the action accuracy on triplets whose teacher action is STOP (the
    agent must recognise the goal), ``eval_move_accuracy`` on the others; ``eval_stop_share`` says
    how many STOP triplets there were.
    """
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)  # the same masks at every evaluation
    mlm_hits = mlm_total = act_hits = act_total = stop_hits = stop_total = 0
    loss_sum = 0.0
    for start in range(0, len(batcher), batch_size):
        batch = batcher.batch(list(range(start, min(start + batch_size, len(batcher)))), generator).to(device)
        out = model(**batch.model_inputs())
        targets = batch.mlm_labels[batch.mlm_labels != IGNORE_INDEX]
        mlm_hits += int((out.mlm_logits.argmax(-1) == targets).sum())
        mlm_total += len(targets)
        correct = out.action_logits.argmax(-1) == batch.action_labels
        is_stop = batch.action_labels == STOP_ACTION
        act_hits += int(correct.sum())
        act_total += len(batch.action_labels)
        stop_hits += int((correct & is_stop).sum())
        stop_total += int(is_stop.sum())
        loss_sum += float(out.loss) * len(batch.action_labels)
    model.train(was_training)
    return {
        "eval_mlm_accuracy": mlm_hits / max(mlm_total, 1),
        "eval_action_accuracy": act_hits / max(act_total, 1),
        "eval_stop_accuracy": stop_hits / stop_total if stop_total else float("nan"),
        "eval_move_accuracy": (
            (act_hits - stop_hits) / (act_total - stop_total) if act_total > stop_total else float("nan")
        ),
        "eval_stop_share": stop_total / max(act_total, 1),
        "eval_loss": loss_sum / max(act_total, 1),
    }


@dataclass
class PretrainConfig(TrainingConfig):
    run_dir: str = option(
        "runs/prevalent-pretrain", help="Run directory; the encoder bundle goes to <run_dir>/encoder."
    )
    steps: int = option(500, help="Optimizer steps.")
    log_every: int = option(50, help="Log training losses every N steps.")
    checkpoint_every: int = option(250, help="Checkpoint every N steps (0: only at the end).")
    data: str = option(
        "", help="Folder with connectivity/ and R2R/R2R_<split>.json (empty: embedded synthetic worlds)."
    )
    features: str = option(
        "", help="Feature store (TSV, .npy folder, .safetensors); default <data>/features."
    )
    train_split: str = option("train", help="R2R split the triplets come from.")
    eval_split: str = option("val_unseen", help="Held-out split for MLM/action accuracy (unseen houses).")
    augment: int = option(
        4,
        help="Synthetic worlds only: pretraining paths per training house = augment x the fine-tuning ones.",
    )
    synthetic_seed: int = option(0, help="Seed of the embedded synthetic worlds.")
    bert: str = option(
        "", help="Local BERT checkpoint folder (offline) to initialise the text stream and vocab."
    )
    vocab_size: int = option(1000, help="WordPiece vocabulary size when training a tokenizer.")
    hidden_size: int = option(64, help="Hidden size (paper: 768).")
    num_attention_heads: int = option(4, help="Attention heads (paper: 12).")
    intermediate_size: int = option(128, help="Feed-forward width (paper: 3072).")
    text_layers: int = option(2, help="Language-only layers L_lang (paper: 9).")
    cross_layers: int = option(2, help="Cross-modal layers L_cross (paper: 4).")
    angle_feature_size: int = option(128, help="Orientation feature width (paper: 128).")
    max_text_length: int = option(80, help="Tokens per instruction; longer ones are truncated and counted.")
    dropout: float = option(0.1, help="Dropout.")
    batch_size: int = option(32, help="Triplets per step per rank.")
    lr: float = option(5e-4, help="Peak AdamW learning rate.")
    weight_decay: float = option(0.01, help="AdamW weight decay.")
    warmup_steps: int = option(50, help="Linear warm-up steps, then linear decay to 0.")
    max_grad_norm: float = option(1.0, help="Gradient clipping (0: off).")
    mask_probability: float = option(0.15, help="Share of non-special tokens chosen for MLM.")
    eval_every: int = option(200, help="Evaluate on held-out houses every N steps (and at the end).")
    eval_triplets: int = option(
        512, help="Held-out triplets to evaluate on: a fixed random sample of all steps, STOP included."
    )


def _open_worlds(cfg: PretrainConfig) -> tuple[World, World]:
    """(the world the triplets come from, the world whose training language the vocabulary is learnt on).

    With ``--data`` both are that folder. The synthetic default learns the vocabulary in the
    fine-tuning world and, with ``--augment N``, draws triplets from a world of the same houses and
    features (same seed) with N times as many paths per house.
    """
    world = open_world(cfg.data, cfg.features, cfg.synthetic_seed)
    if cfg.data or cfg.augment <= 1:
        return world, world
    augmented = synthetic_world(
        world.data_dir.parent / f"seed{cfg.synthetic_seed}-augment{cfg.augment}",
        cfg.synthetic_seed,
        paths_per_house=SyntheticConfig.paths_per_house * cfg.augment,
    )
    return augmented, world


def _model_record(cfg: PretrainConfig) -> dict:
    """What a checkpoint of this run must match to be resumed: the size options and where the
    vocabulary comes from. Its size and the image-feature width follow from files prepared inside
    the run (``tokenizer.json``, kept in the run, and the feature store); the bundle's config.json
    holds the complete :class:`EncoderConfig`."""
    return {
        "encoder": size_options(cfg),
        "vocabulary": f"BERT {cfg.bert}" if cfg.bert else f"WordPiece of at most {cfg.vocab_size} tokens",
    }


def pretrain(cfg: PretrainConfig) -> int:
    data_paths(cfg.data, cfg.features)  # wrong paths are refused before the run opens
    if cfg.warmup_steps < 0:
        raise UserError(f"--warmup-steps must be ≥ 0, got {cfg.warmup_steps}")
    r2r = get_task("r2r")
    with TrainingRun(cfg, model_config=_model_record(cfg), name="prevalent-pretrain") as run:
        with run.main_process_first():
            # One-time preparation: rank 0 generates missing synthetic worlds and learns the
            # vocabulary; the other ranks then find those files and reuse them. The vocabulary comes
            # from the fine-tuning world's training language (all tasks); it is kept in the run and
            # the bundle, and a from-scratch baseline can reuse it (prevalent-finetune --tokenizer).
            world, vocabulary_world = _open_worlds(cfg)
            tokenizer = build_tokenizer(
                lambda: training_texts(vocabulary_world.data_dir),
                cfg.vocab_size,
                cfg.bert,
                run.run_dir / "tokenizer.json",
            )
        train_episodes = r2r.load(world.data_dir, cfg.train_split, TaskOptions())
        eval_episodes = r2r.load(world.data_dir, cfg.eval_split, TaskOptions())
        encoder_config = EncoderConfig.from_options(
            cfg,
            vocab_size=tokenizer.vocab_size,
            pad_token_id=tokenizer.pad_id,
            image_feature_size=world.feature_size,
        )
        rule = MaskingRule(
            tokenizer.mask_id, tokenizer.vocab_size, tokenizer.special_ids, cfg.mask_probability
        )
        train_triplets = teacher_triplets(train_episodes, world)
        # A sample of every step of every path: the middle and the end (STOP) of paths in their true
        # proportions, not only the first steps of the first paths.
        held_out = fixed_sample(teacher_triplets(eval_episodes, world), cfg.eval_triplets, cfg.seed)
        # A triplet reads the panorama where it stands: refuse a store lacking one now, not mid-run.
        world.features.require(
            {(train_episodes[t.episode].scan, t.viewpoint) for t in train_triplets}
            | {(eval_episodes[t.episode].scan, t.viewpoint) for t in held_out},
            f"the pretraining triplets of {cfg.train_split} and {cfg.eval_split}",
        )
        train = TripletBatcher(
            train_episodes,
            train_triplets,
            world,
            tokenizer,
            cfg.max_text_length,
            cfg.angle_feature_size,
            rule,
        )
        heldout = TripletBatcher(
            eval_episodes, held_out, world, tokenizer, cfg.max_text_length, cfg.angle_feature_size, rule
        )
        if train.truncated:
            run.logger.warning(
                "%d of %d training instructions were longer than %d tokens and were truncated",
                train.truncated,
                len(train_episodes),
                cfg.max_text_length,
            )
        run.logger.info(
            "%d training triplets from %d instructions; %d held-out triplets (%s)",
            len(train),
            len(train_episodes),
            len(heldout),
            cfg.eval_split,
        )
        model = PrevalentPretrainingModel(encoder_config)
        if cfg.bert:
            init_text_stream_from_bert(model, cfg.bert)
        model.to(run.device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = warmup_linear_decay(optimizer, cfg.warmup_steps, cfg.steps)
        run.track(models={"model": model}, optimizers={"model": optimizer}, schedulers={"model": scheduler})
        start = run.resume()
        ddp_model = run.wrap(model)
        sampler = run.sampler(len(train), cfg.batch_size, start_step=start)
        model.train()
        for step, indices in zip(run.steps(start), sampler):
            # Masks depend on (seed, rank, step) only, so a resumed run masks exactly as an unbroken one.
            generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + run.dist.rank * 7_919 + step)
            # The step is batched (and masked) whole, then split into --grad-accum micro-batches, so
            # its masks and its gradients do not depend on how it is split.
            losses = accumulate_gradients(run, ddp_model, train.batch(list(indices), generator))
            run.precision.step(optimizer, max_grad_norm=cfg.max_grad_norm)
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if run.should_log(step):
                run.check_finite(step, {"loss": losses["loss"]})
                run.log(step, {**losses, "lr": scheduler.get_last_lr()[0]})
            if step % max(cfg.eval_every, 1) == 0 or step == cfg.steps:
                with run.precision.autocast():
                    metrics = evaluate(model, heldout, cfg.batch_size * 2, run.device, seed=cfg.seed)
                run.log(step, metrics, reduce=False)
                run.logger.info("step %d held-out %s", step, _fmt(metrics))
        if run.dist.is_main:
            bundle = save_bundle(
                run.run_dir / "encoder", model, tokenizer, extra={"pretrain_steps": cfg.steps}
            )
            with run.precision.autocast():
                final = evaluate(model, heldout, cfg.batch_size * 2, run.device, seed=cfg.seed)
            run.write_json("eval.json", {"split": cfg.eval_split, "step": cfg.steps, **final})
            print(f"prevalent-pretrain: held-out {_fmt(final)}; encoder bundle at {bundle}")
    return 0


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k.removeprefix('eval_')} {v:.3f}" for k, v in metrics.items())


def init_text_stream_from_bert(model: PrevalentPretrainingModel, bert_dir: str) -> None:
    """Copy embeddings, the first ``text_layers`` layers and the pooler from a local BERT checkpoint."""
    from transformers import BertModel

    path = Path(bert_dir)
    if not path.is_dir():
        raise UserError(f"--bert folder {path} does not exist")
    try:
        bert = BertModel.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read a BERT checkpoint from {path}: {error}") from None
    config = model.config
    if (
        bert.config.hidden_size != config.hidden_size
        or bert.config.intermediate_size != config.intermediate_size
    ):
        raise UserError(
            f"--bert has hidden/intermediate size {bert.config.hidden_size}/{bert.config.intermediate_size}; "
            f"pass --hidden-size {bert.config.hidden_size} "
            f"--intermediate-size {bert.config.intermediate_size} "
            f"--num-attention-heads {bert.config.num_attention_heads}"
        )
    if bert.config.num_hidden_layers < config.text_layers:
        raise UserError(
            f"--bert has {bert.config.num_hidden_layers} layers, "
            f"fewer than --text-layers {config.text_layers}"
        )
    encoder = model.encoder
    own = encoder.embeddings.state_dict()
    theirs = bert.embeddings.state_dict()
    for key, value in theirs.items():
        if key in own and own[key].shape != value.shape:
            # Longer BERT position tables are cut to max_text_length.
            theirs[key] = value[: own[key].shape[0]]
    encoder.embeddings.load_state_dict(theirs, strict=False)
    for i in range(config.text_layers):
        encoder.text_layers[i].load_state_dict(bert.encoder.layer[i].state_dict())
    if bert.pooler is not None:
        encoder.pooler.load_state_dict(bert.pooler.state_dict())


def main(argv: list[str] | None = None) -> int:
    """``prevalent-pretrain [--data DIR --features FILE] [options]``; see ``--help``."""
    return cli.run(
        pretrain,
        PretrainConfig,
        argv,
        prog="prevalent-pretrain",
        description="Pre-train the PREVALENT encoder (attended MLM + action prediction) on teacher triplets.",
        module="prevalent.pretrain",
    )


if __name__ == "__main__":
    sys.exit(main())
