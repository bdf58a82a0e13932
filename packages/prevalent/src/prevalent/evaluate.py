"""``prevalent-eval``: score navigation predictions of a task with the reference metrics.

Reads a task file (R2R, NDH or HANNA JSON) and the scans' connectivity, scores a submission
(``--predictions``, the R2R format) or a reference agent (``--baseline random|shortest``) with the
task's metrics (:mod:`prevalent.tasks`, :mod:`prevalent.metrics`), prints a table, writes the JSON
and, if asked, draws top-down maps of chosen episodes. Without arguments: a random agent on the
synthetic dataset's unseen houses. It runs no model, so it has no device or precision options.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from dgm_core import cli
from dgm_core.cli import option
from dgm_core.errors import UserError
from dgm_core.runtime.files import write_json_atomic
from prevalent.data.synthetic import ensure_default_dataset
from prevalent.env.graph import NavGraphs
from prevalent.metrics import EvalReport, load_predictions, predictions_from_list
from prevalent.render import render_episode_maps
from prevalent.rollout import baseline_predictions
from prevalent.tasks import TASKS, TaskOptions, get_task


@dataclass
class EvalConfig:
    """Options of ``prevalent-eval``."""

    task: str = option("r2r", help="Task whose metrics to compute.", choices=tuple(TASKS))
    data: str = option(
        "", help="Task data file (R2R/NDH/HANNA JSON). Default: the synthetic dataset's val_unseen split."
    )
    connectivity: str = option("", help="Connectivity folder. Default: the synthetic dataset's.")
    predictions: str = option(
        "", help="Submission file [{instr_id, trajectory}]. Empty: score the --baseline agent instead."
    )
    baseline: str = option(
        "random", help="Agent scored when no predictions are given.", choices=("random", "shortest")
    )
    history: str = option("all", help="NDH dialog history mode (cvdn only; does not change metrics).")
    output: str = option(
        "",
        help="Where to write the JSON metrics. Default: <predictions name>.eval.json beside the predictions "
        "(never the run's own eval.json).",
    )
    maps: int = option(
        0, help="Draw top-down SVG maps (PNG too when Pillow is present) of the first N episodes."
    )
    map_ids: list[str] = option(
        default_factory=list,
        help="instr_ids to draw maps of, instead of the first --maps (space- or comma-separated).",
    )
    maps_dir: str = option("", help="Folder for the maps. Default: maps/ beside the output JSON.")
    seed: int = option(0, help="Seed of the random baseline.")
    synthetic_seed: int = option(
        0, help="Without --data/--connectivity: the synthetic dataset of this seed (made if missing)."
    )


def run_eval(cfg: EvalConfig) -> EvalReport:
    """The body of ``prevalent-eval``: load, score, print the table, write the JSON (and maps)."""
    task = get_task(cfg.task)
    if not cfg.data or not cfg.connectivity:
        root = ensure_default_dataset(cfg.synthetic_seed)
        data = Path(cfg.data or root / task.split_files[0].format(split="val_unseen"))
        connectivity = Path(cfg.connectivity or root / "connectivity")
    else:
        data, connectivity = Path(cfg.data), Path(cfg.connectivity)
    # The maps draw NDH's planner path (what the oracle was shown) as the reference.
    episodes = task.read(data, TaskOptions(history=cfg.history, path_type="planner"))
    graphs = NavGraphs(connectivity)
    if cfg.predictions:
        predictions = load_predictions(cfg.predictions)
        output = Path(cfg.output) if cfg.output else Path(cfg.predictions).with_suffix(".eval.json")
    else:
        predictions = predictions_from_list(baseline_predictions(cfg.baseline, episodes, graphs, cfg.seed))
        output = (
            Path(cfg.output) if cfg.output else Path("runs") / f"eval-{cfg.task}-{cfg.baseline}" / "eval.json"
        )
    report = task.evaluate(episodes, graphs, predictions)
    print(report.table())
    output.parent.mkdir(parents=True, exist_ok=True)
    payload = report.to_dict()
    payload.update(
        {"data": str(data), "connectivity": str(connectivity), "predictions": cfg.predictions or cfg.baseline}
    )
    write_json_atomic(output, payload)
    print(f"metrics written to {output}")
    if cfg.maps > 0 or cfg.map_ids:
        chosen = episodes[: cfg.maps]
        if cfg.map_ids:
            by_id = {ep.instr_id: ep for ep in episodes}
            wanted = [i for item in cfg.map_ids for i in item.split(",") if i]
            unknown = [i for i in wanted if i not in by_id]
            if unknown:
                raise UserError(f"--map-ids: no episode {unknown[0]!r} in {data}")
            chosen = [by_id[i] for i in wanted]
        maps_dir = Path(cfg.maps_dir) if cfg.maps_dir else output.parent / "maps"
        written = render_episode_maps(chosen, graphs, predictions, maps_dir)
        print(f"{len(written)} map file(s) written to {maps_dir}")
    return report


def _run(cfg: EvalConfig) -> int:
    run_eval(cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``prevalent-eval``: score VLN predictions (R2R, CVDN goal progress, HANNA) and print a table."""
    return cli.run(
        _run,
        EvalConfig,
        argv,
        prog="prevalent-eval",
        description=(
            "Score navigation predictions with the reference metrics (TL, NE, SR, OSR, SPL, nDTW, SDTW, "
            "CLS; CVDN goal progress; HANNA success within 2 m). Without arguments: a random agent on "
            "the synthetic dataset's unseen houses."
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
