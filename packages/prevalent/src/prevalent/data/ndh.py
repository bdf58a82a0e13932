"""Navigation from Dialog History (NDH, the CVDN task) episodes.

NDH JSON is a list of instances::

    {"inst_idx": int, "scan": str, "target": str,
     "start_pano": {"heading": radians, "elevation": DEGREES, "pano": viewpoint},
     "dialog_history": [{"nav_idx": int, "role": "navigator"|"oracle", "message": str}, …],
     "nav_history": [viewpoint, …], "nav_camera": [...],
     # training/validation only:
     "game_idx": int, "end_panos": [viewpoint, …], "planner_path": [...], "player_path": [...], …}

(``start_pano.elevation`` is stored in degrees; the reference environment starts episodes level, and
so does :class:`~prevalent.env.BatchNavEnv` with ``elevation=0``.)

The language input depends on the history mode, as in the CVDN baselines (``<NAV>``/``<ORA>``/``<TAR>``
mark navigator questions, oracle answers and the target; with no dialog yet, every mode but ``none``
falls back to the target):

* ``none`` — empty text;
* ``target`` — ``<TAR> target``;
* ``oracle_ans`` — the last oracle answer and the target;
* ``nav_q_oracle_ans`` — the last navigator question, its answer and the target;
* ``all`` — every turn in order, then the target.

The target comes last, so a text longer than the encoder's limit is cut from its start (the ``cvdn``
task's ``truncation_side``), as the NDH tokenizers of CVDN and PREVALENT cut an encoding's left-hand
side: the oldest turns go, the latest exchanges and the target stay.

Supervision paths: ``planner`` (shortest-path steps shown to the oracle), ``player`` (what the
navigator walked) or ``trusted`` (the player's path when it passes through the planner's goal after
its start, else the planner's). Evaluation measures progress toward ``end_panos``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prevalent.data.records import check, check_path, parse_records

HISTORY_MODES = ("none", "target", "oracle_ans", "nav_q_oracle_ans", "all")
PATH_TYPES = ("planner", "player", "trusted")
NAV_TOKEN, ORACLE_TOKEN, TARGET_TOKEN = "<NAV>", "<ORA>", "<TAR>"


@dataclass
class DialogTurn:
    """One utterance: who said it (``navigator``/``oracle``), when (``nav_idx``) and what."""

    role: str
    message: str
    nav_idx: int = 0


@dataclass
class NDHEpisode:
    """One NDH instance; ``instruction`` is the text for the chosen history mode.

    ``path`` is the supervision path of the chosen type (``None`` without training fields);
    ``end_panos`` is the goal region used by goal progress.
    """

    instr_id: str
    inst_idx: int
    scan: str
    target: str
    start: str
    heading: float
    instruction: str
    dialog_history: list[DialogTurn] = field(default_factory=list)
    nav_history: list[str] = field(default_factory=list)
    end_panos: list[str] | None = None
    planner_path: list[str] | None = None
    player_path: list[str] | None = None
    path: list[str] | None = None
    game_idx: int | None = None
    start_elevation_degrees: float = 0.0

    @property
    def goal(self) -> str | None:
        """The end of the supervision path (``None`` without one)."""
        return None if self.path is None else self.path[-1]


def dialog_text(target: str, turns: list[DialogTurn], history: str) -> str:
    """The language input of one instance in history mode ``history`` (see the module docstring)."""
    if history not in HISTORY_MODES:
        raise ValueError(f"unknown history mode {history!r}; choose one of {', '.join(HISTORY_MODES)}")
    if history == "none":
        return ""
    target_part = f"{TARGET_TOKEN} {target}"
    if history == "target" or not turns:
        return target_part
    if history == "oracle_ans":
        return f"{ORACLE_TOKEN} {turns[-1].message} {target_part}"
    if history == "nav_q_oracle_ans":
        question = turns[-2].message if len(turns) >= 2 else ""
        return f"{NAV_TOKEN} {question} {ORACLE_TOKEN} {turns[-1].message} {target_part}"
    parts = [f"{NAV_TOKEN if t.role == 'navigator' else ORACLE_TOKEN} {t.message}" for t in turns]
    return " ".join([*parts, target_part])


def trusted_path(planner_path: list[str], player_path: list[str]) -> list[str]:
    """The player's path if it walks through the planner's goal after its start, else the planner's."""
    return list(player_path) if planner_path[-1] in player_path[1:] else list(planner_path)


def _parser(history: str, path_type: str):
    if history not in HISTORY_MODES:
        raise ValueError(f"unknown history mode {history!r}; choose one of {', '.join(HISTORY_MODES)}")
    if path_type not in PATH_TYPES:
        raise ValueError(f"unknown path type {path_type!r}; choose one of {', '.join(PATH_TYPES)}")

    def parse(index: int, record: dict) -> list[NDHEpisode]:
        check(
            record, {"inst_idx": int, "scan": str, "target": str, "start_pano": dict, "dialog_history": list}
        )
        start = record["start_pano"]
        check(start, {"pano": str, "heading": (int, float)})
        turns = []
        for k, turn in enumerate(record["dialog_history"]):
            if not isinstance(turn, dict) or turn.get("role") not in ("navigator", "oracle"):
                raise ValueError(f"dialog turn {k} needs role 'navigator' or 'oracle'")
            if not isinstance(turn.get("message"), str):
                raise ValueError(f"dialog turn {k} needs a string 'message'")
            turns.append(DialogTurn(turn["role"], turn["message"], int(turn.get("nav_idx", 0))))
        optional = {}
        for name in ("end_panos", "planner_path", "player_path"):
            optional[name] = check_path(record[name], name) if name in record else None
        nav_history = record.get("nav_history", [])
        if not isinstance(nav_history, list):
            raise ValueError("field 'nav_history' must be a list")
        planner, player = optional["planner_path"], optional["player_path"]
        if path_type == "planner":
            path = planner
        elif path_type == "player":
            path = player
        else:
            path = trusted_path(planner, player) if planner and player else planner
        return [
            NDHEpisode(
                instr_id=str(record["inst_idx"]),
                inst_idx=record["inst_idx"],
                scan=record["scan"],
                target=record["target"],
                start=start["pano"],
                heading=float(start["heading"]),
                instruction=dialog_text(record["target"], turns, history),
                dialog_history=turns,
                nav_history=list(nav_history),
                end_panos=optional["end_panos"],
                planner_path=planner,
                player_path=player,
                path=path,
                game_idx=record.get("game_idx"),
                start_elevation_degrees=float(start.get("elevation", 0.0)),
            )
        ]

    return parse


def load_ndh(path: str | Path, history: str = "all", path_type: str = "planner") -> list[NDHEpisode]:
    """Load an NDH/CVDN JSON file (bad records reported by index).

    Args:
        history: the dialog history mode, one of :data:`HISTORY_MODES`.
        path_type: supervision path, one of :data:`PATH_TYPES`.
    """
    return parse_records(path, "NDH", _parser(history, path_type))
