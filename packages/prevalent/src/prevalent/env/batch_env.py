"""A batched, simulator-free VLN environment with the panoramic action space of EnvDrop/PREVALENT.

Each episode sits at a viewpoint of a scan with a heading and an elevation. Its action space is the
list returned by :meth:`BatchNavEnv.candidates`: index 0 is STOP, index ``k ≥ 1`` moves to a navigable
neighbour. A neighbour is attached to the discretized view (of 36) in which it appears closest to the
image centre (smallest ``√(Δheading² + Δelevation²)``, as the simulator's navigable locations are
sorted); its candidate heading is that view's heading plus the neighbour's heading relative to the view
— i.e. the heading toward the neighbour — expressed relative to the agent's heading and wrapped to
``(−π, π]``; its candidate elevation is the (absolute) elevation toward it. Moving to a candidate turns
the camera to the candidate's view and walks there, so the new heading/elevation are that view's
(``VIEW_HEADINGS[view_index]``, ``VIEW_ELEVATIONS[view_index]``), as in the reference
``make_equiv_action``. Headings are snapped to the 30° grid at reset, like the simulator's
discretized mode.

Per viewpoint, neighbours' absolute directions and best views are computed once and cached; a step
only subtracts the agent's heading. Trajectories are kept in the R2R submission format
``{"instr_id": str, "trajectory": [[viewpoint, heading, elevation], …]}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from dgm_core.errors import UserError
from prevalent.env.angles import (
    ANGLE_FEATURE_SIZE,
    NUM_VIEWS,
    VIEW_ELEVATIONS,
    VIEW_HEADINGS,
    angle_feature,
    panorama_angle_features,
    view_index,
    wrap_angle,
)
from prevalent.env.features import FeatureStore
from prevalent.env.graph import NavGraph, NavGraphs

#: teacher action of an episode that has already stopped (``torch.nn.CrossEntropyLoss`` ignores it)
IGNORE_ACTION = -100
STOP_ACTION = 0


@dataclass(frozen=True)
class Candidate:
    """One entry of an episode's action space (index 0 is always STOP).

    Attributes:
        viewpoint: where the action leads (the current viewpoint for STOP).
        view_index: the discretized view (0–35) the neighbour is attached to; −1 for STOP.
        rel_heading: heading toward the neighbour minus the agent's heading, radians in ``(−π, π]``.
        rel_elevation: elevation toward the neighbour (absolute, radians), as the reference agents use.
        distance: 3-D Euclidean distance to the neighbour in metres (0 for STOP).
        angle_feature_size: length of :attr:`angle_feature`.
    """

    viewpoint: str
    view_index: int
    rel_heading: float
    rel_elevation: float
    distance: float
    angle_feature_size: int = ANGLE_FEATURE_SIZE

    @property
    def is_stop(self) -> bool:
        """True for the STOP action."""
        return self.view_index < 0

    @property
    def angle_feature(self) -> np.ndarray:
        """``angle_feature(rel_heading, rel_elevation)`` (zeros for STOP), computed on access.

        Not stored: action spaces are cached per (scan, viewpoint, heading step), and keeping
        128 floats per candidate would cost hundreds of MiB over a full R2R training run.
        """
        if self.is_stop:
            return np.zeros(self.angle_feature_size, np.float32)
        return angle_feature(self.rel_heading, self.rel_elevation, self.angle_feature_size)


@dataclass
class EpisodeState:
    """Where one episode is: scan, viewpoint, heading/elevation (radians), view index, trajectory."""

    instr_id: str
    scan: str
    viewpoint: str
    heading: float
    elevation: float
    ended: bool = False
    trajectory: list[list] = field(default_factory=list)

    @property
    def view_index(self) -> int:
        """The discretized view (0–35) the camera is at."""
        return view_index(self.heading, self.elevation)


@dataclass
class Observation:
    """Padded arrays for a batch, ready for ``torch.from_numpy``.

    Attributes:
        candidate_features: ``(B, K, D + A)`` — row 0 is STOP (all zeros, the model supplies its own
            STOP embedding), rows ``1..`` are ``view feature ⊕ angle feature`` of each candidate.
        candidate_mask: ``(B, K)`` bool, True for real entries (STOP included).
        candidate_angles: ``(B, K, 2)`` rel_heading, rel_elevation.
        panorama_features: ``(B, 36, D + A)`` the 36 views ⊕ their angle features relative to the
            agent's heading.
        num_candidates: ``(B,)`` entries per episode (STOP included).
        ended: ``(B,)`` bool.
    """

    candidate_features: np.ndarray
    candidate_mask: np.ndarray
    candidate_angles: np.ndarray
    panorama_features: np.ndarray
    num_candidates: np.ndarray
    ended: np.ndarray


@dataclass(frozen=True)
class _Neighbourhood:
    """Heading-independent geometry of a viewpoint's neighbours (cached per viewpoint)."""

    viewpoints: tuple[str, ...]
    headings: np.ndarray  # absolute heading toward each neighbour
    elevations: np.ndarray  # absolute elevation toward each neighbour
    distances: np.ndarray
    view_indices: np.ndarray


