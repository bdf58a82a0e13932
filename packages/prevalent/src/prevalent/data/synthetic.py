"""Synthetic houses in the real VLN formats — the embedded default dataset.

:func:`make_synthetic_dataset` writes a folder that every reader of this package treats exactly like
real data::

    <out>/connectivity/<scan>_connectivity.json     Matterport3DSimulator graph format
    <out>/R2R/R2R_{train,val_seen,val_unseen}.json  R2R format, 3 instructions per path
    <out>/NDH/{train,val_seen,val_unseen}.json      NDH/CVDN format (dialogs, planner/player paths)
    <out>/HANNA/{train,val_seen,val_unseen}.json    HANNA-style find-object episodes with help
    <out>/features/{features.npy,index.json}        36 × feature_size per viewpoint (memory-mapped)
    <out>/instructions.txt                          all training-split language, one text a line
    <out>/houses.json                               rooms, objects, doors and viewpoint rooms per house
    <out>/dataset.json                              seed, sizes, splits and scans (the manifest)

**Houses.** A house is a grid of rectangular rooms (3–6 m a side) of distinct types, joined by doors
along a random spanning tree of the grid plus a few extra doors. Each room holds type-specific
objects at floor, mid or high level. Viewpoints form a jittered grid ~2 m apart inside each room plus
one in every doorway; viewpoints of a room closer than 3 m are joined, and each doorway joins the
nearest viewpoints on both sides, so edges are 1–3 m long as in Matterport3D. Cameras are 1.5 m
above a flat floor.

**Features.** Every view (12 headings × 3 elevations) sums fixed embeddings of what it sees — its
room's type, the room types seen through doorways in that direction, the objects within the view's
angular window weighted by angular offset and distance, a depth code from the distance to the wall
ahead — plus a per-house appearance vector and Gaussian noise. Concept embeddings are the same in
every house (they depend on ``feature_size`` only), so an agent can learn "bed" in seen houses and
find one in unseen houses: language has to be grounded in features. ``feature_size`` defaults to 64
(not ResNet's 2048) so agents train on a CPU in minutes.

**Language.** Instructions follow shortest paths (4–7 viewpoints, ≥ 4 m): an opening turn relative
to the start heading, room exits and entries, turns with landmarks, and a stop landmark, each drawn
from paraphrase tables. NDH dialogs split a game into instances at navigator questions ("which way
now?"); oracle answers describe the next ≤ 5 shortest-path steps toward the target object's region.
HANNA episodes ask to find an object in a room; help responses describe the next steps.

Seen/unseen splits are by house; the same ``seed`` gives byte-identical files.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dgm_core.errors import UserError
from prevalent.env.angles import NUM_VIEWS, VIEW_ELEVATIONS, VIEW_HEADINGS, wrap_angle
from prevalent.env.features import write_feature_store
from prevalent.env.graph import NavGraph

CAMERA_HEIGHT = 1.5
#: the seed of the concept embeddings: a world constant, identical for every dataset seed
_CONCEPT_SEED = 20200607

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
SPLITS = ("train", "val_seen", "val_unseen")
#: where ``prevalent-make-data`` writes (and the other CLIs look for) synthetic datasets, relative to the
#: working directory: one folder per seed, ``runs/prevalent-synthetic/seed<N>``
DEFAULT_DATA_ROOT = Path("runs/prevalent-synthetic")


def default_data_dir(seed: int = 0) -> Path:
    """The default folder of the synthetic dataset of ``seed``: ``runs/prevalent-synthetic/seed<seed>``."""
    return DEFAULT_DATA_ROOT / f"seed{seed}"


#: the default dataset (seed 0)
DEFAULT_DATA_DIR = default_data_dir(0)


# ---------------------------------------------------------------------------------------------- houses
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


# -------------------------------------------------------------------------------------------- features
def concept_embeddings(feature_size: int) -> dict[str, np.ndarray]:
    """Fixed unit vectors for room types, objects and depth, shared by every house and seed."""
    rng = np.random.default_rng(_CONCEPT_SEED + feature_size)
    names = (
        [f"room:{t}" for t in ROOM_TYPES]
        + [f"object:{o}" for o in OBJECT_NAMES]
        + ["depth", "floor", "ceiling"]
    )
    vectors = rng.normal(size=(len(names), feature_size))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return dict(zip(names, vectors))


def view_features(
    house: House, feature_size: int, rng: np.random.Generator, noise: float = 0.1
) -> np.ndarray:
    """``(num_viewpoints, 36, feature_size)`` float32 features of every view of the house."""
    emb = concept_embeddings(feature_size)
    appearance = rng.normal(0, 0.3 / math.sqrt(feature_size) * 4, size=feature_size)
    house.appearance = appearance
    n = len(house.viewpoints)
    feats = np.zeros((n, NUM_VIEWS, feature_size))
    directions = np.stack([np.sin(VIEW_HEADINGS), np.cos(VIEW_HEADINGS)], axis=1)  # (36, 2)
    sigma = math.radians(25.0)
    for k in range(n):
        px, py, pz = house.positions[k]
        own = house.rooms[house.viewpoint_rooms[k]]
        level = np.cos(VIEW_ELEVATIONS)[:, None]
        feats[k] += 0.8 * level * emb[f"room:{own.room_type}"]
        feats[k] += (
            0.3 * (VIEW_ELEVATIONS < 0)[:, None] * emb["floor"]
            + 0.3 * (VIEW_ELEVATIONS > 0)[:, None] * emb["ceiling"]
        )
        # depth: distance to the own room's wall along each view heading
        depth = np.array([_ray_to_wall(own, px, py, d) for d in directions])
        feats[k] += 0.3 * np.log1p(depth)[:, None] * emb["depth"]
        # rooms seen through doorways of the own room, in the doorway's direction
        seen = [(own.index, None)]
        for a, b, dx, dy in house.doors:
            if own.index in (a, b):
                other = house.rooms[b if a == own.index else a]
                weight = _angular_weight(px, py, pz, dx, dy, CAMERA_HEIGHT, sigma)
                feats[k] += 0.6 * weight[:, None] * emb[f"room:{other.room_type}"]
                seen.append((other.index, (dx, dy)))
        # objects: of the own room, and of rooms seen through a doorway (weaker)
        for room_index, door in seen:
            room = house.rooms[room_index]
            for name, ox, oy, oz in room.objects:
                weight = _angular_weight(px, py, pz, ox, oy, oz, sigma)
                dist = math.hypot(ox - px, oy - py)
                if door is not None:
                    weight = (
                        weight * _angular_weight(px, py, pz, door[0], door[1], CAMERA_HEIGHT, sigma) * 0.5
                    )
                feats[k] += (1.2 / (1.0 + 0.25 * dist)) * weight[:, None] * emb[f"object:{name}"]
    feats += appearance
    feats += rng.normal(0, noise, size=feats.shape)
    return feats.astype(np.float32)


def _angular_weight(px, py, pz, x, y, z, sigma) -> np.ndarray:
    """How centrally each of the 36 views sees the point ``(x, y, z)``: a Gaussian of angular offset."""
    heading = math.atan2(x - px, y - py)
    elevation = math.atan2(z - pz, max(math.hypot(x - px, y - py), 1e-6))
    d_heading = wrap_angle(heading - VIEW_HEADINGS)
    d_elevation = elevation - VIEW_ELEVATIONS
    return np.exp(-(d_heading**2 + d_elevation**2) / (2 * sigma**2))


def _ray_to_wall(room: Room, px: float, py: float, direction: np.ndarray) -> float:
    """Distance from ``(px, py)`` along ``direction`` to the room's boundary."""
    ts = []
    for coord, d, lo, hi in ((px, direction[0], room.x0, room.x1), (py, direction[1], room.y0, room.y1)):
        if d > 1e-9:
            ts.append((hi - coord) / d)
        elif d < -1e-9:
            ts.append((lo - coord) / d)
    return max(0.0, min(ts))


