"""``fqgan-ablate``: the paper's claim in miniature — FQ vs no FQ at equal budget, over several seeds.

For each task (procedural ``shapes`` with the small conditional DCGAN/SNGAN at 16×16;
``shapes_limited``, the same with a tenth of the images; the 25-Gaussian
``grid25`` and the 8-Gaussian ``ring8`` with MLPs), each variant (``none``:
baseline; ``loss_only``: FQ as the reference code; ``quantize``: FQ fed forward)
and each seed, it trains with exactly the same options except ``--fq-mode``,
evaluates the final EMA generator with :mod:`fqgan.evaluate`, and writes
``<out_dir>/results.json`` and markdown tables (``results.md``): per variant each
metric's mean and 95 % interval over the seeds, each FQ variant's difference
from the baseline paired by seed, and, for the FQ variants, each dictionary's
usage (perplexity and dead codes) at the last logged training step, read from
the run's ``metrics.jsonl``.

``shapes_limited`` exists because of the paper's argument for FQ: the
dictionary, a moving average of the features of many recent batches, stands in
for the true feature statistics where one mini-batch estimates them poorly,
which is worst when there is little training data. It trains on 10 % of the
``fqgan-train`` default ``--num-images`` (same data generator, same recipe and steps as
``shapes``) and is evaluated like ``shapes``, against the full distribution.

Runs are cached by their complete option set: a run's folder is named by a hash
of its fully resolved ``fqgan-train`` config (every option, defaults included,
and the fqgan and dgm-core versions), and each evaluation file by a hash of that
and the fully resolved ``fqgan-eval`` config. Changing any option therefore
trains (or evaluates) again instead of returning old numbers, while a run with
the same options is reused (trained ones are only evaluated; evaluated ones are
read back), so an interrupted ablation continues where it stopped, and
``--generator raw`` evaluates the same runs' raw generators.

``--jobs`` trains and evaluates several runs at once, each in its own process on one torch thread
(default: one per CPU core on the CPU). The factor classifier and the real statistics are prepared
once, before the runs start.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import dgm_core
import fqgan
from dgm_core import cli
from dgm_core.claims import (
    Interval,
    mean_interval,
    options_digest,
    paired_difference,
    parallel_jobs,
    results_table,
    run_parallel,
)
from dgm_core.cli import option
from dgm_core.errors import UserError
from dgm_core.runtime.files import write_json_atomic
from dgm_core.runtime.logging import read_metrics
from fqgan.evaluate import EvalConfig, evaluate, shapes_reference
from fqgan.train import PRESETS, TrainConfig, train

# The shapes miniature: the demo's DCGAN pair at 16×16 (a quarter of the demo's pixels), with the
# recipe that trained fastest of those tried on the 2-core CPU (batch 128, Adam 1e-3, β1 0.5, one D
# update per G update; the README lists the others). Its D has three blocks, each with a dictionary.
SHAPES_MINIATURE: dict[str, Any] = {
    "resolution": 16,
    "batch_size": 128,
    "lr_g": 1e-3,
    "lr_d": 1e-3,
    "adam_beta1": 0.5,
    "d_steps": 1,
    "fq_layers": "0,1,2",
}
# A task's ``fqgan-train`` options on top of the defaults; ``data`` is the task name unless set here.
TASK_OPTIONS: dict[str, dict[str, Any]] = {
    "shapes": SHAPES_MINIATURE,
    # The same with a tenth of the images: little data, where FQ should matter most.
    "shapes_limited": {**SHAPES_MINIATURE, "data": "shapes", "num_images": TrainConfig().num_images // 10},
    "grid25": {k: v for k, v in PRESETS["grid25"].items() if k != "run_dir"},
    "ring8": {k: v for k, v in PRESETS["ring8"].items() if k != "run_dir"},
}
METRICS = {
    "shapes": ("factor_fd", "mode_coverage", "confident_share", "combination_kl", "label_accuracy"),
    "shapes_limited": ("factor_fd", "mode_coverage", "confident_share", "combination_kl", "label_accuracy"),
    "grid25": ("modes_covered", "high_quality", "mode_kl"),
    "ring8": ("modes_covered", "high_quality", "mode_kl"),
}


@dataclass
class AblateConfig:
    """Options of ``fqgan-ablate``."""

    out_dir: str = option("runs/fqgan-ablate", help="Folder for every run and the result tables.")
    tasks: str = option(
        "shapes,shapes_limited,grid25,ring8",
        help="Comma-separated tasks: shapes, shapes_limited, grid25, ring8.",
    )
    variants: str = option("none,loss_only,quantize", help="Comma-separated --fq-mode values to compare.")
    seeds: int = option(5, help="Seeds per (task, variant): 0 .. N-1 (paired across variants).")
    shapes_steps: int = option(
        1200, help="Training steps of each shapes and shapes_limited run (equal for every variant)."
    )
    mixture_steps: int = option(8000, help="Training steps of each grid25/ring8 run.")
    device: str = option("cpu", help="Device for every run.")
    classifier_cache: str = option("", help="Factor-classifier cache folder (default ~/.cache/fqgan).")
    num_samples: int = option(0, help="Samples per evaluation (0: the fqgan-eval default).")
    generator: str = option("ema", help="Evaluate the EMA generator or the raw one.", choices=("ema", "raw"))
    jobs: int = option(
        0,
        help="Runs at once, each in its own process on one torch thread (0: one per CPU core on the "
        "CPU, 1 on a GPU; 1: one after another in this process).",
    )


def _split(spec: str) -> list[str]:
    return [s.strip() for s in spec.split(",") if s.strip()]


def _resolved(config: Any, *location_fields: str) -> dict[str, Any]:
    """Every option of a resolved config, defaults included, minus the fields that only say where
    things go (they are derived from the key itself)."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in location_fields}


