"""VLN metrics with the reference definitions, and the ``prevalent-eval`` command.

Per episode, on the scan's graph with shortest-path distance ``d`` (metres), a predicted path
``P = p_1 … p_n`` (consecutive repeats collapsed), a reference path ``R = r_1 … r_m`` and goal ``g``:

* **TL** trajectory length ``Σ d(p_i, p_{i+1})``; **NE** navigation error ``d(p_n, g)``;
* **SR** success ``NE < 3 m``; **OSR** oracle success ``min_i d(p_i, g) < 3 m``;
* **SPL** ``S · ℓ / max(ℓ, TL)`` with ``ℓ = d(p_1, g)``;
* **nDTW** ``exp(−DTW(P, R) / (3 · |R|))`` — DTW with cost ``d`` (Ilharco et al., 2019);
  **SDTW** ``S · nDTW``;
* **CLS** ``PC · LS`` with path coverage ``PC = mean_r exp(−min_p d(r, p) / 3)``, expected length
  ``EPL = PC · PL(R)`` and ``LS = EPL / (EPL + |EPL − PL(P)|)`` (Jain et al., 2019);
* **CVDN goal progress** ``min_e d(p_1, e) − min_e d(p_n, e)`` over the end panoramas ``e``;
* **HANNA** success when the final viewpoint is within 2 m (graph distance) of any goal viewpoint,
  SPL with ``ℓ`` the distance from the start to the nearest goal.

Episodes without a prediction count as failures (SR/SPL/nDTW… = 0, goal progress 0) and are reported.
Predictions are the R2R submission format: ``[{"instr_id": str, "trajectory": [[viewpoint, heading,
elevation], …]}, …]``; unknown viewpoints, trajectories that jump between non-adjacent viewpoints or
do not begin at the episode's start, and duplicate ``instr_id`` s are errors.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dgm_core import cli
from dgm_core.cli import option
from dgm_core.errors import UserError
from dgm_core.runtime.checkpoint import write_json_atomic
from prevalent.env.batch_env import BatchNavEnv
from prevalent.env.graph import NavGraph, NavGraphs

SUCCESS_RADIUS = 3.0
HANNA_SUCCESS_RADIUS = 2.0
DTW_THRESHOLD = 3.0
TASKS = ("r2r", "cvdn", "hanna")


# ---------------------------------------------------------------------------------------------- metrics
def collapse(path: Sequence[str]) -> list[str]:
    """Drop consecutive repeats (a trajectory repeats its viewpoint while turning in place)."""
    out: list[str] = []
    for vp in path:
        if not out or out[-1] != vp:
            out.append(vp)
    return out


def dtw(graph: NavGraph, prediction: Sequence[str], reference: Sequence[str]) -> float:
    """Dynamic time warping distance between two paths with graph distance as the local cost."""
    rows_p = [graph.row(v) for v in prediction]
    rows_r = [graph.row(v) for v in reference]
    cost = graph.distances[np.ix_(rows_p, rows_r)]
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            acc[i, j] = cost[i - 1, j - 1] + min(acc[i - 1, j], acc[i, j - 1], acc[i - 1, j - 1])
    return float(acc[n, m])


def ndtw(
    graph: NavGraph, prediction: Sequence[str], reference: Sequence[str], threshold: float = DTW_THRESHOLD
) -> float:
    """Normalised DTW ``exp(−DTW / (threshold · |reference|))`` in ``(0, 1]``."""
    return math.exp(-dtw(graph, prediction, reference) / (threshold * len(reference)))


def cls(
    graph: NavGraph, prediction: Sequence[str], reference: Sequence[str], threshold: float = DTW_THRESHOLD
) -> float:
    """Coverage weighted by Length Score."""
    rows_p = [graph.row(v) for v in prediction]
    rows_r = [graph.row(v) for v in reference]
    nearest = graph.distances[np.ix_(rows_r, rows_p)].min(axis=1)
    coverage = float(np.mean(np.exp(-nearest / threshold)))
    expected = coverage * graph.path_length(reference)
    length = graph.path_length(prediction)
    denominator = expected + abs(expected - length)
    return coverage * (expected / denominator if denominator > 0 else 1.0)


def path_metrics(
    graph: NavGraph,
    prediction: Sequence[str],
    reference: Sequence[str],
    success_radius: float = SUCCESS_RADIUS,
) -> dict[str, float]:
    """TL, NE, SR, OSR, SPL, nDTW, SDTW and CLS of one predicted path against a reference path."""
    pred = collapse(prediction)
    goal = reference[-1]
    trajectory_length = graph.path_length(pred)
    error = graph.distance(pred[-1], goal)
    success = float(error < success_radius)
    oracle = float(min(graph.distance(v, goal) for v in pred) < success_radius)
    shortest = graph.distance(pred[0], goal)
    spl = (
        success * shortest / max(shortest, trajectory_length)
        if max(shortest, trajectory_length) > 0
        else success
    )
    n = ndtw(graph, pred, reference)
    return {
        "TL": trajectory_length,
        "NE": error,
        "SR": success,
        "OSR": oracle,
        "SPL": spl,
        "nDTW": n,
        "SDTW": success * n,
        "CLS": cls(graph, pred, reference),
    }


def goal_progress(graph: NavGraph, prediction: Sequence[str], end_panos: Sequence[str]) -> float:
    """CVDN goal progress: how much closer (m) the path's end is to the end region than its start."""
    start_gap = min(graph.distance(prediction[0], e) for e in end_panos)
    end_gap = min(graph.distance(prediction[-1], e) for e in end_panos)
    return start_gap - end_gap