# -------------------------------------------------------------------------------------------- language
_TURN_WORDS = {
    "left": ["turn left", "make a left", "go left", "take a left"],
    "right": ["turn right", "make a right", "go right", "take a right"],
    "around": ["turn around", "turn all the way around", "face the other way"],
    "straight": ["walk forward", "go straight ahead", "head straight", "walk straight"],
}
_EXIT = ["exit the {room}", "leave the {room}", "walk out of the {room}", "go out of the {room}"]
_ENTER = ["enter the {room}", "go into the {room}", "walk into the {room}", "continue into the {room}"]
_THROUGH = ["walk through the {room}", "cross the {room}", "go across the {room}"]
_PASS = ["pass the {obj}", "walk past the {obj}", "go by the {obj}"]
_STOP = [
    "stop next to the {obj}",
    "wait by the {obj}",
    "stop in front of the {obj}",
    "stop when you reach the {obj}",
    "stand near the {obj} and stop",
]
_STOP_ROOM = ["stop in the {room}", "wait inside the {room}", "stop once you are in the {room}"]
_JOIN = [", then ", " and ", ". ", ", "]
_QUESTIONS = [
    "which way should i go?",
    "where do i go now?",
    "should i go left or right?",
    "do i keep going?",
    "which direction now?",
    "am i close? where next?",
]
_FIND = [
    "find the {obj} in the {room}",
    "go to the {room} and find the {obj}",
    "look for a {obj} in the {room}",
    "the {obj} is in the {room}, please find it",
]