def neighbourhood(graph: NavGraph, viewpoint: str) -> _Neighbourhood:
    """Directions, distances and best views of a viewpoint's navigable neighbours (no caching)."""
    i = graph.row(viewpoint)
    rows = graph.neighbours[i]
    offsets = graph.positions[rows] - graph.positions[i] if rows else np.zeros((0, 3))
    headings = np.mod(np.arctan2(offsets[:, 0], offsets[:, 1]), 2 * np.pi)
    elevations = np.arctan2(offsets[:, 2], np.hypot(offsets[:, 0], offsets[:, 1]))
    distances = np.linalg.norm(offsets, axis=1)
    # closest view in angle: relative heading to each view wrapped, Euclidean in (Δh, Δe)
    d_heading = wrap_angle(headings[:, None] - VIEW_HEADINGS[None, :])
    d_elevation = elevations[:, None] - VIEW_ELEVATIONS[None, :]
    views = np.argmin(np.hypot(d_heading, d_elevation), axis=1) if rows else np.zeros(0, dtype=np.int64)
    # a stable order: by view, then by heading within the view
    order = np.lexsort((headings, views)) if rows else np.zeros(0, dtype=np.int64)
    return _Neighbourhood(
        viewpoints=tuple(graph.viewpoints[rows[k]] for k in order),
        headings=headings[order],
        elevations=elevations[order],
        distances=distances[order],
        view_indices=views[order].astype(np.int64),
    )


