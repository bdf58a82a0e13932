"""Houses: a grid of typed rooms joined by doors, their objects, and a connected viewpoint graph.

A house is a grid of rectangular rooms (3.5–6 m a side) of distinct types, joined by doors along a
random spanning tree of the grid plus a few extra doors. Each room holds type-specific objects at
floor, mid or high level. Viewpoints form a jittered grid ~2 m apart inside each room plus one in
every doorway; viewpoints of a room closer than 3 m are joined, and each doorway joins the nearest
viewpoints on both sides, so edges are 1–3 m long as in Matterport3D. Cameras are 1.5 m above a
flat floor. :func:`connectivity_records` writes the graph in the Matterport3DSimulator format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from prevalent.env.graph import NavGraph

CAMERA_HEIGHT = 1.5

ROOM_OBJECTS: dict[str, list[tuple[str, str]]] = {
    # room type: [(object, level)] with level floor | mid | high
    "bedroom": [("bed", "mid"), ("dresser", "mid"), ("wardrobe", "mid"), ("lamp", "high"), ("rug", "floor")],
    "bathroom": [("toilet", "floor"), ("bathtub", "floor"), ("mirror", "high"), ("towel rack", "mid")],
    "kitchen": [("fridge", "mid"), ("stove", "mid"), ("sink", "mid"), ("microwave", "high")],
    "living room": [("sofa", "mid"), ("television", "mid"), ("fireplace", "mid"), ("armchair", "mid")],
    "dining room": [("dining table", "mid"), ("chandelier", "high"), ("cabinet", "mid"), ("vase", "mid")],
    "office": [("desk", "mid"), ("computer", "mid"), ("bookshelf", "mid"), ("office chair", "floor")],
    "hallway": [("painting", "high"), ("plant", "floor"), ("coat rack", "mid"), ("bench", "floor")],
    "laundry room": [
        ("washing machine", "mid"),
        ("dryer", "mid"),
        ("ironing board", "mid"),
        ("basket", "floor"),
    ],
    "family room": [("piano", "mid"), ("couch", "mid"), ("clock", "high"), ("bean bag", "floor")],
}
ROOM_TYPES = list(ROOM_OBJECTS)
OBJECT_NAMES = sorted({name for objs in ROOM_OBJECTS.values() for name, _ in objs})
_LEVEL_HEIGHT = {"floor": 0.2, "mid": 0.9, "high": 2.2}


@dataclass
class Room:
    """A rectangular room ``[x0, x1] × [y0, y1]`` of a type, with objects ``(name, x, y, z)``."""

    index: int
    room_type: str
    x0: float
    y0: float
    x1: float
    y1: float
    objects: list[tuple[str, float, float, float]] = field(default_factory=list)

    def contains(self, x: float, y: float) -> bool:
        return self.x0 <= x <= self.x1 and self.y0 <= y <= self.y1


@dataclass
class House:
    """A generated house: rooms, doors ``(room_a, room_b, x, y)``, viewpoints and their rooms."""

    scan: str
    rooms: list[Room]
    doors: list[tuple[int, int, float, float]]
    viewpoints: list[str]
    positions: np.ndarray
    viewpoint_rooms: list[int]
    doorway: list[bool]
    edges: list[tuple[int, int]]
    appearance: np.ndarray | None = None

    def graph(self) -> NavGraph:
        return NavGraph(self.scan, self.viewpoints, self.positions, self.edges)

    def room_of(self, viewpoint: str) -> Room:
        return self.rooms[self.viewpoint_rooms[self.viewpoints.index(viewpoint)]]


def _hex_id(rng: np.random.Generator) -> str:
    return rng.bytes(16).hex()


def generate_house(scan: str, rng: np.random.Generator, rows: int = 2, cols: int = 3) -> House:
    """One house: a ``rows × cols`` grid of rooms, doors, objects and a connected viewpoint graph."""
    widths = rng.uniform(3.5, 6.0, size=cols)
    heights = rng.uniform(3.5, 6.0, size=rows)
    xs = np.concatenate([[0.0], np.cumsum(widths)])
    ys = np.concatenate([[0.0], np.cumsum(heights)])
    n_rooms = rows * cols
    types = list(rng.permutation(ROOM_TYPES))[:n_rooms]
    while len(types) < n_rooms:
        types.append(ROOM_TYPES[int(rng.integers(len(ROOM_TYPES)))])
    rooms = []
    for r in range(rows):
        for c in range(cols):
            k = r * cols + c
            room = Room(k, str(types[k]), float(xs[c]), float(ys[r]), float(xs[c + 1]), float(ys[r + 1]))
            catalogue = ROOM_OBJECTS[room.room_type]
            n_objects = int(rng.integers(2, len(catalogue) + 1))
            for o in rng.choice(len(catalogue), size=n_objects, replace=False):
                name, level = catalogue[int(o)]
                x = float(rng.uniform(room.x0 + 0.4, room.x1 - 0.4))
                y = float(rng.uniform(room.y0 + 0.4, room.y1 - 0.4))
                room.objects.append((name, x, y, _LEVEL_HEIGHT[level]))
            rooms.append(room)

    # doors: a random spanning tree of the room grid plus ~1 extra door per 4 rooms
    walls = [(r * cols + c, r * cols + c + 1) for r in range(rows) for c in range(cols - 1)]
    walls += [(r * cols + c, (r + 1) * cols + c) for r in range(rows - 1) for c in range(cols)]
    order = rng.permutation(len(walls))
    parent = list(range(n_rooms))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    door_walls, spare = [], []
    for w in order:
        a, b = walls[int(w)]
        if find(a) != find(b):
            parent[find(a)] = find(b)
            door_walls.append((a, b))
        else:
            spare.append((a, b))
    door_walls += spare[: n_rooms // 4]
    doors = []
    for a, b in door_walls:
        ra, rb = rooms[a], rooms[b]
        if b == a + 1:  # shared vertical wall x = ra.x1
            y = float(rng.uniform(max(ra.y0, rb.y0) + 0.8, min(ra.y1, rb.y1) - 0.8))
            doors.append((a, b, ra.x1, y))
        else:  # shared horizontal wall y = ra.y1
            x = float(rng.uniform(max(ra.x0, rb.x0) + 0.8, min(ra.x1, rb.x1) - 0.8))
            doors.append((a, b, x, ra.y1))

    # viewpoints: jittered grid ~2 m apart inside each room, one per doorway
    positions, vp_rooms, doorway = [], [], []
    for room in rooms:
        nx = max(1, round((room.x1 - room.x0) / 2.0))
        ny = max(1, round((room.y1 - room.y0) / 2.0))
        for i in range(nx):
            for j in range(ny):
                x = room.x0 + (i + 0.5) * (room.x1 - room.x0) / nx + rng.uniform(-0.25, 0.25)
                y = room.y0 + (j + 0.5) * (room.y1 - room.y0) / ny + rng.uniform(-0.25, 0.25)
                positions.append((x, y, CAMERA_HEIGHT))
                vp_rooms.append(room.index)
                doorway.append(False)
    for a, _b, x, y in doors:
        positions.append((x, y, CAMERA_HEIGHT))
        vp_rooms.append(a)
        doorway.append(True)
    pos = np.array(positions)
    edges = set()
    in_room = [[k for k, r in enumerate(vp_rooms) if r == room.index and not doorway[k]] for room in rooms]
    for members in in_room:
        for p, i in enumerate(members):
            for j in members[p + 1 :]:
                if np.linalg.norm(pos[i] - pos[j]) <= 3.0:
                    edges.add((i, j))
        _connect_components(members, pos, edges)
    first_door = len(pos) - len(doors)
    for d, (a, b, _x, _y) in enumerate(doors):
        k = first_door + d
        for room in (a, b):
            # the doorway joins its nearest viewpoint on each side, and the second nearest if close
            nearest = sorted((float(np.linalg.norm(pos[k] - pos[m])), m) for m in in_room[room])
            for rank, (distance, m) in enumerate(nearest[:2]):
                if rank == 0 or distance <= 3.2:
                    edges.add((min(k, m), max(k, m)))
    viewpoints = [_hex_id(rng) for _ in range(len(pos))]
    return House(scan, rooms, doors, viewpoints, pos, vp_rooms, doorway, sorted(edges))


def _connect_components(members: list[int], pos: np.ndarray, edges: set) -> None:
    """Join a room's viewpoint clusters by their closest pairs, so every room is connected."""
    comp = {m: m for m in members}

    def find(a: int) -> int:
        while comp[a] != a:
            a = comp[a]
        return a

    for i, j in edges:
        if i in comp and j in comp:
            comp[find(i)] = find(j)
    while len({find(m) for m in members}) > 1:
        root = find(members[0])
        inside = [m for m in members if find(m) == root]
        outside = [m for m in members if find(m) != root]
        i, j = min(
            ((i, j) for i in inside for j in outside), key=lambda p: np.linalg.norm(pos[p[0]] - pos[p[1]])
        )
        edges.add((min(i, j), max(i, j)))
        comp[find(i)] = find(j)


def connectivity_records(house: House, rng: np.random.Generator) -> list[dict]:
    """The house's graph as Matterport3DSimulator connectivity records."""
    n = len(house.viewpoints)
    unobstructed = np.zeros((n, n), bool)
    for i, j in house.edges:
        unobstructed[i, j] = unobstructed[j, i] = True
    same_room = np.equal.outer(house.viewpoint_rooms, house.viewpoint_rooms)
    visible = (same_room | unobstructed) & ~np.eye(n, dtype=bool)
    records = []
    for k, vp in enumerate(house.viewpoints):
        yaw = float(rng.uniform(0, 2 * np.pi))
        c, s = math.cos(yaw), math.sin(yaw)
        x, y, z = (round(float(v), 6) for v in house.positions[k])
        pose = [c, -s, 0.0, x, s, c, 0.0, y, 0.0, 0.0, 1.0, z, 0.0, 0.0, 0.0, 1.0]
        records.append(
            {
                "image_id": vp,
                "pose": [round(p, 6) for p in pose],
                "included": True,
                "visible": visible[k].tolist(),
                "unobstructed": unobstructed[k].tolist(),
                "height": round(CAMERA_HEIGHT + float(rng.normal(0, 0.02)), 6),
            }
        )
    return records
