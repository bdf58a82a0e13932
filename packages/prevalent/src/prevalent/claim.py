"""``prevalent-claim``: the paper's claim in miniature.

PREVALENT's claim is that pre-training the encoder on image-text-action triplets helps agents,
most on the out-of-domain tasks. In miniature, for each of r2r, cvdn and hanna and each seed, one
agent is fine-tuned from the pretrained encoder and one from scratch (same sizes, same tokenizer),
and both are scored on unseen houses:

* equal supervision — both arms fine-tune on exactly the same episodes, in the same order, for the
  same steps (the episode order depends on the seed alone); the pretraining triplets come from the
  training houses only;
* evaluation on a fixed random sample of ``--eval-episodes`` episodes per task from
  ``--unseen-houses`` houses that neither pretraining nor fine-tuning ever saw: the claim world, the
  default synthetic world with more unseen houses and more episodes in them (its training houses,
  episodes and features are the default world's, so a bundle pretrained on the default world
  applies; by default the claim pretrains its own for ``--pretrain-steps`` steps);
* out of domain means other language: cvdn answers and hanna help are written in a template
  family (``language.DIALOG``) that neither r2r instructions nor the pretraining text use.

Reported: SR/SPL (r2r, hanna; nDTW for r2r) and goal progress (cvdn) as the mean and 95 % interval
over seeds, the paired difference (same seed, same episodes) and the random agent. Runs live in
``<run_dir>/<task>-<arm>-seed<N>-<digest of their options>``: finished runs are reused, any changed
option trains anew; ``--jobs`` fine-tunes several runs at once, one process and one torch thread each. The
table goes to ``<run_dir>/claim.md`` (and ``claim.json``), whatever it shows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from dgm_core import cli
from dgm_core.claims import (
    mean_interval,
    options_digest,
    paired_difference,
    parallel_jobs,
    results_table,
    run_parallel,
)
from dgm_core.cli import option
from dgm_core.errors import UserError
from prevalent.data.synthetic import DEFAULT_DATA_ROOT, SyntheticConfig
from prevalent.finetune import FinetuneConfig, finetune
from prevalent.pretrain import PretrainConfig, pretrain
from prevalent.rollout import synthetic_world
from prevalent.tasks import TASKS

PROG = "prevalent-claim"
METRICS = {
    "r2r": ("SR", "SPL", "nDTW"),
    "cvdn": ("goal_progress", "SR"),
    "hanna": ("SR", "SPL", "help_requests"),
}
ARMS = ("pretrained", "scratch")


@dataclass
class ClaimConfig:
    run_dir: str = option("runs/prevalent-claim", help="Where the fine-tuning runs and the table go.")
    pretrained: str = option(
        "",
        help="Pretrained bundle to use; empty: the claim's own, <run-dir>/pretrain-<N>steps/encoder, "
        "made with prevalent-pretrain --steps N (--pretrain-steps) if missing.",
    )
    pretrain_steps: int = option(
        3000, help="Pretraining steps of the claim's own bundle (batch 32: 2.7 passes over the triplets)."
    )
    tasks: str = option("r2r,cvdn,hanna", help="Comma-separated tasks.")
    seeds: str = option(
        "0,1,2,3,4", help="Comma-separated fine-tuning seeds (at least 2 for an interval; 5 by default)."
    )
    steps: int = option(150, help="Fine-tuning steps of every run (the equal budget).")
    batch_size: int = option(16, help="Episodes per fine-tuning step.")
    unseen_houses: int = option(10, help="Unseen houses of the claim world (evaluation only).")
    val_paths_per_house: int = option(
        120, help="R2R paths per unseen house of the claim world (cvdn and hanna scale with it)."
    )
    eval_episodes: int = option(
        500, help="Episodes per task scored: a fixed random sample of the unseen houses."
    )
    synthetic_seed: int = option(0, help="Seed of the synthetic worlds (the pretrained bundle's).")
    device: str = option("auto", help="Device for every run.")
    jobs: int = option(
        0,
        help="Fine-tuning runs at once, each in its own process on one torch thread "
        "(0: one per CPU core on the CPU, 1 on a GPU; 1: one after another in this process).",
    )
    table_only: bool = option(False, help="Only rebuild the table from the runs already in --run-dir.")


def claim_world(cfg: ClaimConfig) -> Path:
    """The claim world's folder (generated when missing): the default synthetic world's training
    houses, episodes and features, and ``unseen_houses`` unseen houses with more episodes each."""
    defaults = SyntheticConfig()
    training_houses = defaults.houses - defaults.unseen_houses
    folder = _world_folder(cfg)
    synthetic_world(
        folder,
        cfg.synthetic_seed,
        houses=training_houses + cfg.unseen_houses,
        unseen_houses=cfg.unseen_houses,
        val_paths_per_house=cfg.val_paths_per_house,
    )
    return folder


def bundle_of(cfg: ClaimConfig) -> Path:
    """The pretrained bundle the claim uses: ``--pretrained``, or its own keyed by its steps."""
    if cfg.pretrained:
        return Path(cfg.pretrained)
    return Path(cfg.run_dir) / f"pretrain-{cfg.pretrain_steps}steps" / "encoder"


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "absent"


def finetune_config(cfg: ClaimConfig, task: str, arm: str, seed: int, world: Path) -> FinetuneConfig:
    """One run's options: the two arms differ in where the encoder (and tokenizer) come from only."""
    bundle = bundle_of(cfg)
    return FinetuneConfig(
        task=task,
        steps=cfg.steps,
        seed=seed,
        batch_size=cfg.batch_size,
        device=cfg.device,
        progress=False,
        render_episodes=0,
        eval_every=cfg.steps,
        eval_episodes=cfg.eval_episodes,
        data=str(world),
        pretrained=str(bundle) if arm == "pretrained" else "none",
        tokenizer="" if arm == "pretrained" else str(bundle / "tokenizer.json"),
    )