def _turn_word(rel_heading: float) -> str:
    """left/right/around/straight for a heading change (positive = clockwise = right)."""
    if abs(rel_heading) < math.radians(35):
        return "straight"
    if abs(rel_heading) > math.radians(140):
        return "around"
    return "right" if rel_heading > 0 else "left"


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _nearest_object(house: House, k: int, radius: float = 2.5) -> str | None:
    room = house.rooms[house.viewpoint_rooms[k]]
    px, py, _ = house.positions[k]
    best = min(room.objects, key=lambda o: math.hypot(o[1] - px, o[2] - py), default=None)
    if best is None or math.hypot(best[1] - px, best[2] - py) > radius:
        return None
    return best[0]


def describe_path(
    house: House,
    path: list[str],
    heading: float,
    rng: np.random.Generator,
    stop: bool = True,
    stop_object: str | None = None,
) -> str:
    """A templated instruction for ``path`` starting at ``heading`` (radians).

    It says the opening turn, each room exit/entry, turns of more than 35° with a nearby landmark,
    and where to stop (next to ``stop_object`` when given, else an object near the goal, else in the
    goal's room).
    """
    rows = [house.viewpoints.index(vp) for vp in path]
    pos = house.positions
    clauses: list[str] = []
    current_heading = heading
    for step in range(len(rows) - 1):
        a, b = rows[step], rows[step + 1]
        move_heading = math.atan2(pos[b, 0] - pos[a, 0], pos[b, 1] - pos[a, 1])
        turn = _turn_word(float(wrap_angle(move_heading - current_heading)))
        room_a = house.rooms[house.viewpoint_rooms[a]]
        room_b = house.rooms[house.viewpoint_rooms[b]]
        big_turn = abs(float(wrap_angle(move_heading - current_heading))) > math.radians(50)
        if step == 0 or (big_turn and room_a.index == room_b.index):
            landmark = _nearest_object(house, a) if step > 0 else None
            words = _pick(rng, _TURN_WORDS[turn])
            if landmark and turn in ("left", "right") and rng.random() < 0.6:
                words += f" at the {landmark}"
            clauses.append(words)
        if room_a.index != room_b.index:
            if rng.random() < 0.5:
                clauses.append(_pick(rng, _EXIT).format(room=room_a.room_type))
            clauses.append(_pick(rng, _ENTER).format(room=room_b.room_type))
        elif step == 1 and rng.random() < 0.3:
            clauses.append(_pick(rng, _THROUGH).format(room=room_a.room_type))
        elif rng.random() < 0.2:
            landmark = _nearest_object(house, b)
            if landmark and landmark != _nearest_object(house, rows[-1]):
                clauses.append(_pick(rng, _PASS).format(obj=landmark))
        current_heading = move_heading
    if stop:
        landmark = stop_object or _nearest_object(house, rows[-1])
        if landmark:
            clauses.append(_pick(rng, _STOP).format(obj=landmark))
        else:
            clauses.append(
                _pick(rng, _STOP_ROOM).format(room=house.rooms[house.viewpoint_rooms[rows[-1]]].room_type)
            )
    text = clauses[0]
    for clause in clauses[1:]:
        joiner = _pick(rng, _JOIN)
        text += joiner + (clause[0].upper() + clause[1:] if joiner == ". " else clause)
    return text[0].upper() + text[1:] + "."


