"""``fqgan-ablate``: the paper's claim in miniature — FQ vs no FQ at equal budget, over several seeds.

For each task (procedural ``shapes`` with the small conditional DCGAN/SNGAN;
the 25-Gaussian ``grid25`` with MLPs), each variant (``none``: baseline;
``loss_only``: FQ as the reference code; ``quantize``: FQ fed forward) and each
seed, it trains with exactly the same options except ``--fq-mode``, evaluates
the final EMA generator with :mod:`fqgan.evaluate`, and writes
``<out_dir>/results.json`` and a markdown table (``results.md``) of mean ± std.
Finished runs are reused (trained ones are only evaluated; evaluated ones are
read back), so an interrupted ablation continues where it stopped, and
``--generator raw`` evaluates the same runs' raw generators (``eval_raw.json``).
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dgm_core import cli
from dgm_core.cli import option
from dgm_core.errors import UserError
from fqgan.evaluate import EvalConfig, evaluate
from fqgan.train import PRESETS, TrainConfig, train

TASK_OPTIONS: dict[str, dict[str, Any]] = {
    "shapes": {},  # the demo settings
    "grid25": {k: v for k, v in PRESETS["grid25"].items() if k != "run_dir"},
    "ring8": {k: v for k, v in PRESETS["ring8"].items() if k != "run_dir"},
}
METRICS = {
    "shapes": ("factor_fd", "mode_coverage", "combination_kl", "label_accuracy"),
    "grid25": ("modes_covered", "high_quality", "mode_kl"),
    "ring8": ("modes_covered", "high_quality", "mode_kl"),
}


@dataclass
class AblateConfig:
    """Options of ``fqgan-ablate``."""

    out_dir: str = option("runs/fqgan-ablate", help="Folder for every run and the result tables.")
    tasks: str = option("shapes,grid25", help="Comma-separated tasks: shapes, grid25, ring8.")
    variants: str = option("none,loss_only,quantize", help="Comma-separated --fq-mode values to compare.")
    seeds: int = option(3, help="Seeds per (task, variant): 0 .. N-1.")
    shapes_steps: int = option(300, help="Training steps of each shapes run (equal for every variant).")
    mixture_steps: int = option(5000, help="Training steps of each grid25/ring8 run.")
    device: str = option("cpu", help="Device for every run.")
    classifier_cache: str = option("", help="Factor-classifier cache folder (default ~/.cache/fqgan).")
    num_samples: int = option(0, help="Samples per evaluation (0: the fqgan-eval default).")
    generator: str = option("ema", help="Evaluate the EMA generator or the raw one.", choices=("ema", "raw"))


def _split(spec: str) -> list[str]:
    return [s.strip() for s in spec.split(",") if s.strip()]


def run_one(cfg: AblateConfig, task: str, variant: str, seed: int) -> dict[str, Any]:
    run_dir = Path(cfg.out_dir) / f"{task}-{variant}-seed{seed}"
    eval_path = run_dir / ("eval.json" if cfg.generator == "ema" else "eval_raw.json")
    if eval_path.is_file():
        return json.loads(eval_path.read_text())
    steps = cfg.shapes_steps if task == "shapes" else cfg.mixture_steps
    options = {
        **TASK_OPTIONS[task],
        "data": task,
        "fq_mode": variant,
        "seed": seed,
        "run_dir": str(run_dir),
        "steps": steps,
        "device": cfg.device,
        "progress": False,
        "checkpoint_every": 0,
        "keep_checkpoints": 1,
    }
    finished = run_dir / "checkpoints" / f"step_{steps:06d}"
    train_seconds = None
    if not finished.is_dir():  # trained already (e.g. evaluated before with the other generator)
        started = time.perf_counter()
        train(cli.config_from_dict(TrainConfig, options, source=f"ablation run {run_dir.name}"))
        train_seconds = time.perf_counter() - started
    elif (run_dir / "eval.json").is_file():
        train_seconds = json.loads((run_dir / "eval.json").read_text()).get("train_seconds")
    result = evaluate(
        EvalConfig(
            checkpoint=str(run_dir),
            device=cfg.device,
            seed=seed,
            classifier_cache=cfg.classifier_cache,
            num_samples=cfg.num_samples,
            use_ema=cfg.generator == "ema",
            output=str(eval_path.with_suffix(".tmp.json")),
        )
    )
    if train_seconds is not None:
        result["train_seconds"] = train_seconds
    eval_path.write_text(json.dumps(result, indent=2) + "\n")
    eval_path.with_suffix(".tmp.json").unlink(missing_ok=True)
    return result


def summarise(
    results: dict[str, dict[str, list[dict[str, Any]]]],
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """``{task: {variant: {metric: [mean, std]}}}`` (sample std over seeds; 0 for one seed)."""
    table: dict[str, dict[str, dict[str, list[float]]]] = {}
    for task, by_variant in results.items():
        for variant, runs in by_variant.items():
            row = {}
            for metric in (*METRICS[task], "train_seconds"):
                values = [float(r[metric]) for r in runs if metric in r]
                if values:
                    std = statistics.stdev(values) if len(values) > 1 else 0.0
                    row[metric] = [statistics.fmean(values), std]
            table.setdefault(task, {})[variant] = row
    return table


def markdown_table(summary: dict[str, dict[str, dict[str, list[float]]]], seeds: int) -> str:
    lines = []
    for task, rows in summary.items():
        metrics = [m for m in (*METRICS[task], "train_seconds") if any(m in r for r in rows.values())]
        lines.append(f"**{task}** (mean ± std over {seeds} seeds)\n")
        lines.append("| FQ | " + " | ".join(metrics) + " |")
        lines.append("|---" * (len(metrics) + 1) + "|")
        for variant, row in rows.items():
            cells = [f"{row[m][0]:.3f} ± {row[m][1]:.3f}" if m in row else "–" for m in metrics]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def ablate(cfg: AblateConfig) -> dict[str, Any]:
    tasks, variants = _split(cfg.tasks), _split(cfg.variants)
    for task in tasks:
        if task not in TASK_OPTIONS:
            raise UserError(f"unknown ablation task '{task}': expected some of {', '.join(TASK_OPTIONS)}")
    for variant in variants:
        if variant not in ("none", "loss_only", "quantize"):
            raise UserError(f"unknown variant '{variant}': expected none, loss_only or quantize")
    if cfg.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {cfg.seeds}")
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for task in tasks:
        for seed in range(cfg.seeds):  # seeds outermost: partial results cover every variant early
            for variant in variants:
                results.setdefault(task, {}).setdefault(variant, []).append(run_one(cfg, task, variant, seed))
    summary = summarise(results)
    out = Path(cfg.out_dir)
    machine = f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"
    suffix = "" if cfg.generator == "ema" else "_raw"
    record = {"summary": summary, "machine": machine, "generator": cfg.generator}
    (out / f"results{suffix}.json").write_text(json.dumps(record, indent=2) + "\n")
    table = markdown_table(summary, cfg.seeds)
    (out / f"results{suffix}.md").write_text(table + "\n")
    print(table)
    return summary


def main(argv: list[str] | None = None) -> int:
    return cli.run(ablate, AblateConfig, argv, prog="fqgan-ablate", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
