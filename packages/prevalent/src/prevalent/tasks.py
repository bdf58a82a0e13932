"""The task registry: ``r2r``, ``cvdn`` and ``hanna`` — one :class:`Task` each, used by every command.

A task says where its files lie in a data folder and how to read them, what an episode asks of the
agent (:class:`NavEpisode`: the text, the start, the goal the shortest-path teacher walks to and the
region success is measured against), how many steps it may take, whether it may ask for help, and
how a walked path is judged:

* ``r2r`` — R2R instructions; the teacher walks to the end of the path; success NE < 3 m;
  TL, NE, SR, OSR, SPL, nDTW, SDTW, CLS.
* ``cvdn`` — NDH instances (text per ``history`` mode, supervision per ``path_type``); the teacher
  walks to the end of the supervision path; success within 3 m of an end panorama; goal progress
  and TL, NE, SR, OSR, SPL toward the end panoramas.
* ``hanna`` — find-object requests with recorded help; the teacher walks to the nearest goal
  viewpoint; success within 2 m of a goal; TL, NE, SR, OSR, SPL toward the nearest goal.

``prevalent-eval`` scores a task file with :meth:`Task.evaluate`; ``prevalent-pretrain`` and
``prevalent-finetune`` read a split as :class:`NavEpisode` with :meth:`Task.load`, and learn their
vocabulary from all tasks' training language (:func:`training_texts`). Test splits (no path, no
goal) are read with ``Task.load(..., unsupervised=True)`` and written as leaderboard submissions
with :meth:`Task.submission`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dgm_core.errors import UserError
from prevalent.data.hanna import HannaEpisode, HelpResponse, load_hanna
from prevalent.data.ndh import NDHEpisode, load_ndh
from prevalent.data.r2r import R2REpisode, load_r2r
from prevalent.env.graph import NavGraph, NavGraphs
from prevalent.metrics import (
    SUCCESS_RADIUS,
    EvalReport,
    collapse,
    goal_progress,
    path_metrics,
    region_metrics,
    score_submission,
)


@dataclass
class NavEpisode:
    """One episode as the agent sees it, whatever the task.

    ``teacher_goal`` is what the shortest-path teacher walks to (a viewpoint, or a region of which
    the nearest counts), ``None`` in a test split, where only the agent walks; ``goals`` is the
    region success and progress are measured against (empty in a test split); ``source`` is the
    record it was read from (what :meth:`Task.evaluate` and the maps take).
    """

    instr_id: str
    scan: str
    start: str
    heading: float
    instruction: str
    teacher_goal: str | tuple[str, ...] | None
    goals: tuple[str, ...]
    path: list[str] | None
    source: Any = None
    help: list[HelpResponse] = field(default_factory=list)

    @property
    def supervised(self) -> bool:
        """Whether a teacher can supervise (and metrics judge) this episode: it has a goal."""
        return self.teacher_goal is not None


@dataclass(frozen=True)
class TaskOptions:
    """How to read a task's records: the CVDN dialog history mode and supervision path."""

    history: str = "all"
    path_type: str = "trusted"


@dataclass(frozen=True)
class Task:
    """A navigation task: how to read its records, what the agent is asked, how it is judged."""

    name: str
    description: str
    #: the dataset's name in messages (R2R, NDH, HANNA)
    dataset: str
    #: where a split lies in a data folder (``{split}`` filled in); prevalent-make-data writes the first
    split_files: tuple[str, ...]
    #: one task file -> its records (R2REpisode, NDHEpisode or HannaEpisode)
    read: Callable[[Path, TaskOptions], list]
    #: a record as the agent sees it (without a teacher goal when it has no path, e.g. a test split)
    episode: Callable[[Any], NavEpisode]
    #: this task's metrics of a walked path: ``(graph, viewpoints, record, success_radius)``
    metrics: Callable[[NavGraph, list[str], Any, float], dict[str, float]]
    #: a final position within this graph distance (m) of the goal counts as a success
    success_radius: float
    #: steps an agent may take before it is stopped where it stands
    max_steps: int
    allows_help: bool = False
    #: which end of a text longer than the encoder's limit is cut (see ``InstructionTokenizer.token_ids``)
    truncation_side: str = "right"
    #: a second id key the task's official evaluator reads from a submission entry, as an int
    submission_id_key: str | None = None

    def split_file(self, data_dir: Path, split: str) -> Path:
        """The file of ``split`` in ``data_dir`` (a clear error naming where it looked)."""
        candidates = [name.format(split=split) for name in self.split_files]
        for name in candidates:
            if (data_dir / name).is_file():
                return data_dir / name
        raise UserError(
            f"{self.dataset} split {split!r} not found in {data_dir} (looked for {', '.join(candidates)})"
        )

    def load(
        self, data_dir: Path, split: str, options: TaskOptions, unsupervised: bool = False
    ) -> list[NavEpisode]:
        """The episodes of ``split`` an agent can be trained or evaluated on (those with a goal).

        With ``unsupervised`` every episode, goal or not: what an agent is run on to predict a
        test split.
        """
        records = self.read(self.split_file(Path(data_dir), split), options)
        episodes = [self.episode(record) for record in records]
        return episodes if unsupervised else [e for e in episodes if e.supervised]

    def submission(self, trajectories: Sequence[dict]) -> list[dict]:
        """Trajectories ``{"instr_id", "trajectory"}`` as this task's leaderboard file.

        The R2R format, ``[{"instr_id": str, "trajectory": [[viewpoint, heading, elevation], …]}]``;
        CVDN's evaluator reads the id from ``inst_idx`` (an int), so its entries carry both keys.
        """
        entries = []
        for item in trajectories:
            entry = {"instr_id": str(item["instr_id"]), "trajectory": item["trajectory"]}
            if self.submission_id_key:
                entry[self.submission_id_key] = int(item["instr_id"])
            entries.append(entry)
        return entries

    def score_path(self, graph: NavGraph, path: list[str], record: Any) -> dict[str, float]:
        """This task's metrics of one walked path, success within :attr:`success_radius`."""
        return self.metrics(graph, path, record, self.success_radius)

    def evaluate(self, records: Sequence, graphs: NavGraphs, predictions: dict[str, list]) -> EvalReport:
        """Score ``{instr_id: trajectory}`` against the task's ``records`` (missing ones fail)."""
        return score_submission(self.name, records, graphs, predictions, self.score_path)


