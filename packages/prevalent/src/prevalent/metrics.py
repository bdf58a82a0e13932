"""VLN path metrics with the reference definitions, and the scoring of a whole submission.

Per episode, on the scan's graph with shortest-path distance ``d`` (metres), a predicted path
``P = p_1 … p_n`` (consecutive repeats collapsed), a reference path ``R = r_1 … r_m`` and goal ``g``:

* **TL** trajectory length ``Σ d(p_i, p_{i+1})``; **NE** navigation error ``d(p_n, g)``;
* **SR** success ``NE < 3 m``; **OSR** oracle success ``min_i d(p_i, g) < 3 m``;
* **SPL** ``S · ℓ / max(ℓ, TL)`` with ``ℓ = d(p_1, g)``;
* **nDTW** ``exp(−DTW(P, R) / (3 · |R|))`` — DTW with cost ``d`` (Ilharco et al., 2019);
  **SDTW** ``S · nDTW``;
* **CLS** ``PC · LS`` with path coverage ``PC = mean_r exp(−min_p d(r, p) / 3)``, expected length
  ``EPL = PC · PL(R)`` and ``LS = EPL / (EPL + |EPL − PL(P)|)`` (Jain et al., 2019);
* **goal progress** (CVDN) ``min_e d(p_1, e) − min_e d(p_n, e)`` over the end panoramas ``e``;
* **region metrics** (HANNA, the CVDN region): success when the final viewpoint is within the
  success radius of any goal viewpoint, SPL with ``ℓ`` the distance from the start to the nearest goal.

Which of them a task reports, and with which success radius, is the task's business
(:mod:`prevalent.tasks`). Submissions are the R2R format: ``[{"instr_id": str, "trajectory":
[[viewpoint, heading, elevation], …]}, …]``; unknown viewpoints, trajectories that jump between
non-adjacent viewpoints or do not begin at the episode's start, and duplicate ``instr_id`` s are
errors. Episodes without a prediction count as failures and are reported.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dgm_core.errors import UserError
from prevalent.env.graph import NavGraph, NavGraphs

#: R2R's success radius (m), also the distance scale of nDTW and CLS
SUCCESS_RADIUS = 3.0
DTW_THRESHOLD = 3.0


# ---------------------------------------------------------------------------------------------- paths
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


# ---------------------------------------------------------------------------------------- submissions
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


#: a task's metrics of one walked path: ``(graph, viewpoints, episode) -> {name: value}``
PathScorer = Callable[[NavGraph, list[str], object], dict[str, float]]


def score_submission(
    task: str, episodes: Sequence, graphs: NavGraphs, predictions: dict[str, list], score: PathScorer
) -> EvalReport:
    """Score every episode's predicted trajectory with ``score`` and average the rows.

    An episode without a prediction stands still at its start: its row keeps that NE and scores 0
    everywhere else. Predictions for ids that are not among ``episodes`` are counted and ignored.
    """
    if not episodes:
        raise UserError("no episodes to evaluate")
    rows, missing = [], []
    for ep in episodes:
        graph = graphs[ep.scan]
        trajectory = predictions.get(ep.instr_id)
        was_missing = trajectory is None
        path = [ep.start] if was_missing else check_trajectory(graph, ep.instr_id, trajectory, ep.start)
        row = score(graph, path, ep)
        if was_missing:
            row = {k: (v if k == "NE" else 0.0) for k, v in row.items()}
            missing.append(ep.instr_id)
        rows.append({"instr_id": ep.instr_id, "missing": was_missing, **row})
    names = [k for k in rows[0] if k not in ("instr_id", "missing")]
    metrics = {name: float(np.mean([r[name] for r in rows])) for name in names}
    known = {ep.instr_id for ep in episodes}
    unknown = sorted(k for k in predictions if k not in known)
    return EvalReport(task, metrics, rows, len(rows), missing, unknown)