def region_metrics(
    graph: NavGraph, prediction: Sequence[str], goals: Sequence[str], success_radius: float
) -> dict[str, float]:
    """TL, NE, SR, OSR and SPL toward the nearest of several goal viewpoints (HANNA, CVDN region)."""
    pred = collapse(prediction)
    trajectory_length = graph.path_length(pred)
    error = min(graph.distance(pred[-1], g) for g in goals)
    success = float(error <= success_radius)
    oracle = float(min(graph.distance(v, g) for v in pred for g in goals) <= success_radius)
    shortest = min(graph.distance(pred[0], g) for g in goals)
    spl = (
        success * shortest / max(shortest, trajectory_length)
        if max(shortest, trajectory_length) > 0
        else success
    )
    return {"TL": trajectory_length, "NE": error, "SR": success, "OSR": oracle, "SPL": spl}


# ------------------------------------------------------------------------------------------ predictions
def load_predictions(path: str | Path) -> dict[str, list[list]]:
    """Read a submission file into ``{instr_id: trajectory}``; clear errors for malformed content."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"predictions file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: malformed JSON ({err})") from None
    return predictions_from_list(data, str(path))


def predictions_from_list(data: object, source: str = "predictions") -> dict[str, list[list]]:
    """Validate a parsed submission list (see :func:`load_predictions`)."""
    if not isinstance(data, list):
        raise UserError(f"{source}: expected a JSON list of {{instr_id, trajectory}} objects")
    out: dict[str, list[list]] = {}
    duplicates = []
    for k, item in enumerate(data):
        if not isinstance(item, dict) or "instr_id" not in item or "trajectory" not in item:
            raise UserError(f"{source}: entry {k} needs 'instr_id' and 'trajectory'")
        trajectory = item["trajectory"]
        if not isinstance(trajectory, list) or not trajectory:
            raise UserError(f"{source}: entry {k} ({item['instr_id']}) has an empty or non-list trajectory")
        for step in trajectory:
            if not isinstance(step, (list, tuple)) or not step or not isinstance(step[0], str):
                raise UserError(
                    f"{source}: entry {k} ({item['instr_id']}): each step is [viewpoint, heading, elevation]"
                )
        key = str(item["instr_id"])
        if key in out:
            duplicates.append(key)
        out[key] = trajectory
    if duplicates:
        shown = ", ".join(duplicates[:5])
        raise UserError(f"{source}: {len(duplicates)} duplicate instr_id(s): {shown}")
    return out


def check_trajectory(graph: NavGraph, instr_id: str, trajectory: Sequence[Sequence], start: str) -> list[str]:
    """The trajectory's viewpoints, after checking they exist, start right and move along edges."""
    path = [step[0] for step in trajectory]
    for vp in path:
        if vp not in graph:
            raise UserError(f"prediction {instr_id}: viewpoint {vp} is not in scan {graph.scan}")
    if path[0] != start:
        raise UserError(f"prediction {instr_id}: trajectory starts at {path[0]}, the episode at {start}")
    walked = collapse(path)
    for a, b in zip(walked, walked[1:]):
        if not graph.is_adjacent(a, b):
            raise UserError(
                f"prediction {instr_id}: jumps from {a} to {b}, which are not adjacent in {graph.scan}"
            )
    return path


