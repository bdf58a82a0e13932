"""HANNA-style find-object episodes with help responses as sub-instructions.

HANNA (Nguyen & Daumé III, EMNLP 2019) asks an agent to find an object given a high-level request and
lets it ask for help, answered by a route description of the next steps. This package uses a JSON
list of records of this shape::

    {"instr_id": str, "scan": str, "start": viewpoint, "heading": radians,
     "target": "mug", "instruction": "find a mug in the kitchen",
     "goal_viewpoints": [viewpoint, …],         # any of them counts (success within 2 m)
     "path": [viewpoint, …],                     # a shortest path to the nearest goal (optional)
     "help": [{"viewpoint": v, "instruction": "walk out of the bedroom …", "path": [v, …]}, …]}

Each help response is what the assistant would say when asked at ``viewpoint``: a sub-instruction
for the next segment ``path`` of the route.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prevalent.data.records import check, check_path, parse_records


@dataclass
class HelpResponse:
    """A sub-instruction given when help is requested at ``viewpoint``, covering ``path``."""

    viewpoint: str
    instruction: str
    path: list[str]


@dataclass
class HannaEpisode:
    """One find-object episode (see the module docstring for the JSON fields)."""

    instr_id: str
    scan: str
    start: str
    heading: float
    target: str
    instruction: str
    goal_viewpoints: list[str]
    path: list[str] | None = None
    help: list[HelpResponse] = field(default_factory=list)

    def help_at(self, viewpoint: str) -> HelpResponse | None:
        """The help response given at ``viewpoint`` (``None`` where none was recorded)."""
        return next((h for h in self.help if h.viewpoint == viewpoint), None)


def _parse(index: int, record: dict) -> list[HannaEpisode]:
    check(
        record,
        {
            "instr_id": (str, int),
            "scan": str,
            "start": str,
            "heading": (int, float),
            "target": str,
            "instruction": str,
            "goal_viewpoints": list,
        },
    )
    goals = check_path(record["goal_viewpoints"], "goal_viewpoints")
    path = check_path(record["path"], "path") if "path" in record else None
    if path is not None and path[0] != record["start"]:
        raise ValueError("field 'path' must begin at 'start'")
    responses = []
    for k, item in enumerate(record.get("help", [])):
        if not isinstance(item, dict) or not isinstance(item.get("instruction"), str):
            raise ValueError(f"help response {k} needs a string 'instruction'")
        if not isinstance(item.get("viewpoint"), str):
            raise ValueError(f"help response {k} needs a 'viewpoint'")
        responses.append(
            HelpResponse(
                item["viewpoint"], item["instruction"], check_path(item.get("path"), f"help[{k}].path")
            )
        )
    return [
        HannaEpisode(
            instr_id=str(record["instr_id"]),
            scan=record["scan"],
            start=record["start"],
            heading=float(record["heading"]),
            target=record["target"],
            instruction=record["instruction"],
            goal_viewpoints=goals,
            path=path,
            help=responses,
        )
    ]


def load_hanna(path: str | Path) -> list[HannaEpisode]:
    """Load a HANNA-style JSON file (bad records reported by index)."""
    return parse_records(path, "HANNA", _parse)