class BatchNavEnv:
    """Batched navigation over :class:`NavGraph` s with the panoramic action space (STOP = 0).

    Args:
        graphs: a :class:`NavGraphs` cache (or any ``scan → NavGraph`` mapping).
        features: a :class:`FeatureStore` for :meth:`observe`; optional if only geometry is used.
        angle_feature_size: length of the angle features (multiple of 4).
        max_cached_action_spaces: how many (scan, viewpoint, heading step) action spaces to keep
            (about 1 KiB each); the oldest quarter is dropped when full.

    Typical loop::

        env = BatchNavEnv(NavGraphs("connectivity"), FeatureStore.open("features"))
        env.reset(scans, starts, headings, instr_ids=ids)
        while not env.all_ended:
            obs = env.observe()                       # arrays for the agent
            actions = env.teacher_actions(goals)      # or the agent's argmax / samples
            env.step(actions)
        submission = env.trajectories()
    """

    def __init__(
        self,
        graphs: NavGraphs | Mapping[str, NavGraph],
        features: FeatureStore | None = None,
        angle_feature_size: int = ANGLE_FEATURE_SIZE,
        max_cached_action_spaces: int = 50_000,
    ) -> None:
        self.max_cached_action_spaces = max(4, max_cached_action_spaces)
        self.graphs = graphs
        self.features = features
        self.angle_feature_size = angle_feature_size
        self.episodes: list[EpisodeState] = []
        self._neighbourhoods: dict[tuple[str, str], _Neighbourhood] = {}
        # headings live on the 30° grid, so an action space depends on (scan, viewpoint, heading step)
        # only and is built once; Candidate is frozen, so sharing the lists is safe
        self._action_spaces: dict[tuple[str, str, int], list[Candidate]] = {}
        self._packed: dict[tuple[str, str, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._pano_angles: dict[int, np.ndarray] = {}
        self._candidates: list[list[Candidate]] | None = None

    # -- episodes -----------------------------------------------------------------------------------
    def reset(
        self,
        scans: Sequence[str],
        viewpoints: Sequence[str],
        headings: Sequence[float],
        elevations: Sequence[float] | None = None,
        instr_ids: Sequence[str] | None = None,
    ) -> list[EpisodeState]:
        """Start one episode per entry; headings/elevations are snapped to the 30° view grid."""
        n = len(scans)
        if not (len(viewpoints) == len(headings) == n):
            raise ValueError("scans, viewpoints and headings must have the same length")
        elevations = [0.0] * n if elevations is None else list(elevations)
        instr_ids = [str(k) for k in range(n)] if instr_ids is None else [str(x) for x in instr_ids]
        self.episodes = []
        for scan, vp, heading, elevation, iid in zip(scans, viewpoints, headings, elevations, instr_ids):
            graph = self.graph(scan)
            graph.row(vp)  # clear error for an unknown viewpoint
            ix = view_index(heading, elevation)
            h, e = float(VIEW_HEADINGS[ix]), float(VIEW_ELEVATIONS[ix])
            self.episodes.append(EpisodeState(iid, scan, vp, h, e, trajectory=[[vp, h, e]]))
        self._candidates = None
        return self.episodes

    def graph(self, scan: str) -> NavGraph:
        """The graph of ``scan`` (clear error when unknown)."""
        if isinstance(self.graphs, NavGraphs):
            return self.graphs[scan]
        try:
            return self.graphs[scan]
        except KeyError:
            raise UserError(f"unknown scan {scan!r}") from None

    @property
    def batch_size(self) -> int:
        return len(self.episodes)

    @property
    def all_ended(self) -> bool:
        """True once every episode has taken STOP."""
        return all(ep.ended for ep in self.episodes)

    # -- action space -------------------------------------------------------------------------------
    def _neighbourhood(self, scan: str, viewpoint: str) -> _Neighbourhood:
        key = (scan, viewpoint)
        hood = self._neighbourhoods.get(key)
        if hood is None:
            hood = self._neighbourhoods[key] = neighbourhood(self.graph(scan), viewpoint)
        return hood

    def _episode_candidates(self, ep: EpisodeState) -> list[Candidate]:
        key = (ep.scan, ep.viewpoint, ep.view_index % 12)
        cached = self._action_spaces.get(key)
        if cached is None:
            if len(self._action_spaces) >= self.max_cached_action_spaces:
                # drop the oldest entries (dicts keep insertion order): a bounded, FIFO cache
                for old in list(self._action_spaces)[: self.max_cached_action_spaces // 4]:
                    del self._action_spaces[old]
                    self._packed.pop(old, None)
            cached = self._action_spaces[key] = self._build_candidates(ep)
        return cached

    def _build_candidates(self, ep: EpisodeState) -> list[Candidate]:
        hood = self._neighbourhood(ep.scan, ep.viewpoint)
        rel_headings = wrap_angle(hood.headings - ep.heading)
        size = self.angle_feature_size
        stop = Candidate(ep.viewpoint, -1, 0.0, 0.0, 0.0, size)
        return [stop] + [
            Candidate(vp, int(v), float(h), float(e), float(d), size)
            for vp, v, h, e, d in zip(
                hood.viewpoints, hood.view_indices, rel_headings, hood.elevations, hood.distances
            )
        ]

    def candidates(self) -> list[list[Candidate]]:
        """Per episode, the action space: ``[STOP, neighbour candidates…]`` (see :class:`Candidate`).

        The lists are shared between episodes in the same place and must not be modified.
        """
        if self._candidates is None:
            self._candidates = [self._episode_candidates(ep) for ep in self.episodes]
        return self._candidates

    def step(self, actions: Sequence[int] | np.ndarray) -> list[EpisodeState]:
        """Apply one action per episode: 0 = STOP, k ≥ 1 = move to ``candidates()[b][k]``.

        Episodes that already stopped ignore their action (any value, e.g. :data:`IGNORE_ACTION`).
        """
        actions = np.asarray(actions).reshape(-1)
        if len(actions) != len(self.episodes):
            raise ValueError(f"got {len(actions)} actions for {len(self.episodes)} episodes")
        cands = self.candidates()
        # check every action before moving anyone, so a bad batch leaves the state untouched
        for b, (ep, action) in enumerate(zip(self.episodes, actions)):
            if not ep.ended and not 0 <= int(action) < len(cands[b]):
                raise ValueError(
                    f"episode {ep.instr_id}: action {int(action)} out of range (0..{len(cands[b]) - 1})"
                )
        for b, (ep, action) in enumerate(zip(self.episodes, actions)):
            if ep.ended:
                continue
            action = int(action)
            if action == STOP_ACTION:
                ep.ended = True
                continue
            cand = cands[b][action]
            ep.viewpoint = cand.viewpoint
            ep.heading = float(VIEW_HEADINGS[cand.view_index])
            ep.elevation = float(VIEW_ELEVATIONS[cand.view_index])
            ep.trajectory.append([ep.viewpoint, ep.heading, ep.elevation])
        self._candidates = None
        return self.episodes

    # -- supervision --------------------------------------------------------------------------------
    def nearest_goal(self, b: int, goal: str | Sequence[str]) -> str:
        """The goal (of one id or a goal region) nearest to episode ``b`` along the graph."""
        if isinstance(goal, str):
            return goal
        ep = self.episodes[b]
        graph = self.graph(ep.scan)
        return min(goal, key=lambda g: graph.distance(ep.viewpoint, g))

    def teacher_actions(self, goals: Sequence[str | Sequence[str] | None]) -> np.ndarray:
        """Shortest-path teacher: per episode the action index toward its goal (or nearest of a region).

        Returns int64 ``(B,)``: 0 (STOP) at the goal, :data:`IGNORE_ACTION` for stopped episodes
        and for episodes without a goal (``None``: a test split, where no teacher exists).
        """
        if len(goals) != len(self.episodes):
            raise ValueError(f"got {len(goals)} goals for {len(self.episodes)} episodes")
        cands = self.candidates()
        out = np.empty(len(self.episodes), dtype=np.int64)
        for b, ep in enumerate(self.episodes):
            if ep.ended or goals[b] is None:
                out[b] = IGNORE_ACTION
                continue
            goal = self.nearest_goal(b, goals[b])
            if goal == ep.viewpoint:
                out[b] = STOP_ACTION
                continue
            nxt = self.graph(ep.scan).next_step(ep.viewpoint, goal)
            out[b] = next(k for k, c in enumerate(cands[b]) if k > 0 and c.viewpoint == nxt)
        return out

    def distances_to(self, goals: Sequence[str | Sequence[str]]) -> np.ndarray:
        """Shortest-path distance (m) from each episode's viewpoint to its goal (nearest of a region)."""
        out = np.empty(len(self.episodes))
        for b, ep in enumerate(self.episodes):
            goal = self.nearest_goal(b, goals[b])
            out[b] = self.graph(ep.scan).distance(ep.viewpoint, goal)
        return out

    # -- observations -------------------------------------------------------------------------------
    def observe(self) -> Observation:
        """Padded candidate and panorama arrays for the batch (needs a feature store)."""
        if self.features is None:
            raise UserError("BatchNavEnv.observe needs a feature store (features=...)")
        cands = self.candidates()
        dim = self.features.feature_size
        width = dim + self.angle_feature_size
        batch = len(self.episodes)
        k_max = max(len(c) for c in cands)
        cand_feats = np.zeros((batch, k_max, width), np.float32)
        cand_mask = np.zeros((batch, k_max), bool)
        cand_angles = np.zeros((batch, k_max, 2), np.float32)
        pano = np.empty((batch, NUM_VIEWS, width), np.float32)
        for b, ep in enumerate(self.episodes):
            views = self.features[ep.scan, ep.viewpoint]
            step = ep.view_index % 12
            pano[b, :, :dim] = views
            pano[b, :, dim:] = self._panorama_angles(step)
            n = len(cands[b])
            cand_mask[b, :n] = True
            if n > 1:
                view_ix, angle_feats, angles = self._packed_candidates(ep.scan, ep.viewpoint, step, cands[b])
                cand_feats[b, 1:n, :dim] = views[view_ix]
                cand_feats[b, 1:n, dim:] = angle_feats
                cand_angles[b, 1:n] = angles
        return Observation(
            candidate_features=cand_feats,
            candidate_mask=cand_mask,
            candidate_angles=cand_angles,
            panorama_features=pano,
            num_candidates=np.array([len(c) for c in cands], dtype=np.int64),
            ended=np.array([ep.ended for ep in self.episodes]),
        )

    def _panorama_angles(self, heading_step: int) -> np.ndarray:
        cached = self._pano_angles.get(heading_step)
        if cached is None:
            cached = self._pano_angles[heading_step] = panorama_angle_features(
                float(VIEW_HEADINGS[heading_step]), self.angle_feature_size
            )
        return cached

    def _packed_candidates(self, scan: str, viewpoint: str, heading_step: int, cands: list[Candidate]):
        key = (scan, viewpoint, heading_step)
        packed = self._packed.get(key)
        if packed is None:
            angles = np.array([(c.rel_heading, c.rel_elevation) for c in cands[1:]], dtype=np.float64)
            packed = self._packed[key] = (
                np.array([c.view_index for c in cands[1:]], dtype=np.int64),
                angle_feature(angles[:, 0], angles[:, 1], self.angle_feature_size),
                angles.astype(np.float32),
            )
        return packed

    def trajectories(self) -> list[dict]:
        """The batch's paths in the R2R submission format (``instr_id``, ``trajectory``)."""
        return [
            {"instr_id": ep.instr_id, "trajectory": [list(t) for t in ep.trajectory]} for ep in self.episodes
        ]


def heading_toward(graph: NavGraph, a: str, b: str) -> float:
    """Absolute heading (radians, ``[0, 2π)``) from viewpoint ``a`` toward ``b``: ``atan2(dx, dy)``."""
    dx, dy, _ = graph.position(b) - graph.position(a)
    return math.atan2(dx, dy) % (2 * math.pi)