def _heading_of_arrival(house: House, path: list[str]) -> float:
    if len(path) < 2:
        return 0.0
    a, b = (house.viewpoints.index(v) for v in path[-2:])
    return float(math.atan2(*(house.positions[b, :2] - house.positions[a, :2])) % (2 * math.pi))


# -------------------------------------------------------------------------------------------- episodes
def _sample_path(house: House, graph: NavGraph, rng: np.random.Generator, min_len=4, max_len=7, min_dist=4.0):
    for _ in range(200):
        start = house.viewpoints[int(rng.integers(len(house.viewpoints)))]
        goal = house.viewpoints[int(rng.integers(len(house.viewpoints)))]
        if graph.distance(start, goal) < min_dist:
            continue
        path = graph.shortest_path(start, goal)
        if min_len <= len(path) <= max_len:
            return path
    return None


def r2r_items(
    house: House, graph: NavGraph, n_paths: int, rng: np.random.Generator, first_id: int
) -> list[dict]:
    """``n_paths`` R2R records (3 instructions each) on shortest paths of the house."""
    items = []
    for k in range(n_paths):
        path = _sample_path(house, graph, rng)
        if path is None:
            break
        heading = float(rng.uniform(0, 2 * np.pi))
        items.append(
            {
                "distance": round(graph.path_length(path), 2),
                "scan": house.scan,
                "path_id": first_id + k,
                "path": path,
                "heading": round(heading, 3),
                "instructions": [describe_path(house, path, round(heading, 3), rng) for _ in range(3)],
            }
        )
    return items


def _object_region(house: House, graph: NavGraph, room: Room, obj: tuple, radius: float) -> list[str]:
    members = [vp for k, vp in enumerate(house.viewpoints) if house.viewpoint_rooms[k] == room.index]
    near = [vp for vp in members if math.hypot(*(graph.position(vp)[:2] - np.array(obj[1:3]))) <= radius]
    if not near:
        near = [min(members, key=lambda vp: math.hypot(*(graph.position(vp)[:2] - np.array(obj[1:3]))))]
    return near


def ndh_items(
    house: House, graph: NavGraph, n_games: int, rng: np.random.Generator, first_idx: int
) -> list[dict]:
    """NDH instances from ``n_games`` dialogs: each question point of a game is one instance."""
    items = []
    inst_idx = first_idx
    for game in range(n_games):
        room = house.rooms[int(rng.integers(len(house.rooms)))]
        obj = room.objects[int(rng.integers(len(room.objects)))]
        end_panos = _object_region(house, graph, room, obj, radius=2.5)
        starts = [vp for vp in house.viewpoints if min(graph.distance(vp, e) for e in end_panos) >= 6.0]
        if not starts:
            continue
        position = starts[int(rng.integers(len(starts)))]
        heading = float(rng.uniform(0, 2 * np.pi))
        goal = min(end_panos, key=lambda e: graph.distance(position, e))
        route = graph.shortest_path(position, goal)
        dialog: list[dict] = []
        nav_history: list[str] = []
        turn = 0
        while True:
            planner = route[:5]
            instance_dialog = [dict(t) for t in dialog]
            items.append(
                {
                    "inst_idx": inst_idx,
                    "game_idx": first_idx + game,
                    "scan": house.scan,
                    "target": obj[0],
                    "start_pano": {"heading": round(heading, 6), "elevation": 0.0, "pano": position},
                    "nav_camera": [],
                    "dialog_history": instance_dialog,
                    "nav_history": list(nav_history),
                    "end_panos": end_panos,
                    "planner_path": planner,
                    "player_path": planner,
                }
            )
            inst_idx += 1
            if len(route) <= 5:
                break
            # the navigator walks the planner's steps, then asks; the oracle describes the next steps
            nav_history.extend(route[:4])
            position = route[4]
            heading = _heading_of_arrival(house, route[:5])
            route = route[4:]
            question = _pick(rng, _QUESTIONS)
            final = len(route) <= 5
            answer = describe_path(house, route[:5], heading, rng, stop=final, stop_object=obj[0]).lower()
            dialog += [
                {"nav_idx": len(nav_history), "role": "navigator", "message": question},
                {"nav_idx": len(nav_history), "role": "oracle", "message": answer},
            ]
            turn += 1
    return items


