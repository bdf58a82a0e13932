"""``prevalent-finetune --task r2r|cvdn|hanna``: fine-tune the pretrained encoder as a navigation agent.

One CLI, a task registry (:data:`TASKS`). Each task turns its files into :class:`NavEpisode`
(instruction text, start, goal region, supervision path) and says how success is judged:

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
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dgm_core import cli
from dgm_core.cli import option
from dgm_core.errors import UserError
from dgm_core.runtime.distributed import (
    average_gradients,
    broadcast_parameters,
    get_dist_info,
    main_process_first,
)
from dgm_core.training import TrainingConfig, TrainingRun
from prevalent.data.hanna import HelpResponse, load_hanna
from prevalent.data.ndh import HISTORY_MODES, PATH_TYPES, load_ndh
from prevalent.data.r2r import load_r2r
from prevalent.env import IGNORE_ACTION, STOP_ACTION, BatchNavEnv, FeatureStore, NavGraphs
from prevalent.model.agent import ENCODER_TRAINING, NavigationAgent
from prevalent.model.encoder import EncoderConfig
from prevalent.model.pretrained import load_bundle, read_bundle_config
from prevalent.model.tokenizer import InstructionTokenizer

DEFAULT_PRETRAINED = "runs/prevalent-pretrain/encoder"


# ============================================================================== worlds


@dataclass
class World:
    """Where episodes live: the data folder, its navigation graphs and its feature store."""

    data_dir: Path
    graphs: NavGraphs
    features: FeatureStore
    synthetic: bool

    @property
    def feature_size(self) -> int:
        return self.features.feature_size


def open_world(data: str, features: str, synthetic_seed: int = 0) -> World:
    """Open ``--data``/``--features``, or the embedded synthetic worlds when ``data`` is empty.

    The synthetic worlds are generated once under ``runs/prevalent-synthetic/seed<N>`` (seed
    ``synthetic_seed``) and reused; a folder there made with another seed is an error, never
    overwritten.
    """
    if not data:
        from prevalent.data.synthetic import default_data_dir, make_synthetic_dataset

        folder = default_data_dir(synthetic_seed)
        with main_process_first():
            if not (folder / "dataset.json").is_file() and get_dist_info().is_main:
                make_synthetic_dataset(folder, seed=synthetic_seed)
        manifest = json.loads((folder / "dataset.json").read_text())
        if manifest.get("config", {}).get("seed") != synthetic_seed:
            raise UserError(f"{folder} holds synthetic worlds of another seed; move it away or pass --data")
        return World(folder, NavGraphs(folder / "connectivity"), FeatureStore.open(folder / "features"), True)
    data_dir = Path(data)
    if not data_dir.is_dir():
        raise UserError(f"--data folder {data_dir} does not exist")
    if not features:
        default = data_dir / "features"
        if not default.is_dir():
            raise UserError(
                f"--data {data_dir} has no features/ folder; "
                "pass --features FILE (TSV, .npy folder or .safetensors)"
            )
        features = str(default)
    return World(data_dir, NavGraphs(data_dir / "connectivity"), FeatureStore.open(features), False)


# ============================================================================== tasks


@dataclass
class NavEpisode:
    """One episode as the agent sees it, whatever the task.

    ``teacher_goal`` is what the shortest-path teacher walks to (a viewpoint, or a region of which
    the nearest counts); ``goals`` is the region success and progress are measured against.
    """

    instr_id: str
    scan: str
    start: str
    heading: float
    instruction: str
    teacher_goal: str | tuple[str, ...]
    goals: tuple[str, ...]
    path: list[str] | None
    source: object = None
    help: list[HelpResponse] = field(default_factory=list)


@dataclass(frozen=True)
class Task:
    """A fine-tuning task: how to read its episodes and how to judge them."""

    name: str
    description: str
    load: Callable[[Path, str, TaskOptions], list[NavEpisode]]
    success_radius: float
    max_steps: int
    allows_help: bool = False


@dataclass(frozen=True)
class TaskOptions:
    history: str = "all"
    path_type: str = "trusted"


def _first_existing(data_dir: Path, candidates: Sequence[str], what: str) -> Path:
    for name in candidates:
        if (data_dir / name).is_file():
            return data_dir / name
    raise UserError(f"{what} not found in {data_dir} (looked for {', '.join(candidates)})")


def _load_r2r(data_dir: Path, split: str, options: TaskOptions) -> list[NavEpisode]:
    path = _first_existing(data_dir, [f"R2R/R2R_{split}.json", f"R2R_{split}.json"], f"R2R split {split!r}")
    return [
        NavEpisode(e.instr_id, e.scan, e.start, e.heading, e.instruction, e.goal, (e.goal,), e.path, e)
        for e in load_r2r(path)
        if e.path is not None
    ]


def _load_cvdn(data_dir: Path, split: str, options: TaskOptions) -> list[NavEpisode]:
    path = _first_existing(data_dir, [f"NDH/{split}.json", f"NDH_{split}.json"], f"NDH split {split!r}")
    episodes = []
    for e in load_ndh(path, history=options.history, path_type=options.path_type):
        if e.path is None or not e.end_panos:
            continue
        episodes.append(
            NavEpisode(
                e.instr_id,
                e.scan,
                e.start,
                e.heading,
                e.instruction,
                e.path[-1],
                tuple(e.end_panos),
                e.path,
                e,
            )
        )
    return episodes


def _load_hanna(data_dir: Path, split: str, options: TaskOptions) -> list[NavEpisode]:
    path = _first_existing(data_dir, [f"HANNA/{split}.json", f"HANNA_{split}.json"], f"HANNA split {split!r}")
    return [
        NavEpisode(
            e.instr_id,
            e.scan,
            e.start,
            e.heading,
            e.instruction,
            tuple(e.goal_viewpoints),
            tuple(e.goal_viewpoints),
            e.path,
            e,
            list(e.help),
        )
        for e in load_hanna(path)
    ]


TASKS: dict[str, Task] = {
    "r2r": Task("r2r", "Room-to-Room instruction following (in-domain)", _load_r2r, 3.0, 15),
    "cvdn": Task("cvdn", "navigation from dialog history (NDH; out-of-domain)", _load_cvdn, 3.0, 20),
    "hanna": Task(
        "hanna", "find an object, asking for help (out-of-domain)", _load_hanna, 2.0, 20, allows_help=True
    ),
}


def get_task(name: str) -> Task:
    """The registered task ``name`` (a clear error listing the valid ones otherwise)."""
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[name]


def training_texts(world: World) -> list[str]:
    """All training-split language of the world's tasks: what the WordPiece vocabulary is learnt on."""
    texts: list[str] = []
    options = TaskOptions(history="all")
    for task in TASKS.values():
        try:
            episodes = task.load(world.data_dir, "train", options)
        except UserError:
            continue  # a real-data folder may hold only some of the tasks
        texts += [e.instruction for e in episodes]
        texts += [h.instruction for e in episodes for h in e.help]
    if not texts:
        raise UserError(
            f"no training instructions found in {world.data_dir} (R2R/, NDH/ or HANNA/ train splits)"
        )
    return texts