def task_data(task: str) -> str:
    """The ``fqgan-train --data`` of a task (the task name is only the ablation's label)."""
    return TASK_OPTIONS[task].get("data", task)


def train_config_for(cfg: AblateConfig, task: str, variant: str, seed: int) -> TrainConfig:
    """The complete ``fqgan-train`` config of one run (``run_dir`` still to be set from its key)."""
    steps = cfg.shapes_steps if task_data(task) == "shapes" else cfg.mixture_steps
    options = {
        **TASK_OPTIONS[task],
        "data": task_data(task),
        "fq_mode": variant,
        "seed": seed,
        "steps": steps,
        "device": cfg.device,
        "progress": False,
        "checkpoint_every": 0,
        "keep_checkpoints": 1,
    }
    return cli.config_from_dict(TrainConfig, options, source=f"ablation run {task}-{variant}-seed{seed}")


BASELINE = "none"
DICTIONARY_STATS = {"fq/perplexity_": "perplexity", "fq/dead_codes_": "dead_codes"}


def dictionary_usage(metrics_path: str | Path) -> dict[str, dict[str, float]]:
    """Per FQ layer, its dictionary's perplexity and dead codes at the last step that logged them.

    ``fqgan-train`` logs ``fq/perplexity_<layer>`` and ``fq/dead_codes_<layer>`` (of D's last
    ``[real; fake]`` batch) with every metrics line; each value is taken from the last record of
    ``metrics.jsonl`` that holds its key. Returns ``{layer: {"perplexity": x, "dead_codes": y}}``;
    empty when the file is missing or holds no such key (a run without FQ). A non-finite value
    (logged as a string) counts as missing.
    """
    path = Path(metrics_path)
    if not path.is_file():
        return {}
    usage: dict[str, dict[str, float]] = {}
    for record in read_metrics(path):
        for key, value in record.items():
            for prefix, stat in DICTIONARY_STATS.items():
                if key.startswith(prefix) and len(key) > len(prefix):
                    layer = usage.setdefault(key[len(prefix) :], {})
                    try:
                        number = float(value)
                    except (TypeError, ValueError):
                        number = math.nan
                    if math.isfinite(number):
                        layer[stat] = number
                    else:  # a later non-finite value replaces an earlier finite one
                        layer.pop(stat, None)
    return {layer: stats for layer, stats in usage.items() if stats}


def _with_dictionary(result: dict[str, Any], variant: str, run_dir: Path) -> dict[str, Any]:
    """``result`` with the FQ variants' ``dictionary`` usage, when the run logged any."""
    if variant != BASELINE and "dictionary" not in result:
        usage = dictionary_usage(run_dir / "metrics.jsonl")
        if usage:
            result["dictionary"] = usage
    return result


