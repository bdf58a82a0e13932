"""Navigation graphs of Matterport3D scans, read from the simulator's connectivity files.

A connectivity file ``<scan>_connectivity.json`` lists every panorama (viewpoint) of a scan::

    {"image_id": str, "pose": [16 floats, 4×4 row-major], "included": bool,
     "visible": [bool × N], "unobstructed": [bool × N], "height": float}

The camera position is the translation of the pose, ``(pose[3], pose[7], pose[11])`` (metres, z up).
Viewpoints ``i`` and ``j`` are joined iff both are ``included`` and ``unobstructed[i][j]``; an edge
weighs the 3-D Euclidean distance between the two cameras. All-pairs shortest distances and next hops
are computed once per scan (Floyd–Warshall, vectorised) so that a distance query afterwards is one
array lookup.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from dgm_core.errors import UserError

_REQUIRED_KEYS = ("image_id", "pose", "included", "unobstructed")


def connectivity_path(connectivity_dir: str | Path, scan: str) -> Path:
    """Where the simulator keeps a scan's graph: ``<connectivity_dir>/<scan>_connectivity.json``."""
    return Path(connectivity_dir) / f"{scan}_connectivity.json"


class NavGraph:
    """The navigable graph of one scan: viewpoints, camera positions, edges and shortest paths.

    Build it with :meth:`load` (a real connectivity file) or :meth:`from_edges` (hand-made graphs).
    Viewpoints are addressed by their id (the panorama's ``image_id``); ``index[vp]`` gives the row
    used by :attr:`positions` and :attr:`distances`.

    Attributes:
        scan: the scan id.
        viewpoints: included viewpoint ids, in file order.
        index: viewpoint id → row.
        positions: ``(N, 3)`` float64 camera positions (metres).
        heights: ``(N,)`` camera height above the floor (NaN where the file has none).
        neighbours: per row, the rows of the navigable neighbours (sorted).
        distances: ``(N, N)`` float64 shortest-path distances (``inf`` between disconnected parts).
    """

    def __init__(
        self,
        scan: str,
        viewpoints: Sequence[str],
        positions: np.ndarray,
        edges: Iterable[tuple[int, int]],
        heights: np.ndarray | None = None,
    ) -> None:
        self.scan = scan
        self.viewpoints = list(viewpoints)
        self.index = {vp: i for i, vp in enumerate(self.viewpoints)}
        if len(self.index) != len(self.viewpoints):
            raise UserError(f"scan {scan}: duplicate viewpoint ids in the graph")
        self.positions = np.asarray(positions, dtype=np.float64).reshape(len(self.viewpoints), 3)
        n = len(self.viewpoints)
        self.heights = np.full(n, np.nan) if heights is None else np.asarray(heights, dtype=np.float64)
        weights = np.full((n, n), np.inf)
        np.fill_diagonal(weights, 0.0)
        adjacency: list[set[int]] = [set() for _ in range(n)]
        for i, j in edges:
            if i == j:
                continue
            d = float(np.linalg.norm(self.positions[i] - self.positions[j]))
            weights[i, j] = weights[j, i] = d
            adjacency[i].add(j)
            adjacency[j].add(i)
        self.neighbours: list[list[int]] = [sorted(a) for a in adjacency]
        self.edge_weights = weights
        self.distances, self._next_hop = _floyd_warshall(weights)

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def load(cls, connectivity_dir: str | Path, scan: str) -> NavGraph:
        """Read ``<connectivity_dir>/<scan>_connectivity.json`` and validate it.

        Raises :class:`UserError` for a missing file, malformed JSON, a record without the required
        fields, ``visible``/``unobstructed`` rows of the wrong length (matrix not square) or an
        ``unobstructed`` matrix that is not symmetric between included viewpoints.
        """
        path = connectivity_path(connectivity_dir, scan)
        if not path.is_file():
            raise UserError(f"no connectivity file for scan {scan!r}: {path} does not exist")
        try:
            records = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: malformed JSON ({err})") from None
        return cls.from_records(scan, records, source=str(path))

    @classmethod
    def from_records(cls, scan: str, records: list, source: str = "<records>") -> NavGraph:
        """Build from the parsed list of connectivity records (see :meth:`load` for the checks)."""
        if not isinstance(records, list) or not records:
            raise UserError(f"{source}: expected a non-empty JSON list of viewpoint records")
        n = len(records)
        for k, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise UserError(f"{source}: record {k} is not an object")
            missing = [key for key in _REQUIRED_KEYS if key not in rec]
            if missing:
                raise UserError(f"{source}: record {k} lacks field(s) {', '.join(missing)}")
            if len(rec["pose"]) != 16:
                raise UserError(f"{source}: record {k} pose has {len(rec['pose'])} numbers, expected 16")
            for key in ("unobstructed", "visible"):
                if key in rec and len(rec[key]) != n:
                    raise UserError(
                        f"{source}: {key} matrix is not square: record {k} has {len(rec[key])} "
                        f"entries for {n} viewpoints"
                    )
        unobstructed = np.array([[bool(x) for x in rec["unobstructed"]] for rec in records])
        included = np.array([bool(rec["included"]) for rec in records])
        both = np.outer(included, included)
        asym = np.argwhere((unobstructed != unobstructed.T) & both)
        if len(asym):
            i, j = asym[0]
            raise UserError(
                f"{source}: unobstructed matrix is not symmetric ({len(asym) // 2 or 1} pair(s)), "
                f"e.g. {records[i]['image_id']} → {records[j]['image_id']} but not back"
            )
        keep = np.flatnonzero(included)
        row_of = {int(old): new for new, old in enumerate(keep)}
        poses = np.array([records[i]["pose"] for i in keep], dtype=np.float64)
        positions = poses[:, [3, 7, 11]]
        heights = np.array([float(records[i].get("height", np.nan)) for i in keep])
        pairs = np.argwhere(np.triu(unobstructed & both, k=1))
        edges = [(row_of[int(i)], row_of[int(j)]) for i, j in pairs]
        return cls(scan, [records[i]["image_id"] for i in keep], positions, edges, heights)

    @classmethod
    def from_edges(
        cls, scan: str, positions: dict[str, Sequence[float]], edges: Iterable[tuple[str, str]]
    ) -> NavGraph:
        """A hand-made graph: ``positions`` maps viewpoint id → (x, y, z); ``edges`` are id pairs."""
        viewpoints = list(positions)
        index = {vp: i for i, vp in enumerate(viewpoints)}
        pos = np.array([positions[vp] for vp in viewpoints], dtype=np.float64)
        return cls(scan, viewpoints, pos, [(index[a], index[b]) for a, b in edges])

    # -- queries ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.viewpoints)

    def __contains__(self, viewpoint: object) -> bool:
        return viewpoint in self.index

    def row(self, viewpoint: str) -> int:
        """The row of ``viewpoint``; a clear :class:`UserError` when the scan has no such viewpoint."""
        try:
            return self.index[viewpoint]
        except KeyError:
            raise UserError(f"viewpoint {viewpoint!r} is not in scan {self.scan}") from None

    def position(self, viewpoint: str) -> np.ndarray:
        """Camera position ``(x, y, z)`` of a viewpoint."""
        return self.positions[self.row(viewpoint)]

    def distance(self, a: str, b: str) -> float:
        """Shortest-path distance in metres (``inf`` when disconnected); O(1)."""
        return float(self.distances[self.row(a), self.row(b)])

    def is_adjacent(self, a: str, b: str) -> bool:
        """Whether ``a`` and ``b`` are joined by an edge."""
        return bool(np.isfinite(self.edge_weights[self.row(a), self.row(b)])) and a != b

    def neighbour_ids(self, viewpoint: str) -> list[str]:
        """Ids of the navigable neighbours of ``viewpoint``."""
        return [self.viewpoints[j] for j in self.neighbours[self.row(viewpoint)]]

    def next_step(self, a: str, goal: str) -> str:
        """The viewpoint after ``a`` on a shortest path to ``goal`` (``a`` itself when ``a == goal``)."""
        i, g = self.row(a), self.row(goal)
        hop = int(self._next_hop[i, g])
        if hop < 0:
            raise UserError(f"scan {self.scan}: {goal} is unreachable from {a}")
        return self.viewpoints[hop]

    def shortest_path(self, a: str, b: str) -> list[str]:
        """Viewpoints of a shortest path from ``a`` to ``b``, both ends included."""
        path = [a]
        while path[-1] != b:
            path.append(self.next_step(path[-1], b))
        return path

    def path_length(self, path: Sequence[str]) -> float:
        """Length of a path along the graph (sum of shortest distances between consecutive ids)."""
        rows = [self.row(vp) for vp in path]
        return float(sum(self.distances[rows[k], rows[k + 1]] for k in range(len(rows) - 1)))

    def relative_direction(self, a: str, b: str, heading: float = 0.0, elevation: float = 0.0):
        """``(rel_heading, rel_elevation, distance)`` of ``b`` seen from ``a``'s camera, simulator-style.

        ``rel_heading = wrap(atan2(dx, dy) − heading)`` in ``(−π, π]`` and
        ``rel_elevation = atan2(dz, |(dx, dy)|) − elevation``; distance is 3-D Euclidean.
        """
        from prevalent.env.angles import wrap_angle

        dx, dy, dz = self.position(b) - self.position(a)
        rel_heading = wrap_angle(math.atan2(dx, dy) - heading)
        rel_elevation = math.atan2(dz, math.hypot(dx, dy)) - elevation
        return rel_heading, rel_elevation, math.sqrt(dx * dx + dy * dy + dz * dz)

    def memory_bytes(self) -> int:
        """Bytes held by the cached arrays (distance, next-hop and edge matrices, positions)."""
        return int(
            self.distances.nbytes + self._next_hop.nbytes + self.edge_weights.nbytes + self.positions.nbytes
        )

    def __repr__(self) -> str:
        n_edges = sum(len(a) for a in self.neighbours) // 2
        return f"NavGraph(scan={self.scan!r}, viewpoints={len(self)}, edges={n_edges})"