def hanna_items(
    house: House, graph: NavGraph, n_items: int, rng: np.random.Generator, prefix: str
) -> list[dict]:
    """HANNA-style find-object episodes with help responses every 4 steps along the route."""
    items = []
    for k in range(n_items):
        room = house.rooms[int(rng.integers(len(house.rooms)))]
        obj = room.objects[int(rng.integers(len(room.objects)))]
        goals = _object_region(house, graph, room, obj, radius=2.0)
        starts = [vp for vp in house.viewpoints if min(graph.distance(vp, g) for g in goals) >= 4.0]
        if not starts:
            continue
        start = starts[int(rng.integers(len(starts)))]
        heading = round(float(rng.uniform(0, 2 * np.pi)), 3)
        path = graph.shortest_path(start, min(goals, key=lambda g: graph.distance(start, g)))
        responses, h = [], heading
        for s in range(0, len(path) - 1, 4):
            segment = path[s : s + 5]
            text = describe_path(house, segment, h, rng, stop=segment[-1] == path[-1], stop_object=obj[0])
            responses.append({"viewpoint": segment[0], "instruction": text, "path": segment})
            h = _heading_of_arrival(house, segment)
        items.append(
            {
                "instr_id": f"{prefix}{k}",
                "scan": house.scan,
                "start": start,
                "heading": heading,
                "target": obj[0],
                "instruction": _pick(rng, _FIND).format(obj=obj[0], room=room.room_type),
                "goal_viewpoints": goals,
                "path": path,
                "help": responses,
            }
        )
    return items


# -------------------------------------------------------------------------------------------- dataset
@dataclass
class SyntheticConfig:
    """Sizes of a synthetic dataset (see :func:`make_synthetic_dataset`)."""

    seed: int = 0
    houses: int = 12
    unseen_houses: int = 3
    rows: int = 2
    cols: int = 3
    feature_size: int = 64
    paths_per_house: int = 60
    val_paths_per_house: int = 20
    dialogs_per_house: int = 20
    hanna_per_house: int = 30
    noise: float = 0.1
    feature_dtype: str = "float16"