def build_tokenizer(world: World, vocab_size: int, bert: str, cache: Path | None) -> InstructionTokenizer:
    """The tokenizer of a fresh model: a local BERT's vocab (``--bert``), a cached one, or a new WordPiece."""
    if bert:
        return InstructionTokenizer.from_bert_vocab(Path(bert) / "vocab.txt")
    if cache is not None and cache.is_file():
        return InstructionTokenizer.load(cache)
    tokenizer = InstructionTokenizer.train(training_texts(world), vocab_size=vocab_size)
    if cache is not None:
        tokenizer.save(cache)
    return tokenizer


# ============================================================================== rollouts

FEEDBACK = ("teacher", "sample", "mixed")
"""Training feedback: follow the teacher's action (teacher forcing), a sampled one (student
forcing), or per episode and step either of them with equal chance (``mixed``: the agent sees its
own mistakes yet still reaches goals often enough to learn STOP). Every step is supervised by the
shortest-path teacher."""


@dataclass
class Rollout:
    """What one batched rollout produced."""

    loss: torch.Tensor
    action_loss: torch.Tensor
    help_loss: torch.Tensor
    trajectories: list[dict]
    help_used: list[int]
    teacher_accuracy: float


def nearest_help(episode: NavEpisode, graph, viewpoint: str) -> HelpResponse | None:
    """The helper's answer at ``viewpoint``: the recorded sub-instruction given nearest to it."""
    if not episode.help:
        return None
    return min(episode.help, key=lambda h: graph.distance(viewpoint, h.viewpoint))