def run_dir_of(cfg: ClaimConfig, task: str, arm: str, seed: int, world: Path) -> Path:
    """``<run_dir>/<task>-<arm>-seed<N>-<digest>``: the digest covers every fine-tuning option."""
    options = cli.config_to_dict(finetune_config(cfg, task, arm, seed, world))
    options.pop("run_dir")
    options.pop("progress")
    # A path names a bundle, its bytes are what a run learns from: a bundle pretrained anew at the
    # same path must not reuse runs of the old one. The scratch arm reads the tokenizer only.
    bundle = bundle_of(cfg)
    used = (
        ("config.json", "model.safetensors", "tokenizer.json") if arm == "pretrained" else ("tokenizer.json",)
    )
    options["bundle_content"] = {name: _file_digest(bundle / name) for name in used}
    return Path(cfg.run_dir) / f"{task}-{arm}-seed{seed}-{options_digest(options, length=10)}"


def claim(cfg: ClaimConfig) -> int:
    tasks = [t for t in cfg.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UserError(f"unknown task(s) {', '.join(unknown)}; valid tasks: {', '.join(TASKS)}")
    seeds = [int(s) for s in cfg.seeds.split(",") if s]
    if len(seeds) < 2:
        raise UserError("prevalent-claim needs at least 2 seeds for an interval")
    bundle = bundle_of(cfg)
    world = claim_world(cfg) if not cfg.table_only else _world_folder(cfg)
    if not cfg.table_only:
        if not (bundle / "config.json").is_file():
            if cfg.pretrained:
                raise UserError(f"--pretrained {bundle}: no bundle there (no config.json)")
            print(f"{PROG}: no pretrained encoder at {bundle}; running prevalent-pretrain first")
            pretrain(
                PretrainConfig(
                    run_dir=str(bundle.parent),
                    steps=cfg.pretrain_steps,
                    synthetic_seed=cfg.synthetic_seed,
                    device=cfg.device,
                    progress=False,
                )
            )
        pending = [
            dataclasses.replace(finetune_config(cfg, task, arm, seed, world), run_dir=str(run_dir))
            for task in tasks
            for arm in ARMS
            for seed in seeds
            if not ((run_dir := run_dir_of(cfg, task, arm, seed, world)) / "eval.json").is_file()
        ]
        run_parallel(
            finetune,
            [(run,) for run in pending],
            parallel_jobs(cfg.jobs, len(pending), cfg.device),
            describe=lambda args: f"fine-tuning {args[0].run_dir}",
        )
    table, results = claim_table(cfg, tasks, seeds, world)
    root = Path(cfg.run_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / "claim.md").write_text(table)
    (root / "claim.json").write_text(
        json.dumps(
            {"command": cli.command_line(PROG, cfg), "config": dataclasses.asdict(cfg), "results": results},
            indent=1,
        )
    )
    print(table)
    return 0


def _world_folder(cfg: ClaimConfig) -> Path:
    return DEFAULT_DATA_ROOT / (
        f"seed{cfg.synthetic_seed}-claim-unseen{cfg.unseen_houses}-paths{cfg.val_paths_per_house}"
    )


def claim_table(cfg: ClaimConfig, tasks: list[str], seeds: list[int], world: Path) -> tuple[str, dict]:
    """The Markdown table (and the raw numbers) from the runs' ``eval.json`` files."""
    results: dict = {}
    episodes: dict[str, tuple] = {}  # task -> (episodes scored, houses)
    for task in tasks:
        for arm in ARMS:
            for seed in seeds:
                eval_file = run_dir_of(cfg, task, arm, seed, world) / "eval.json"
                if not eval_file.is_file():
                    raise UserError(f"{eval_file} is missing; run the claim without --table-only first")
                record = json.loads(eval_file.read_text())
                results.setdefault(task, {}).setdefault(arm, []).append(record["metrics"])
                episodes[task] = (record.get("episodes", "?"), record.get("houses", "?"))
                if arm == "pretrained":  # the random agent depends on the seed only
                    results[task].setdefault("random", []).append(record["random_agent"])
    rows = []
    for task in tasks:
        for metric in METRICS[task]:
            random_values = [r[metric] for r in results[task]["random"] if metric in r]
            scratch = [m[metric] for m in results[task]["scratch"]]
            pretrained = [m[metric] for m in results[task]["pretrained"]]
            rows.append(
                [
                    task,
                    metric,
                    mean_interval(random_values).format() if random_values else "—",
                    mean_interval(scratch).format(),
                    mean_interval(pretrained).format(),
                    # Same seed, same episodes: the difference pair by pair.
                    paired_difference(pretrained, scratch).format(),
                ]
            )
    scored = ", ".join(f"{task} {n} in {h} houses" for task, (n, h) in episodes.items())
    header = (
        f"`{cli.command_line(PROG, cfg)}`\n\n"
        f"{cfg.unseen_houses} unseen houses (in neither pretraining nor fine-tuning), episodes scored per "
        f"task: {scored}; {cfg.steps} fine-tuning steps x {cfg.batch_size} episodes for every run, the "
        f"same episodes for both arms; seeds {','.join(map(str, seeds))}. Mean [95 % interval] over seeds, "
        "and the paired difference pretrained − scratch with its paired t-test and wins/losses/ties."
    )
    columns = ["task", "metric", "random agent", "from scratch", "from pretrained", "pretrained − scratch"]
    return header + "\n\n" + results_table(rows, columns) + "\n", results


def main(argv: list[str] | None = None) -> int:
    """``prevalent-claim [--steps N --seeds 0,1 --tasks r2r,cvdn,hanna]``."""
    return cli.run(
        claim,
        ClaimConfig,
        argv,
        prog=PROG,
        description="Pretrained vs from-scratch fine-tuning on unseen houses, for r2r, cvdn and hanna.",
    )


if __name__ == "__main__":
    sys.exit(main())