def make_synthetic_dataset(
    out_dir: str | Path,
    seed: int = 0,
    houses: int = 12,
    unseen_houses: int = 3,
    feature_size: int = 64,
    overwrite: bool = False,
    **sizes,
) -> Path:
    """Generate houses, episodes and features under ``out_dir`` in the real formats; returns ``out_dir``.

    Args:
        seed: everything is a deterministic function of it.
        houses: number of houses; the last ``unseen_houses`` of them form the ``val_unseen`` split.
        feature_size: floats per view (64 by default; ResNet features would be 2048).
        overwrite: replace an existing dataset; without it an existing ``dataset.json`` is an error,
            so that data on disk is never destroyed by accident.
        sizes: other :class:`SyntheticConfig` fields (``rows``, ``cols``, ``paths_per_house``, …).
    """
    cfg = SyntheticConfig(
        seed=seed, houses=houses, unseen_houses=unseen_houses, feature_size=feature_size, **sizes
    )
    if cfg.houses < 2 or not 1 <= cfg.unseen_houses < cfg.houses:
        raise UserError(
            f"need ≥ 2 houses and 1 ≤ unseen_houses < houses, got {cfg.houses}/{cfg.unseen_houses}"
        )
    if cfg.feature_size < 8:
        raise UserError(f"feature_size must be at least 8, got {cfg.feature_size}")
    if cfg.rows * cfg.cols < 2:
        raise UserError("a house needs at least 2 rooms (rows × cols ≥ 2)")
    out = Path(out_dir)
    if (out / "dataset.json").exists() and not overwrite:
        raise UserError(
            f"{out} already holds a dataset (dataset.json); pass overwrite=True (--overwrite) to replace it"
        )
    for sub in ("connectivity", "R2R", "NDH", "HANNA"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    root = np.random.SeedSequence(cfg.seed)
    house_seeds = root.spawn(cfg.houses)
    split_of = {}
    records = {split: {"R2R": [], "NDH": [], "HANNA": []} for split in SPLITS}
    features, house_meta = [], []
    n_seen = cfg.houses - cfg.unseen_houses
    for h in range(cfg.houses):
        rng = np.random.default_rng(house_seeds[h])
        scan = f"synth{cfg.seed}x{h:03d}"
        house = generate_house(scan, rng, cfg.rows, cfg.cols)
        graph = house.graph()
        (out / "connectivity" / f"{scan}_connectivity.json").write_text(
            json.dumps(connectivity_records(house, rng))
        )
        feats = view_features(house, cfg.feature_size, rng, cfg.noise)
        features.extend((scan, vp, feats[k]) for k, vp in enumerate(house.viewpoints))
        splits = ("train", "val_seen") if h < n_seen else ("val_unseen",)
        for split in splits:
            split_of.setdefault(split, []).append(scan)
            n_paths = cfg.paths_per_house if split == "train" else cfg.val_paths_per_house
            share = n_paths / max(cfg.paths_per_house, 1)
            tag = SPLITS.index(split)
            first = (h * 10 + tag) * 100_000
            records[split]["R2R"] += r2r_items(house, graph, n_paths, rng, first)
            records[split]["NDH"] += ndh_items(
                house, graph, max(1, round(cfg.dialogs_per_house * share)), rng, first
            )
            records[split]["HANNA"] += hanna_items(
                house, graph, max(1, round(cfg.hanna_per_house * share)), rng, f"{scan}-{split}-"
            )
        house_meta.append(_house_summary(house, "seen" if h < n_seen else "unseen"))

    for split in SPLITS:
        (out / "R2R" / f"R2R_{split}.json").write_text(json.dumps(records[split]["R2R"], indent=1))
        (out / "NDH" / f"{split}.json").write_text(json.dumps(records[split]["NDH"], indent=1))
        (out / "HANNA" / f"{split}.json").write_text(json.dumps(records[split]["HANNA"], indent=1))
    write_feature_store(out / "features", features, dtype=cfg.feature_dtype)
    lines = [t for item in records["train"]["R2R"] for t in item["instructions"]]
    lines += [t["message"] for item in records["train"]["NDH"] for t in item["dialog_history"]]
    lines += [item["target"] for item in records["train"]["NDH"]]
    lines += [item["instruction"] for item in records["train"]["HANNA"]]
    lines += [r["instruction"] for item in records["train"]["HANNA"] for r in item["help"]]
    (out / "instructions.txt").write_text("\n".join(dict.fromkeys(lines)) + "\n")
    (out / "houses.json").write_text(json.dumps(house_meta, indent=1))
    (out / "scans.txt").write_text("\n".join(m["scan"] for m in house_meta) + "\n")
    manifest = {
        "format": "prevalent-synthetic/1",
        "config": asdict(cfg),
        "splits": split_of,
        "counts": {split: {task: len(v) for task, v in records[split].items()} for split in SPLITS},
        "feature_store": "features",
        "angle_feature_layout": "(sin h, cos h, sin e, cos e) tiled",
    }
    (out / "dataset.json").write_text(json.dumps(manifest, indent=1))
    return out


def ensure_default_dataset(seed: int = 0) -> Path:
    """The default synthetic dataset of ``seed`` (see :func:`default_data_dir`), generated if missing."""
    path = default_data_dir(seed)
    if not (path / "dataset.json").is_file():
        make_synthetic_dataset(path, seed=seed)
    return path


def _house_summary(house: House, split: str) -> dict:
    return {
        "scan": house.scan,
        "split": split,
        "rooms": [
            {
                "index": r.index,
                "type": r.room_type,
                "bounds": [round(v, 3) for v in (r.x0, r.y0, r.x1, r.y1)],
                "objects": [{"name": o[0], "position": [round(v, 3) for v in o[1:]]} for o in r.objects],
            }
            for r in house.rooms
        ],
        "doors": [{"rooms": [a, b], "position": [round(x, 3), round(y, 3)]} for a, b, x, y in house.doors],
        "viewpoint_rooms": dict(zip(house.viewpoints, house.viewpoint_rooms)),
    }