class EpisodeRunner:
    """Runs the agent on batches of episodes in a :class:`BatchNavEnv` (training and evaluation)."""

    def __init__(
        self,
        task: Task,
        world: World,
        tokenizer: InstructionTokenizer,
        max_text_length: int,
        angle_feature_size: int,
        max_steps: int,
        help_budget: int,
        device: torch.device,
    ):
        self.task = task
        self.world = world
        self.tokenizer = tokenizer
        self.max_text_length = max_text_length
        self.max_steps = max_steps
        self.help_budget = help_budget if task.allows_help else 0
        self.device = device
        self.env = BatchNavEnv(world.graphs, world.features, angle_feature_size)
        self.truncated = 0

    def _encode(
        self, agent: NavigationAgent, texts: list[str], count_truncated: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer.encode_batch(texts, self.max_text_length)
        if count_truncated:
            self.truncated += batch.truncated
        mask = batch.text_mask.to(self.device)
        return agent.encode_instruction(batch.input_ids.to(self.device), mask), mask

    def run(
        self,
        agent: NavigationAgent,
        episodes: list[NavEpisode],
        feedback: str,
    ) -> Rollout:
        """Roll ``episodes`` out.

        ``feedback`` is one of :data:`FEEDBACK` (training) or ``argmax`` (evaluation). Episodes
        still walking after ``max_steps`` stop where they are.
        """
        env, device = self.env, self.device
        env.reset(
            [e.scan for e in episodes],
            [e.start for e in episodes],
            [e.heading for e in episodes],
            instr_ids=[e.instr_id for e in episodes],
        )
        batch = len(episodes)
        texts = [e.instruction for e in episodes]
        text_states, text_mask = self._encode(agent, texts)
        goals = [e.teacher_goal for e in episodes]
        state = agent.initial_state(batch, device)
        previous = torch.zeros(batch, env.angle_feature_size, device=device)
        help_left = [self.help_budget] * batch
        help_used = [0] * batch
        lost = [False] * batch
        action_loss = torch.zeros((), device=device)
        help_loss = torch.zeros((), device=device)
        supervised = hits = 0
        for _ in range(self.max_steps):
            if env.all_ended:
                break
            if self.help_budget:
                # Ask before moving, from the current state. Training follows the help teacher
                # ("ask once you have left the teacher's path"), evaluation the agent's help head;
                # the head is always trained toward the teacher's rule.
                ended = torch.tensor([ep.ended for ep in env.episodes], device=device)
                help_logits = agent.help_logits(state).float()
                wanted = torch.tensor(lost, dtype=torch.float32, device=device)
                if bool((~ended).any()):
                    help_loss = help_loss + F.binary_cross_entropy_with_logits(
                        help_logits[~ended], wanted[~ended], reduction="sum"
                    )
                wants = (help_logits > 0).tolist() if feedback == "argmax" else lost
                asked = [b for b in range(batch) if wants[b] and help_left[b] > 0 and not bool(ended[b])]
                for b in asked:
                    answer = nearest_help(episodes[b], env.graph(episodes[b].scan), env.episodes[b].viewpoint)
                    if answer is not None:
                        # The answer goes first so truncation can only cut the (known) request.
                        texts[b] = f"{answer.instruction} [SEP] {episodes[b].instruction}"
                    help_left[b] -= 1
                    help_used[b] += 1
                if asked:
                    text_states, text_mask = self._encode(agent, texts, count_truncated=False)
            obs = env.observe()
            teacher = torch.from_numpy(env.teacher_actions(goals)).to(device)
            step = agent(
                text_states,
                text_mask,
                torch.from_numpy(obs.panorama_features).to(device),
                torch.from_numpy(obs.candidate_features[:, 1:]).to(device),
                torch.from_numpy(obs.candidate_mask[:, 1:]).to(device),
                previous,
                state,
            )
            state = step.state
            logits = step.action_logits.float()
            active = teacher != IGNORE_ACTION
            if bool(active.any()):
                action_loss = action_loss + F.cross_entropy(
                    logits, teacher, ignore_index=IGNORE_ACTION, reduction="sum"
                )
            if feedback == "teacher":
                actions = teacher.clamp(min=STOP_ACTION)
            elif feedback in ("sample", "mixed"):
                actions = torch.multinomial(torch.softmax(logits.detach(), dim=-1), 1).squeeze(1)
                if feedback == "mixed":
                    follow = torch.rand(batch, device=device) < 0.5
                    actions = torch.where(follow, teacher.clamp(min=STOP_ACTION), actions)
            else:
                actions = logits.argmax(-1)
            supervised += int(active.sum())
            hits += int(((actions == teacher) & active).sum())
            actions = torch.where(active, actions, torch.zeros_like(actions))
            lost = [
                bool(a != t) and bool(m)
                for a, t, m in zip(actions.tolist(), teacher.tolist(), active.tolist())
            ]
            chosen = torch.from_numpy(obs.candidate_features).to(device)[
                torch.arange(batch, device=device), actions
            ]
            previous = chosen[:, -env.angle_feature_size :]
            env.step(actions.cpu().numpy())
        action_loss = action_loss / max(supervised, 1)
        help_loss = help_loss / max(supervised, 1)
        return Rollout(
            loss=action_loss + help_loss,
            action_loss=action_loss,
            help_loss=help_loss,
            trajectories=env.trajectories(),
            help_used=help_used,
            teacher_accuracy=hits / max(supervised, 1),
        )


# ============================================================================== evaluation


@torch.no_grad()
def evaluate_agent(
    agent: NavigationAgent, runner: EpisodeRunner, episodes: list[NavEpisode], batch_size: int
) -> tuple[dict[str, float], list[dict]]:
    """Greedy rollouts on ``episodes``; returns (metrics from :mod:`prevalent.evaluate`, predictions)."""
    from prevalent.evaluate import evaluate

    was_training = agent.training
    agent.eval()
    predictions: list[dict] = []
    help_used: list[int] = []
    for start in range(0, len(episodes), batch_size):
        rollout = runner.run(agent, episodes[start : start + batch_size], "argmax")
        predictions += rollout.trajectories
        help_used += rollout.help_used
    agent.train(was_training)
    report = evaluate(
        runner.task.name,
        [e.source for e in episodes],
        runner.world.graphs,
        {p["instr_id"]: p["trajectory"] for p in predictions},
    )
    metrics = dict(report.metrics)
    if runner.help_budget:
        metrics["help_requests"] = float(np.mean(help_used))
    return metrics, predictions


def random_agent_metrics(task: Task, world: World, episodes: list[NavEpisode], seed: int) -> dict[str, float]:
    """The panoramic random baseline (:func:`prevalent.evaluate.baseline_predictions`) on ``episodes``."""
    from prevalent.evaluate import baseline_predictions, evaluate

    sources = [e.source for e in episodes]
    predictions = baseline_predictions("random", sources, world.graphs, seed=seed)
    report = evaluate(task.name, sources, world.graphs, {p["instr_id"]: p["trajectory"] for p in predictions})
    return dict(report.metrics)


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
    world = open_world(cfg.data, cfg.features, cfg.synthetic_seed)
    options = TaskOptions(history=cfg.history, path_type=cfg.path_type)
    train_episodes = task.load(world.data_dir, cfg.train_split, options)
    eval_episodes = task.load(world.data_dir, cfg.eval_split, options)
    if not train_episodes or not eval_episodes:
        raise UserError(f"task {task.name}: no episodes in split {cfg.train_split!r} or {cfg.eval_split!r}")
    run_dir = Path(cfg.run_dir)
    pretrained = None if cfg.pretrained.lower() in ("", "none") else Path(cfg.pretrained)
    if pretrained is not None:
        encoder_config = read_bundle_config(pretrained)
        if encoder_config.image_feature_size != world.feature_size:
            raise UserError(
                f"pretrained encoder {pretrained} expects "
                f"{encoder_config.image_feature_size}-d image features, "
                f"the feature store has {world.feature_size}"
            )
        tokenizer = None
    else:
        if cfg.tokenizer:
            tokenizer = InstructionTokenizer.load(cfg.tokenizer)
        else:
            with main_process_first():
                tokenizer = build_tokenizer(world, cfg.vocab_size, "", run_dir / "tokenizer.json")
        encoder_config = EncoderConfig.from_options(
            cfg,
            vocab_size=tokenizer.vocab_size,
            pad_token_id=tokenizer.pad_id,
            image_feature_size=world.feature_size,
        )
    model_record = {"encoder": encoder_config.to_dict(), "task": task.name, "pretrained": str(pretrained)}
    with TrainingRun(cfg, model_config=model_record, name=f"prevalent-finetune-{task.name}") as run:
        if pretrained is not None:
            pretraining_model, tokenizer = load_bundle(pretrained, expected=encoder_config)
            agent = NavigationAgent.from_pretrained(pretraining_model)
            run.logger.info("encoder from %s", pretrained)
        else:
            agent = NavigationAgent(encoder_config)
            run.logger.info("encoder from scratch (no --pretrained)")
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
            episodes = [train_episodes[i] for i in indices]
            with run.precision.autocast():
                rollout = runner.run(agent, episodes, cfg.feedback)
            run.precision.backward(rollout.loss)
            average_gradients(agent)
            run.precision.step(optimizer, max_grad_norm=cfg.max_grad_norm)
            optimizer.zero_grad(set_to_none=True)
            if run.should_log(step):
                run.check_finite(step, {"loss": rollout.loss})
                metrics = {
                    "loss": rollout.loss,
                    "action_loss": rollout.action_loss,
                    "teacher_accuracy": rollout.teacher_accuracy,
                }
                if runner.help_budget:
                    metrics |= {
                        "help_loss": rollout.help_loss,
                        "help_requests": float(np.mean(rollout.help_used)),
                    }
                run.log(step, metrics)
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
            last_eval, predictions = evaluate_agent(agent, runner, eval_episodes, cfg.batch_size * 2)
        record = {
            "task": task.name,
            "split": cfg.eval_split,
            "pretrained": str(pretrained) if pretrained else None,
            "steps": cfg.steps,
            "metrics": last_eval,
            "random_agent": random_metrics,
            "truncated_texts": runner.truncated,
        }
        if run.dist.is_main:
            run.write_json("eval.json", record)
            run.write_json(f"predictions_{cfg.eval_split}.json", predictions)
            _render(run, task, world, eval_episodes, predictions, cfg.render_episodes)
            print(f"prevalent-finetune {task.name}: {cfg.eval_split} {_fmt(last_eval)}")
            print(f"prevalent-finetune {task.name}: random agent {_fmt(random_metrics)}")
    return record


def _render(
    run: TrainingRun, task: Task, world: World, episodes: list[NavEpisode], predictions, count: int
) -> None:
    if count <= 0:
        return
    from prevalent.render import render_episode_maps

    by_id = {p["instr_id"]: p["trajectory"] for p in predictions}
    render_episode_maps(
        [e.source for e in episodes[:count]], world.graphs, by_id, run.samples_dir / "episodes"
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