def _floyd_warshall(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All-pairs shortest distances and next hops (−1 = unreachable), vectorised over rows."""
    n = len(weights)
    dist = weights.copy()
    next_hop = np.where(np.isfinite(weights), np.arange(n)[None, :], -1).astype(np.int32)
    for k in range(n):
        through_k = dist[:, k : k + 1] + dist[k : k + 1, :]
        shorter = through_k < dist - 1e-12
        if shorter.any():
            dist = np.where(shorter, through_k, dist)
            next_hop = np.where(shorter, next_hop[:, k : k + 1], next_hop)
    return dist, next_hop


class NavGraphs:
    """A lazy per-scan cache of :class:`NavGraph` read from one connectivity folder.

    ``graphs[scan]`` loads (once) and returns the scan's graph. Graphs built elsewhere (e.g. hand-made
    in tests) can be added with :meth:`add`.
    """

    def __init__(self, connectivity_dir: str | Path | None = None) -> None:
        self.connectivity_dir = None if connectivity_dir is None else Path(connectivity_dir)
        if self.connectivity_dir is not None and not self.connectivity_dir.is_dir():
            raise UserError(f"connectivity folder {self.connectivity_dir} does not exist")
        self._graphs: dict[str, NavGraph] = {}

    def add(self, graph: NavGraph) -> None:
        """Register an already-built graph under its scan id."""
        self._graphs[graph.scan] = graph

    def __getitem__(self, scan: str) -> NavGraph:
        graph = self._graphs.get(scan)
        if graph is None:
            if self.connectivity_dir is None:
                raise UserError(f"unknown scan {scan!r} (no connectivity folder given)")
            graph = self._graphs[scan] = NavGraph.load(self.connectivity_dir, scan)
        return graph

    def __contains__(self, scan: object) -> bool:
        if scan in self._graphs:
            return True
        return (
            self.connectivity_dir is not None
            and connectivity_path(self.connectivity_dir, str(scan)).is_file()
        )

    def available_scans(self) -> list[str]:
        """Scan ids with a connectivity file in the folder (plus added graphs), sorted."""
        scans = set(self._graphs)
        if self.connectivity_dir is not None:
            suffix = "_connectivity.json"
            scans.update(p.name[: -len(suffix)] for p in self.connectivity_dir.glob(f"*{suffix}"))
        return sorted(scans)
