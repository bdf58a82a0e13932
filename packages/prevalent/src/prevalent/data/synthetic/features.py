"""Per-view image features of a house, grounded in what each view sees.

Every view (12 headings × 3 elevations) sums fixed embeddings of what it sees — its room's type, the
room types seen through doorways in that direction, the objects within the view's angular window
weighted by angular offset and distance, a depth code from the distance to the wall ahead — plus a
per-house appearance vector and Gaussian noise. Concept embeddings are the same in every house (they
depend on ``feature_size`` only), so an agent can learn "bed" in seen houses and find one in unseen
houses: language has to be grounded in features. ``feature_size`` defaults to 64 (not ResNet's
2048) so agents train on a CPU in minutes.
"""

from __future__ import annotations

import math

import numpy as np

from prevalent.data.synthetic.houses import CAMERA_HEIGHT, OBJECT_NAMES, ROOM_TYPES, House, Room
from prevalent.env.angles import NUM_VIEWS, VIEW_ELEVATIONS, VIEW_HEADINGS, wrap_angle

#: the seed of the concept embeddings: a world constant, identical for every dataset seed
_CONCEPT_SEED = 20200607


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