def run_one(cfg: AblateConfig, task: str, variant: str, seed: int) -> dict[str, Any]:
    train_cfg = train_config_for(cfg, task, variant, seed)
    train_record = {
        "train": _resolved(train_cfg, "run_dir"),
        "versions": {"fqgan": fqgan.__version__, "dgm_core": dgm_core.__version__},
    }
    train_key = options_digest(train_record)
    run_dir = Path(cfg.out_dir) / f"{task}-{variant}-seed{seed}-{train_key}"
    train_cfg.run_dir = str(run_dir)
    eval_cfg = eval_config_for(cfg, run_dir, seed)
    eval_key = options_digest({"train_key": train_key, "eval": _resolved(eval_cfg, "checkpoint", "output")})
    eval_path = run_dir / f"eval-{cfg.generator}-{eval_key}.json"
    if eval_path.is_file():
        # An evaluation cached before dictionary usage was recorded gets it from the run's metrics.
        return _with_dictionary(json.loads(eval_path.read_text()), variant, run_dir)
    record_path = run_dir / "ablation_run.json"
    finished = run_dir / "checkpoints" / f"step_{train_cfg.steps:06d}"
    if not finished.is_dir():  # else trained already (e.g. evaluated before with other eval options)
        started = time.perf_counter()
        train(train_cfg)
        write_json_atomic(
            record_path,
            {"key": train_key, **train_record, "train_seconds": time.perf_counter() - started},
        )
    eval_cfg.output = str(eval_path.with_suffix(".tmp.json"))
    result = evaluate(eval_cfg)
    seconds = json.loads(record_path.read_text()).get("train_seconds") if record_path.is_file() else None
    if seconds is not None:
        result["train_seconds"] = seconds
    result["options_key"] = {"train": train_key, "eval": eval_key}
    _with_dictionary(result, variant, run_dir)
    write_json_atomic(eval_path, result)
    eval_path.with_suffix(".tmp.json").unlink(missing_ok=True)
    return result


def eval_config_for(cfg: AblateConfig, run_dir: Path, seed: int) -> EvalConfig:
    """The ``fqgan-eval`` config of one run."""
    return EvalConfig(
        checkpoint=str(run_dir),
        device=cfg.device,
        seed=seed,
        classifier_cache=cfg.classifier_cache,
        num_samples=cfg.num_samples,
        use_ema=cfg.generator == "ema",
    )


def prepare_shapes_references(cfg: AblateConfig, tasks: list[str]) -> None:
    """Train and cache the factor classifier and real statistics of every shapes resolution once,
    here, before parallel runs would each do it (and race to write the same cache)."""
    resolutions = {
        train_config_for(cfg, task, BASELINE, 0).resolution for task in tasks if task_data(task) == "shapes"
    }
    for resolution in sorted(resolutions):
        shapes_reference(eval_config_for(cfg, Path(), 0), resolution, cfg.device)


def _interval_entry(values: list[float]) -> dict[str, Any]:
    interval = mean_interval(values)
    return {"mean": interval.mean, "low": interval.low, "high": interval.high, "values": values}


