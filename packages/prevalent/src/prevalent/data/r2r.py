"""Room-to-Room (R2R) episodes: one per instruction.

R2R JSON is a list of paths::

    {"distance": float, "scan": str, "path_id": int, "path": [viewpoint, …],
     "heading": float (radians), "instructions": [str, …]}

The test split carries no ``path`` beyond the start (and no ``distance``): such episodes have
``path = None`` and a ``start`` given by a one-element ``path`` or by a ``start`` field. Instruction
``k`` of path ``p`` is episode ``instr_id = f"{p}_{k}"``, the id the R2R leaderboard expects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prevalent.data.records import check, check_path, parse_records


@dataclass
class R2REpisode:
    """One R2R instruction with its path.

    Attributes:
        instr_id: ``"<path_id>_<k>"``.
        scan, heading: the house and the start heading (radians).
        start: the start viewpoint.
        instruction: the natural-language instruction.
        path: the reference path (start … goal), ``None`` in the test split.
        distance: the path's length in metres as stored in the file (``None`` when absent).
    """

    instr_id: str
    path_id: int
    scan: str
    start: str
    heading: float
    instruction: str
    path: list[str] | None = None
    distance: float | None = None

    @property
    def goal(self) -> str | None:
        """The last viewpoint of the reference path (``None`` in the test split)."""
        return None if self.path is None else self.path[-1]


def _parse(index: int, record: dict) -> list[R2REpisode]:
    check(record, {"scan": str, "path_id": (int, str), "heading": (int, float), "instructions": list})
    path = record.get("path")
    if path is not None:
        path = check_path(path, "path")
    start = record.get("start", path[0] if path else None)
    if not isinstance(start, str):
        raise ValueError("needs a 'path' (or, in a test split, a 'start' viewpoint)")
    if path is not None and len(path) == 1 and "distance" not in record:
        path = None  # test split: the start only
    if not record["instructions"] or not all(isinstance(t, str) for t in record["instructions"]):
        raise ValueError("field 'instructions' must be a non-empty list of strings")
    distance = record.get("distance")
    if distance is not None and not isinstance(distance, (int, float)):
        raise ValueError("field 'distance' must be a number")
    return [
        R2REpisode(
            instr_id=f"{record['path_id']}_{k}",
            path_id=record["path_id"],
            scan=record["scan"],
            start=start,
            heading=float(record["heading"]),
            instruction=text,
            path=path,
            distance=None if distance is None else float(distance),
        )
        for k, text in enumerate(record["instructions"])
    ]


def load_r2r(path: str | Path) -> list[R2REpisode]:
    """Load an R2R JSON file as one :class:`R2REpisode` per instruction (bad records reported by index)."""
    return parse_records(path, "R2R", _parse)
