"""``prevalent-finetune --task r2r|cvdn|hanna``: fine-tune the pretrained encoder as a navigation agent.

One CLI for the tasks of the registry (:mod:`prevalent.tasks`), each read as
:class:`~prevalent.tasks.NavEpisode` and judged by its own metrics:

- ``r2r`` — follow an instruction; success within 3 m of the goal; SR/SPL/NE/TL/nDTW.
- ``cvdn`` — navigate from the dialog history (NDH; ``--history`` as in the CVDN baselines,
  ``--path-type planner|player|trusted`` supervision); goal progress toward the target region.
- ``hanna`` — find an object; the agent may ask for help at most ``--help-budget`` times and a
  helper answers with a sub-instruction toward the nearest goal (the recorded route description
  nearest to where the agent stands); success within 2 m of any goal viewpoint; help requests used
  are reported.

With no ``--data`` the embedded synthetic worlds (``prevalent.data.synthetic``) are generated
once under ``runs/prevalent-synthetic/seed0`` (where ``prevalent-make-data`` writes them) and
used, so every task runs with no argument beyond ``--task``. The pretrained encoder is read from
``--pretrained`` (default ``runs/prevalent-pretrain/encoder``, where ``prevalent-pretrain`` writes
it); ``--pretrained none`` fine-tunes from scratch (``--tokenizer`` can hand it the pretrained
bundle's vocabulary for a like-for-like baseline).

``--predict-splits test`` also runs the final agent on splits without paths or goals (the
leaderboard's test splits) and writes ``predictions_<split>.json`` in the submission format. Run
again on a finished run (same ``--run-dir``), the command resumes at its last step, trains no
further and only evaluates and predicts.

``--grad-accum N`` rolls each optimizer step's ``N × --batch-size`` episodes out in ``N``
micro-batches of ``--batch-size``, one backward each, so memory is that of one micro-batch. A
rollout's loss is the mean over its own supervised steps, and the step averages the micro-batches'
losses; one rollout of all the episodes would average over all their steps at once, which weighs
episodes the same way only when the micro-batches supervise equally many steps.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from dgm_core import cli
from dgm_core.cli import option
from dgm_core.errors import UserError
from dgm_core.runtime.distributed import average_gradients, broadcast_parameters
from dgm_core.training import TrainingConfig, TrainingRun
from prevalent.data.ndh import HISTORY_MODES, PATH_TYPES
from prevalent.model.agent import ENCODER_TRAINING, NavigationAgent
from prevalent.model.encoder import EncoderConfig, size_options
from prevalent.model.pretrained import load_bundle, read_bundle_config
from prevalent.model.tokenizer import InstructionTokenizer, build_tokenizer
from prevalent.render import render_episode_maps
from prevalent.rollout import (
    FEEDBACK,
    EpisodeRunner,
    Rollout,
    World,
    baseline_predictions,
    data_paths,
    open_world,
)
from prevalent.tasks import TASKS, NavEpisode, Task, TaskOptions, fixed_sample, get_task, training_texts

DEFAULT_PRETRAINED = "runs/prevalent-pretrain/encoder"


# ============================================================================== evaluation


@torch.no_grad()
def predict(
    agent: NavigationAgent, runner: EpisodeRunner, episodes: list[NavEpisode], batch_size: int
) -> tuple[list[dict], list[int]]:
    """Greedy rollouts on ``episodes`` (with or without goals); returns (trajectories, help used)."""
    was_training = agent.training
    agent.eval()
    predictions: list[dict] = []
    help_used: list[int] = []
    for start in range(0, len(episodes), batch_size):
        rollout = runner.run(agent, episodes[start : start + batch_size], "argmax")
        predictions += rollout.trajectories
        help_used += rollout.help_used
    agent.train(was_training)
    return predictions, help_used


def evaluate_agent(
    agent: NavigationAgent, runner: EpisodeRunner, episodes: list[NavEpisode], batch_size: int
) -> tuple[dict[str, float], list[dict]]:
    """Greedy rollouts on ``episodes``; returns (the task's metrics, the predictions)."""
    predictions, help_used = predict(agent, runner, episodes, batch_size)
    report = runner.task.evaluate([e.source for e in episodes], runner.world.graphs, _by_id(predictions))
    metrics = dict(report.metrics)
    if runner.help_budget:
        metrics["help_requests"] = float(np.mean(help_used))
    return metrics, predictions


def random_agent_metrics(task: Task, world: World, episodes: list[NavEpisode], seed: int) -> dict[str, float]:
    """The panoramic random baseline (:func:`prevalent.rollout.baseline_predictions`) on ``episodes``."""
    sources = [e.source for e in episodes]
    predictions = baseline_predictions("random", sources, world.graphs, seed=seed)
    return dict(task.evaluate(sources, world.graphs, _by_id(predictions)).metrics)


def _by_id(predictions: list[dict]) -> dict[str, list]:
    return {p["instr_id"]: p["trajectory"] for p in predictions}


# ============================================================================== the CLI


@dataclass
class FinetuneConfig(TrainingConfig):
    task: str = option("r2r", help=f"Task: {', '.join(TASKS)}.")
    run_dir: str = option("", help="Run directory (default runs/prevalent-finetune-<task>).")
    steps: int = option(200, help="Optimizer steps (one batch of episodes each).")
    log_every: int = option(25, help="Log training metrics every N steps.")
    checkpoint_every: int = option(100, help="Checkpoint every N steps (0: only at the end).")
    data: str = option(
        "", help="Data folder (connectivity/, R2R/, NDH/, HANNA/); empty: the embedded synthetic worlds."
    )
    features: str = option(
        "", help="Feature store (TSV, .npy folder or .safetensors); default <data>/features."
    )
    synthetic_seed: int = option(0, help="Seed of the embedded synthetic worlds.")
    pretrained: str = option(
        DEFAULT_PRETRAINED,
        help="Pretrained encoder bundle (prevalent-pretrain / prevalent-convert output), or 'none'.",
    )
    train_encoder: str = option(
        "all", help="Which encoder parts train: none, cross or all.", choices=ENCODER_TRAINING
    )
    feedback: str = option(
        "mixed",
        help="teacher (teacher forcing), sample (student forcing) or mixed (either, 50/50).",
        choices=FEEDBACK,
    )
    train_split: str = option("train", help="Training split.")
    eval_split: str = option("val_unseen", help="Evaluation split (unseen houses).")
    eval_episodes: int = option(
        0,
        help="Score a fixed random sample of this many --eval-split episodes (0: all of them); the "
        "sample depends on the split alone, so every run and seed is scored on the same episodes.",
    )
    predict_splits: list[str] = option(
        default_factory=list,
        help="Splits to run the final agent on and write predictions_<split>.json for (submission "
        "format), goals or not: e.g. the leaderboard's test split.",
    )
    history: str = option("all", help="CVDN dialog history mode.", choices=HISTORY_MODES)
    path_type: str = option("trusted", help="CVDN supervision path.", choices=PATH_TYPES)
    help_budget: int = option(2, help="HANNA: how many times the agent may ask for help per episode.")
    max_steps: int = option(0, help="Steps per episode before a forced stop (0: the task's default).")
    batch_size: int = option(16, help="Episodes per step per rank.")
    lr: float = option(5e-4, help="Learning rate of the new parts (state, heads).")
    encoder_lr: float = option(2e-4, help="Learning rate of the trainable encoder parts.")
    weight_decay: float = option(0.01, help="AdamW weight decay.")
    max_grad_norm: float = option(2.0, help="Gradient clipping (0: off).")
    eval_every: int = option(100, help="Evaluate on --eval-split every N steps (and at the end).")
    render_episodes: int = option(4, help="Maps (SVG/PNG) of this many evaluation episodes in samples/.")
    tokenizer: str = option(
        "",
        help="Scratch only: tokenizer.json to use (e.g. a pretrained bundle's, for a like-for-like "
        "baseline).",
    )
    # Sizes used only without a pretrained bundle (defaults = prevalent-pretrain's, for a fair comparison).
    vocab_size: int = option(1000, help="Scratch only: WordPiece vocabulary size.")
    hidden_size: int = option(64, help="Scratch only: hidden size.")
    num_attention_heads: int = option(4, help="Scratch only: attention heads.")
    intermediate_size: int = option(128, help="Scratch only: feed-forward width.")
    text_layers: int = option(2, help="Scratch only: language layers.")
    cross_layers: int = option(2, help="Scratch only: cross-modal layers.")
    angle_feature_size: int = option(128, help="Scratch only: orientation feature width.")
    max_text_length: int = option(
        80, help="Scratch only: tokens per text (longer texts are truncated and counted)."
    )
    dropout: float = option(0.1, help="Scratch only: dropout.")


def finetune(cfg: FinetuneConfig) -> dict:
    """The body of ``prevalent-finetune``; returns the final evaluation record (also in eval.json)."""
    task = get_task(cfg.task)
    if not cfg.run_dir:
        cfg.run_dir = f"runs/prevalent-finetune-{task.name}"
    if cfg.help_budget < 0:
        raise UserError(f"--help-budget must be ≥ 0, got {cfg.help_budget}")
    if cfg.eval_episodes < 0:
        raise UserError(f"--eval-episodes must be ≥ 0 (0: all), got {cfg.eval_episodes}")
    data_paths(cfg.data, cfg.features)  # wrong paths are refused before the run opens
    pretrained = None if cfg.pretrained.lower() in ("", "none") else Path(cfg.pretrained)
    # Reading a bundle's config writes nothing: a missing bundle is refused before the run opens too.
    bundle_config = read_bundle_config(pretrained) if pretrained is not None else None
    model_record = _model_record(cfg, task, pretrained, bundle_config)
    with TrainingRun(cfg, model_config=model_record, name=f"prevalent-finetune-{task.name}") as run:
        with run.main_process_first():
            # One-time preparation: rank 0 generates missing synthetic worlds and learns the
            # vocabulary; the other ranks then find those files and reuse them.
            world = open_world(cfg.data, cfg.features, cfg.synthetic_seed)
            tokenizer = _scratch_tokenizer(cfg, world, run.run_dir) if pretrained is None else None
        options = TaskOptions(history=cfg.history, path_type=cfg.path_type)
        train_episodes = task.load(world.data_dir, cfg.train_split, options)
        eval_episodes = task.load(world.data_dir, cfg.eval_split, options)
        if cfg.eval_episodes:
            eval_episodes = fixed_sample(eval_episodes, cfg.eval_episodes, seed=0)
        if not train_episodes or not eval_episodes:
            raise UserError(
                f"task {task.name}: no episodes with a goal in split {cfg.train_split!r} or "
                f"{cfg.eval_split!r} (a test split is predicted with --predict-splits, not trained "
                "or scored)"
            )
        predict_episodes = {
            split: task.load(world.data_dir, split, options, unsupervised=True) for split in _splits(cfg)
        }
        # Every viewpoint an agent may reach must have features: refused now, not mid-run.
        splits = ", ".join(dict.fromkeys([cfg.train_split, cfg.eval_split, *predict_episodes]))
        every_episode = [*train_episodes, *eval_episodes, *chain.from_iterable(predict_episodes.values())]
        world.require_features(every_episode, f"the {task.name} splits {splits}")
        if bundle_config is not None:
            if bundle_config.image_feature_size != world.feature_size:
                raise UserError(
                    f"pretrained encoder {pretrained} expects "
                    f"{bundle_config.image_feature_size}-d image features, "
                    f"the feature store has {world.feature_size}"
                )
            pretraining_model, tokenizer = load_bundle(pretrained, expected=bundle_config)
            agent = NavigationAgent.from_pretrained(pretraining_model)
            run.logger.info("encoder from %s", pretrained)
        else:
            agent = NavigationAgent(
                EncoderConfig.from_options(
                    cfg,
                    vocab_size=tokenizer.vocab_size,
                    pad_token_id=tokenizer.pad_id,
                    image_feature_size=world.feature_size,
                )
            )
            run.logger.info("encoder from scratch (no --pretrained)")
        encoder_config = agent.config
        agent.to(run.device)
        trainable = agent.set_encoder_training(cfg.train_encoder)
        encoder_params = {id(p) for p in agent.encoder.parameters()}
        groups = [
            {"params": [p for p in trainable if id(p) not in encoder_params], "lr": cfg.lr},
            {"params": [p for p in trainable if id(p) in encoder_params], "lr": cfg.encoder_lr},
        ]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)
        run.track(models={"agent": agent}, optimizers={"agent": optimizer})
        start = run.resume()
        # A rollout calls the agent once per navigation step, which DDP's one-forward-per-backward
        # contract does not allow; instead ranks start from rank 0's weights and average gradients.
        broadcast_parameters(agent)
        max_steps = cfg.max_steps or task.max_steps
        runner = EpisodeRunner(
            task,
            world,
            tokenizer,
            encoder_config.max_text_length,
            encoder_config.angle_feature_size,
            max_steps,
            cfg.help_budget,
            run.device,
        )
        random_metrics = random_agent_metrics(task, world, eval_episodes, cfg.seed)
        run.logger.info("random agent on %s: %s", cfg.eval_split, _fmt(random_metrics))
        sampler = run.sampler(len(train_episodes), cfg.batch_size, start_step=start)
        agent.train()
        last_eval: dict[str, float] = {}
        predictions: list[dict] = []
        for step, indices in zip(run.steps(start), sampler):
            # --grad-accum: one rollout and backward per micro-batch of --batch-size episodes; the
            # agent is not DDP-wrapped (see above), so gradients are averaged over ranks once, below.
            logging = run.should_log(step)
            logged: list[dict[str, float]] = []
            for chunk, sync in run.micro_batches(agent, list(indices)):
                episodes = [train_episodes[i] for i in chunk]
                with sync, run.precision.autocast():
                    rollout = runner.run(agent, episodes, cfg.feedback)
                if logging:
                    run.check_finite(step, {"loss": rollout.loss})
                    logged.append(_rollout_metrics(rollout, runner.help_budget))
                run.precision.backward(rollout.loss / cfg.grad_accum)
            average_gradients(agent)
            run.precision.step(optimizer, max_grad_norm=cfg.max_grad_norm)
            optimizer.zero_grad(set_to_none=True)
            if logging:  # the step's mean over its micro-batches
                run.log(step, {name: float(np.mean([m[name] for m in logged])) for name in logged[0]})
            if step % max(cfg.eval_every, 1) == 0 or step == cfg.steps:
                with run.precision.autocast():
                    last_eval, predictions = evaluate_agent(agent, runner, eval_episodes, cfg.batch_size * 2)
                run.log(step, {f"eval_{k}": v for k, v in last_eval.items()}, reduce=False)
                run.logger.info("step %d %s: %s", step, cfg.eval_split, _fmt(last_eval))
        if runner.truncated:
            run.logger.warning(
                "%d texts were longer than %d tokens and were truncated",
                runner.truncated,
                encoder_config.max_text_length,
            )
        if not last_eval:  # resumed at the final step: evaluate once more
            with run.precision.autocast():
                last_eval, predictions = evaluate_agent(agent, runner, eval_episodes, cfg.batch_size * 2)
        predicted: dict[str, list[dict]] = {}
        for split, episodes in predict_episodes.items():
            with run.precision.autocast():
                predicted[split], _ = predict(agent, runner, episodes, cfg.batch_size * 2)
        record = {
            "task": task.name,
            "split": cfg.eval_split,
            "pretrained": str(pretrained) if pretrained else None,
            "steps": cfg.steps,
            "episodes": len(eval_episodes),
            "houses": len({e.scan for e in eval_episodes}),
            "metrics": last_eval,
            "random_agent": random_metrics,
            "truncated_texts": runner.truncated,
        }
        if run.dist.is_main:
            run.write_json("eval.json", record)
            run.write_json(f"predictions_{cfg.eval_split}.json", task.submission(predictions))
            _render(run, world, eval_episodes, predictions, cfg.render_episodes)
            print(f"prevalent-finetune {task.name}: {cfg.eval_split} {_fmt(last_eval)}")
            print(f"prevalent-finetune {task.name}: random agent {_fmt(random_metrics)}")
            for split, trajectories in predicted.items():
                path = run.write_json(f"predictions_{split}.json", task.submission(trajectories))
                print(f"prevalent-finetune {task.name}: {len(trajectories)} {split} predictions in {path}")
    return record