# ------------------------------------------------------------------------------------------- evaluation
@dataclass
class EvalReport:
    """Aggregate metrics, per-episode rows and bookkeeping counts of one evaluation."""

    task: str
    metrics: dict[str, float]
    episodes: list[dict] = field(default_factory=list)
    num_episodes: int = 0
    missing: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "metrics": self.metrics,
            "num_episodes": self.num_episodes,
            "num_missing": len(self.missing),
            "missing": self.missing,
            "num_unknown_predictions": len(self.unknown),
            "episodes": self.episodes,
        }

    def table(self) -> str:
        """A two-column plain-text table of the aggregate metrics."""
        lines = [f"{self.task} — {self.num_episodes} episodes", "-" * 28]
        for name, value in self.metrics.items():
            lines.append(f"{name:<12}{value:>16.4f}")
        if self.missing:
            lines.append(f"missing predictions: {len(self.missing)} (counted as failures)")
        if self.unknown:
            lines.append(f"predictions for unknown instr_ids ignored: {len(self.unknown)}")
        return "\n".join(lines)


def _episode_rows(task: str, episodes: Sequence, graphs: NavGraphs, predictions: dict[str, list]):
    for ep in episodes:
        graph = graphs[ep.scan]
        trajectory = predictions.get(ep.instr_id)
        missing = trajectory is None
        path = [ep.start] if missing else check_trajectory(graph, ep.instr_id, trajectory, ep.start)
        if task == "r2r":
            if ep.path is None:
                raise UserError(
                    f"episode {ep.instr_id} has no reference path (a test split cannot be scored)"
                )
            row = path_metrics(graph, path, ep.path)
        elif task == "cvdn":
            if not ep.end_panos:
                raise UserError(f"episode {ep.instr_id} has no end_panos (a test split cannot be scored)")
            row = {"goal_progress": goal_progress(graph, collapse(path), ep.end_panos)}
            row.update(region_metrics(graph, path, ep.end_panos, SUCCESS_RADIUS))
        else:
            row = region_metrics(graph, path, ep.goal_viewpoints, HANNA_SUCCESS_RADIUS)
        if missing:
            row = {k: (v if k in ("NE",) else 0.0) for k, v in row.items()}
        yield ep.instr_id, missing, row