def summarise_dictionary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per layer, each dictionary statistic's per-seed values, mean and 95 % interval.

    Empty unless every run has a ``dictionary`` (evaluations cached before it was recorded lack
    it); a layer or statistic counts only when every run has it.
    """
    if not runs or not all(r.get("dictionary") for r in runs):
        return {}
    out: dict[str, Any] = {}
    for layer in runs[0]["dictionary"]:
        entry = {}
        for stat in DICTIONARY_STATS.values():
            if all(stat in r["dictionary"].get(layer, {}) for r in runs):
                entry[stat] = _interval_entry([float(r["dictionary"][layer][stat]) for r in runs])
        if entry:
            out[layer] = entry
    return out


def summarise(results: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Per task and variant, each metric's per-seed values, mean and 95 % Student-t interval; and per
    task, each FQ variant's paired difference from the baseline (same seed, same data).

    ``{"variants": {task: {variant: {metric: {mean, low, high, values}}}},
    "paired": {task: {variant: {metric: {difference, low, high, p_value, wins, losses, ties}}}},
    "dictionary": {task: {variant: {layer: {"perplexity": {mean, low, high, values},
    "dead_codes": {...}}}}}}``; ``dictionary`` holds only the variants all of whose runs have
    dictionary usage (see :func:`summarise_dictionary`), and only the tasks with such a variant.
    """
    variants_out: dict[str, Any] = {}
    paired_out: dict[str, Any] = {}
    dictionary_out: dict[str, Any] = {}
    for task, by_variant in results.items():
        for variant, runs in by_variant.items():
            row = {}
            for metric in (*METRICS[task], "train_seconds"):
                values = [float(r[metric]) for r in runs if metric in r]
                if values:
                    row[metric] = _interval_entry(values)
            variants_out.setdefault(task, {})[variant] = row
            usage = summarise_dictionary(runs)
            if usage:
                dictionary_out.setdefault(task, {})[variant] = usage
        baseline = by_variant.get(BASELINE)
        for variant, runs in by_variant.items():
            if baseline is None or variant == BASELINE:
                continue
            row = {}
            for metric in METRICS[task]:
                if all(metric in r for r in (*runs, *baseline)):
                    # Runs are listed by seed for every variant, so position i pairs seed i with seed i.
                    compared = paired_difference([r[metric] for r in runs], [r[metric] for r in baseline])
                    row[metric] = {
                        "difference": compared.difference.mean,
                        "low": compared.difference.low,
                        "high": compared.difference.high,
                        "p_value": compared.p_value,
                        "wins": compared.wins,
                        "losses": compared.losses,
                        "ties": compared.ties,
                    }
            paired_out.setdefault(task, {})[variant] = row
    return {"variants": variants_out, "paired": paired_out, "dictionary": dictionary_out}


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "–"
    return Interval(entry["mean"], entry["low"], entry["high"], len(entry["values"])).format()


def _paired_cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "–"
    difference = Interval(entry["difference"], entry["low"], entry["high"], 0).format(signed=True)
    p = "p < 0.001" if entry["p_value"] < 1e-3 else f"p = {entry['p_value']:.3f}"
    return f"{difference}, {p}, {entry['wins']}/{entry['losses']}/{entry['ties']}"


def markdown_table(summary: dict[str, Any], seeds: int) -> str:
    lines = []
    for task, rows in summary["variants"].items():
        metrics = [m for m in (*METRICS[task], "train_seconds") if any(m in r for r in rows.values())]
        lines.append(f"**{task}** (mean [95 % interval] over {seeds} seeds)\n")
        table_rows = [[variant, *(_cell(row.get(m)) for m in metrics)] for variant, row in rows.items()]
        lines.append(results_table(table_rows, ["FQ", *metrics]))
        lines.append("")
        paired = summary["paired"].get(task)
        if paired:
            lines.append(
                f"*{task}, paired by seed: variant − {BASELINE}, [95 % interval], paired t-test, "
                "wins/losses/ties*\n"
            )
            paired_metrics = list(METRICS[task])
            table_rows = [
                [variant, *(_paired_cell(row.get(m)) for m in paired_metrics)]
                for variant, row in paired.items()
            ]
            lines.append(results_table(table_rows, ["FQ", *paired_metrics]))
            lines.append("")
        dictionary = summary.get("dictionary", {}).get(task)
        if dictionary:
            lines.append(
                f"*{task}: dictionary usage at the last logged training step, on D's last [real; fake] "
                "batch (perplexity: exp of the entropy of the batch's code use; dead codes: codewords "
                f"that no feature of that batch chose), mean [95 % interval] over {seeds} seeds*\n"
            )
            table_rows = [
                [variant, layer, _cell(stats.get("perplexity")), _cell(stats.get("dead_codes"))]
                for variant, layers in dictionary.items()
                for layer, stats in layers.items()
            ]
            lines.append(results_table(table_rows, ["FQ", "layer", "perplexity", "dead codes"]))
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
    # Seeds before variants: an interrupted ablation has finished every variant of its first seeds.
    calls = [
        (cfg, task, variant, seed) for task in tasks for seed in range(cfg.seeds) for variant in variants
    ]
    jobs = parallel_jobs(cfg.jobs, len(calls), cfg.device)
    if jobs > 1:
        prepare_shapes_references(cfg, tasks)
    outcomes = run_parallel(
        run_one, calls, jobs, describe=lambda call: f"ablation run {call[1]}-{call[2]}-seed{call[3]}"
    )
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for (_, task, variant, _), result in zip(calls, outcomes):  # per variant, in seed order
        results.setdefault(task, {}).setdefault(variant, []).append(result)
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
