"""``python -m prevalent.claim``: the paper's claim in miniature.

PREVALENT's claim is that pre-training the encoder on image-text-action triplets helps agents,
most on the out-of-domain tasks. In miniature: on the synthetic worlds' unseen houses, with an
equal fine-tuning budget and several seeds, fine-tune once from the pretrained encoder and once
from scratch (same sizes, same tokenizer) for each of r2r, cvdn and hanna, and report SR/SPL
(r2r, hanna) and goal progress (cvdn) as the mean and 95 % interval over seeds with the paired
difference (same seed, same episodes), beside the random agent. The table is
written to ``<run_dir>/claim.md`` (and ``claim.json``) whatever it shows.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from dgm_core import cli
from dgm_core.claims import mean_interval, paired_difference, results_table
from dgm_core.cli import option
from dgm_core.errors import UserError
from prevalent.finetune import DEFAULT_PRETRAINED, FinetuneConfig, finetune
from prevalent.pretrain import PretrainConfig, pretrain
from prevalent.tasks import TASKS

METRICS = {"r2r": ("SR", "SPL"), "cvdn": ("goal_progress", "SR"), "hanna": ("SR", "SPL", "help_requests")}


@dataclass
class ClaimConfig:
    run_dir: str = option("runs/prevalent-claim", help="Where the fine-tuning runs and the table go.")
    pretrained: str = option(
        DEFAULT_PRETRAINED, help="Pretrained bundle (made with prevalent-pretrain if missing)."
    )
    tasks: str = option("r2r,cvdn,hanna", help="Comma-separated tasks.")
    seeds: str = option(
        "0,1,2,3,4", help="Comma-separated fine-tuning seeds (at least 2 for an interval; 5 by default)."
    )
    steps: int = option(150, help="Fine-tuning steps of every run (the equal budget).")
    batch_size: int = option(16, help="Episodes per fine-tuning step.")
    device: str = option("auto", help="Device for every run.")
    table_only: bool = option(False, help="Only rebuild the table from the runs already in --run-dir.")


def _interval(values: list[float]) -> str:
    return mean_interval(values).format()


def claim(cfg: ClaimConfig) -> int:
    tasks = [t for t in cfg.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UserError(f"unknown task(s) {', '.join(unknown)}; valid tasks: {', '.join(TASKS)}")
    seeds = [int(s) for s in cfg.seeds.split(",") if s]
    bundle = Path(cfg.pretrained)
    if not cfg.table_only and not (bundle / "config.json").is_file():
        print(f"prevalent-claim: no pretrained encoder at {bundle}; running prevalent-pretrain first")
        pretrain(PretrainConfig(run_dir=str(bundle.parent), device=cfg.device, progress=False))
    root = Path(cfg.run_dir)
    if not cfg.table_only:
        for task in tasks:
            for init in ("pretrained", "scratch"):
                for seed in seeds:
                    finetune(
                        FinetuneConfig(
                            task=task,
                            run_dir=str(_run_dir(root, task, init, seed)),
                            steps=cfg.steps,
                            seed=seed,
                            batch_size=cfg.batch_size,
                            device=cfg.device,
                            progress=False,
                            render_episodes=0,
                            eval_every=cfg.steps,
                            pretrained=str(bundle) if init == "pretrained" else "none",
                            tokenizer="" if init == "pretrained" else str(bundle / "tokenizer.json"),
                        )
                    )
    table, results = claim_table(root, tasks, seeds, cfg)
    root.mkdir(parents=True, exist_ok=True)
    (root / "claim.md").write_text(table)
    (root / "claim.json").write_text(
        json.dumps({"config": dataclasses.asdict(cfg), "results": results}, indent=1)
    )
    print(table)
    return 0


def _run_dir(root: Path, task: str, init: str, seed: int) -> Path:
    return root / f"{task}-{init}-seed{seed}"


def claim_table(root: Path, tasks: list[str], seeds: list[int], cfg: ClaimConfig) -> tuple[str, dict]:
    """The Markdown table (and the raw numbers) from the runs' ``eval.json`` files."""
    results: dict = {}
    for task in tasks:
        for init in ("pretrained", "scratch"):
            for seed in seeds:
                eval_file = _run_dir(root, task, init, seed) / "eval.json"
                if not eval_file.is_file():
                    raise UserError(f"{eval_file} is missing; run the claim without --table-only first")
                record = json.loads(eval_file.read_text())
                results.setdefault(task, {}).setdefault(init, []).append(record["metrics"])
                if init == "pretrained":  # the random agent depends on the seed only
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
                    _interval(random_values) if random_values else "—",
                    _interval(scratch),
                    _interval(pretrained),
                    # Same seed, same episodes: the difference pair by pair.
                    paired_difference(pretrained, scratch).format(),
                ]
            )
    header = (
        f"Unseen houses (val_unseen), {cfg.steps} fine-tuning steps x {cfg.batch_size} episodes for every "
        f"run, seeds {','.join(map(str, seeds))}; mean [95 % interval] over seeds, and the paired "
        "difference pretrained − scratch with its paired t-test and wins/losses/ties over seeds."
    )
    columns = ["task", "metric", "random agent", "from scratch", "from pretrained", "pretrained − scratch"]
    return header + "\n\n" + results_table(rows, columns) + "\n", results


def main(argv: list[str] | None = None) -> int:
    """``python -m prevalent.claim [--steps N --seeds 0,1 --tasks r2r,cvdn,hanna]``."""
    return cli.run(
        claim,
        ClaimConfig,
        argv,
        prog="prevalent-claim",
        description="Pretrained vs from-scratch fine-tuning on unseen houses, for r2r, cvdn and hanna.",
    )


if __name__ == "__main__":
    sys.exit(main())