# ------------------------------------------------------------------------------------------------ r2r
def _r2r_episode(record: R2REpisode) -> NavEpisode:
    return NavEpisode(
        record.instr_id,
        record.scan,
        record.start,
        record.heading,
        record.instruction,
        record.goal,
        () if record.goal is None else (record.goal,),
        record.path,
        record,
    )


def _r2r_metrics(graph: NavGraph, path: list[str], record: R2REpisode, success_radius: float) -> dict:
    if record.path is None:
        raise UserError(f"episode {record.instr_id} has no reference path (a test split cannot be scored)")
    return path_metrics(graph, path, record.path, success_radius)


# ----------------------------------------------------------------------------------------------- cvdn
def _cvdn_episode(record: NDHEpisode) -> NavEpisode:
    # Supervision needs both the path the teacher walks and the region progress is measured to.
    supervised = record.path is not None and bool(record.end_panos)
    return NavEpisode(
        record.instr_id,
        record.scan,
        record.start,
        record.heading,
        record.instruction,
        record.path[-1] if supervised else None,
        tuple(record.end_panos) if supervised else (),
        record.path,
        record,
    )


def _cvdn_metrics(graph: NavGraph, path: list[str], record: NDHEpisode, success_radius: float) -> dict:
    if not record.end_panos:
        raise UserError(f"episode {record.instr_id} has no end_panos (a test split cannot be scored)")
    progress = goal_progress(graph, collapse(path), record.end_panos)
    return {"goal_progress": progress, **region_metrics(graph, path, record.end_panos, success_radius)}


# ---------------------------------------------------------------------------------------------- hanna
def _hanna_episode(record: HannaEpisode) -> NavEpisode:
    goals = tuple(record.goal_viewpoints)
    return NavEpisode(
        record.instr_id,
        record.scan,
        record.start,
        record.heading,
        record.instruction,
        goals,
        goals,
        record.path,
        record,
        list(record.help),
    )


def _hanna_metrics(graph: NavGraph, path: list[str], record: HannaEpisode, success_radius: float) -> dict:
    return region_metrics(graph, path, record.goal_viewpoints, success_radius)


# ------------------------------------------------------------------------------------------- registry
TASKS: dict[str, Task] = {
    "r2r": Task(
        "r2r",
        "Room-to-Room instruction following (in-domain)",
        dataset="R2R",
        split_files=("R2R/R2R_{split}.json", "R2R_{split}.json"),
        read=lambda path, options: load_r2r(path),
        episode=_r2r_episode,
        metrics=_r2r_metrics,
        success_radius=SUCCESS_RADIUS,
        max_steps=15,
    ),
    "cvdn": Task(
        "cvdn",
        "navigation from dialog history (NDH; out-of-domain)",
        dataset="NDH",
        split_files=("NDH/{split}.json", "NDH_{split}.json"),
        read=lambda path, options: load_ndh(path, history=options.history, path_type=options.path_type),
        episode=_cvdn_episode,
        metrics=_cvdn_metrics,
        success_radius=SUCCESS_RADIUS,
        max_steps=20,
        # As the NDH tokenizer (CVDN's and PREVALENT's): a long history loses its oldest words,
        # keeping the latest exchanges and the target, which come last.
        truncation_side="left",
        submission_id_key="inst_idx",
    ),
    "hanna": Task(
        "hanna",
        "find an object, asking for help (out-of-domain)",
        dataset="HANNA",
        split_files=("HANNA/{split}.json", "HANNA_{split}.json"),
        read=lambda path, options: load_hanna(path),
        episode=_hanna_episode,
        metrics=_hanna_metrics,
        success_radius=2.0,  # HANNA counts an object found from within 2 m
        max_steps=20,
        allows_help=True,
    ),
}


def get_task(name: str) -> Task:
    """The registered task ``name`` (a clear error listing the valid ones otherwise)."""
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[name]


# ------------------------------------------------------------------------------------------- language
def training_texts(data_dir: Path) -> list[str]:
    """All training-split language of the tasks in ``data_dir``: what a WordPiece vocabulary is learnt on."""
    texts: list[str] = []
    options = TaskOptions(history="all")
    for task in TASKS.values():
        try:
            episodes = task.load(data_dir, "train", options)
        except UserError:
            continue  # a real-data folder may hold only some of the tasks
        texts += [e.instruction for e in episodes]
        texts += [h.instruction for e in episodes for h in e.help]
    if not texts:
        raise UserError(f"no training instructions found in {data_dir} (R2R/, NDH/ or HANNA/ train splits)")
    return texts


def fixed_sample(items: Sequence[Any], count: int, seed: int) -> list[Any]:
    """``count`` of ``items`` drawn at random (fixed by ``seed``), in their original order; all of
    them when ``count`` is at least their number.

    Held-out sets use it: a sample of a whole split covers every house and every part of a path in
    their true proportions (not only the first items of a file), and the same ``seed`` gives every
    run the same sample.
    """
    if count >= len(items):
        return list(items)
    chosen = sorted(random.Random(seed).sample(range(len(items)), count))
    return [items[i] for i in chosen]