def evaluate(task: str, episodes: Sequence, graphs: NavGraphs, predictions: dict[str, list]) -> EvalReport:
    """Score predictions against episodes of ``task`` (``r2r``, ``cvdn`` or ``hanna``)."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if not episodes:
        raise UserError("no episodes to evaluate")
    rows, missing = [], []
    for instr_id, was_missing, row in _episode_rows(task, episodes, graphs, predictions):
        rows.append({"instr_id": instr_id, "missing": was_missing, **row})
        if was_missing:
            missing.append(instr_id)
    names = [k for k in rows[0] if k not in ("instr_id", "missing")]
    metrics = {name: float(np.mean([r[name] for r in rows])) for name in names}
    known = {ep.instr_id for ep in episodes}
    unknown = sorted(k for k in predictions if k not in known)
    return EvalReport(task, metrics, rows, len(rows), missing, unknown)


def load_episodes(task: str, data: str | Path, history: str = "all") -> list:
    """Episodes of a task file: R2R JSON, NDH JSON or HANNA-style JSON."""
    from prevalent.data import load_hanna, load_ndh, load_r2r

    if task == "r2r":
        return load_r2r(data)
    if task == "cvdn":
        return load_ndh(data, history=history)
    if task == "hanna":
        return load_hanna(data)
    raise UserError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


# ------------------------------------------------------------------------------------------- baselines
def baseline_predictions(
    agent: str, episodes: Sequence, graphs: NavGraphs, seed: int = 0, max_steps: int = 6
) -> list[dict]:
    """Submission-format predictions of a reference agent.

    ``shortest``: walks the shortest path to the episode's goal (the upper bound, SR 1 on R2R);
    ``random``: for a random number of steps in ``1..max_steps`` takes a random non-STOP candidate,
    preferring not to walk straight back (the random baseline of the R2R paper, panoramic form).
    """
    env = BatchNavEnv(graphs)
    env.reset(
        [ep.scan for ep in episodes],
        [ep.start for ep in episodes],
        [ep.heading for ep in episodes],
        instr_ids=[ep.instr_id for ep in episodes],
    )
    if agent == "shortest":
        goals = [_goal_of(ep) for ep in episodes]
        while not env.all_ended:
            env.step(env.teacher_actions(goals))
        return env.trajectories()
    if agent != "random":
        raise UserError(f"unknown baseline agent {agent!r}; choose shortest or random")
    rng = np.random.default_rng(seed)
    budgets = rng.integers(1, max_steps + 1, size=len(episodes))
    for t in range(max_steps + 1):
        actions = []
        for b, (ep, cands) in enumerate(zip(env.episodes, env.candidates())):
            if ep.ended or t >= budgets[b] or len(cands) == 1:
                actions.append(0)
                continue
            previous = ep.trajectory[-2][0] if len(ep.trajectory) > 1 else None
            options = [k for k in range(1, len(cands)) if cands[k].viewpoint != previous] or list(
                range(1, len(cands))
            )
            actions.append(int(rng.choice(options)))
        env.step(actions)
    return env.trajectories()


def _goal_of(ep) -> str | list[str]:
    if getattr(ep, "goal_viewpoints", None):
        return ep.goal_viewpoints
    if getattr(ep, "end_panos", None):
        return ep.end_panos
    if ep.path is None:
        raise UserError(f"episode {ep.instr_id} has no goal to walk to")
    return ep.path[-1]


# ------------------------------------------------------------------------------------------------- CLI
@dataclass
class EvalConfig:
    """Options of ``prevalent-eval``."""

    task: str = option("r2r", help="Task whose metrics to compute.", choices=TASKS)
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
    from prevalent.data.synthetic import ensure_default_dataset

    default_files = {
        "r2r": "R2R/R2R_val_unseen.json",
        "cvdn": "NDH/val_unseen.json",
        "hanna": "HANNA/val_unseen.json",
    }
    if not cfg.data or not cfg.connectivity:
        root = ensure_default_dataset(cfg.synthetic_seed)
        data = Path(cfg.data or root / default_files[cfg.task])
        connectivity = Path(cfg.connectivity or root / "connectivity")
    else:
        data, connectivity = Path(cfg.data), Path(cfg.connectivity)
    episodes = load_episodes(cfg.task, data, cfg.history)
    graphs = NavGraphs(connectivity)
    if cfg.predictions:
        predictions = load_predictions(cfg.predictions)
        output = Path(cfg.output) if cfg.output else Path(cfg.predictions).with_suffix(".eval.json")
    else:
        predictions = predictions_from_list(baseline_predictions(cfg.baseline, episodes, graphs, cfg.seed))
        output = (
            Path(cfg.output) if cfg.output else Path("runs") / f"eval-{cfg.task}-{cfg.baseline}" / "eval.json"
        )
    report = evaluate(cfg.task, episodes, graphs, predictions)
    print(report.table())
    output.parent.mkdir(parents=True, exist_ok=True)
    payload = report.to_dict()
    payload.update(
        {"data": str(data), "connectivity": str(connectivity), "predictions": cfg.predictions or cfg.baseline}
    )
    write_json_atomic(output, payload)
    print(f"metrics written to {output}")
    if cfg.maps > 0 or cfg.map_ids:
        from prevalent.render import render_episode_maps

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