def _splits(cfg: FinetuneConfig) -> list[str]:
    """``--predict-splits`` as a list (space- or comma-separated, each split once)."""
    return list(dict.fromkeys(s for item in cfg.predict_splits for s in item.split(",") if s))


def _rollout_metrics(rollout: Rollout, help_budget: int) -> dict[str, float]:
    metrics = {
        "loss": float(rollout.loss.detach()),
        "action_loss": float(rollout.action_loss.detach()),
        "teacher_accuracy": rollout.teacher_accuracy,
    }
    if help_budget:
        metrics["help_loss"] = float(rollout.help_loss.detach())
        metrics["help_requests"] = float(np.mean(rollout.help_used))
    return metrics


def _model_record(
    cfg: FinetuneConfig, task: Task, pretrained: Path | None, bundle_config: EncoderConfig | None
) -> dict:
    """What a checkpoint of this run must match to be resumed.

    A pretrained encoder is fixed by its bundle's config. A fresh one is fixed by the size options
    and where its vocabulary comes from; its vocabulary size and image-feature width follow from
    files prepared inside the run (``tokenizer.json``, kept in the run, and the feature store).
    """
    if bundle_config is not None:
        return {"encoder": bundle_config.to_dict(), "task": task.name, "pretrained": str(pretrained)}
    return {
        "encoder": size_options(cfg),
        "vocabulary": cfg.tokenizer or f"WordPiece of at most {cfg.vocab_size} tokens",
        "task": task.name,
        "pretrained": str(pretrained),
    }


def _scratch_tokenizer(cfg: FinetuneConfig, world: World, run_dir: Path) -> InstructionTokenizer:
    """``--tokenizer``'s vocabulary, or the run's own WordPiece one (learnt once, kept in the run)."""
    if cfg.tokenizer:
        return InstructionTokenizer.load(cfg.tokenizer)
    return build_tokenizer(
        lambda: training_texts(world.data_dir), cfg.vocab_size, cache=run_dir / "tokenizer.json"
    )


def _render(
    run: TrainingRun, world: World, episodes: list[NavEpisode], predictions: list[dict], count: int
) -> None:
    if count <= 0:
        return
    render_episode_maps(
        [e.source for e in episodes[:count]], world.graphs, _by_id(predictions), run.samples_dir / "episodes"
    )


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())


def _run(cfg: FinetuneConfig) -> int:
    finetune(cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``prevalent-finetune --task r2r|cvdn|hanna [options]``; see ``--help``."""
    return cli.run(
        _run,
        FinetuneConfig,
        argv,
        prog="prevalent-finetune",
        description="Fine-tune the pretrained PREVALENT encoder as an agent for r2r, cvdn or hanna.",
        module="prevalent.finetune",
    )


if __name__ == "__main__":
    sys.exit(main())
