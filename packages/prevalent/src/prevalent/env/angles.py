"""Angles of the Matterport3D simulator's discretized panorama, and the angle feature.

Conventions (those of the Matterport3DSimulator, metres and radians, z up):

* heading ``h`` is measured from the +y axis, clockwise seen from above; the camera looks along
  ``(sin h, cos h)``. The heading toward a point offset by ``(dx, dy)`` is ``atan2(dx, dy)``.
* elevation ``e`` is positive upward; toward an offset ``(dx, dy, dz)`` it is ``atan2(dz, |(dx, dy)|)``.
* the panorama is 36 views: 12 headings ``0°, 30°, …, 330°`` times 3 elevation rows ``−30°, 0°, +30°``;
  ``view index = heading step + 12 · row`` so views 0–11 look down, 12–23 level, 24–35 up.

The angle feature (ONE layout for pre-training and fine-tuning alike — the reference code used two
incompatible ones) is the block ``(sin h, cos h, sin e, cos e)`` tiled ``size // 4`` times::

    feature[4k + 0] = sin h,  feature[4k + 1] = cos h,  feature[4k + 2] = sin e,  feature[4k + 3] = cos e

This is the EnvDrop / R2R fine-tuning layout, so fine-tuned checkpoints of that family read it directly.
"""

from __future__ import annotations

import math

import numpy as np

NUM_HEADINGS = 12
NUM_ELEVATIONS = 3
NUM_VIEWS = NUM_HEADINGS * NUM_ELEVATIONS
HEADING_STEP = math.radians(30.0)
ELEVATION_STEP = math.radians(30.0)
ANGLE_FEATURE_SIZE = 128

#: heading (radians, in [0, 2π)) of each of the 36 views
VIEW_HEADINGS = np.array([(ix % NUM_HEADINGS) * HEADING_STEP for ix in range(NUM_VIEWS)])
#: elevation (radians) of each of the 36 views: −30° for 0–11, 0° for 12–23, +30° for 24–35
VIEW_ELEVATIONS = np.array([(ix // NUM_HEADINGS - 1) * ELEVATION_STEP for ix in range(NUM_VIEWS)])


def wrap_angle(angle: float | np.ndarray) -> float | np.ndarray:
    """Wrap radians into ``(−π, π]`` (so a neighbour straight behind is at +π, not −π)."""
    wrapped = np.pi - np.mod(np.pi - np.asarray(angle, dtype=np.float64), 2.0 * np.pi)
    return float(wrapped) if np.ndim(wrapped) == 0 else wrapped


def view_index(heading: float, elevation: float = 0.0) -> int:
    """The discretized view (0–35) nearest to ``heading``/``elevation`` (simulator's discretized mode).

    Elevations beyond ±30° clamp to the top or bottom row, as the simulator clamps its camera.
    """
    step = int(round(float(np.mod(heading, 2.0 * np.pi)) / HEADING_STEP)) % NUM_HEADINGS
    row = int(round(elevation / ELEVATION_STEP)) + 1
    row = min(max(row, 0), NUM_ELEVATIONS - 1)
    return step + NUM_HEADINGS * row


def angle_feature(heading: float | np.ndarray, elevation: float | np.ndarray, size: int = ANGLE_FEATURE_SIZE):
    """The angle feature of one direction (or of arrays of directions; a trailing axis of ``size``).

    Layout: ``(sin h, cos h, sin e, cos e)`` tiled ``size // 4`` times (see the module docstring).
    Returns float32 NumPy arrays.
    """
    if size <= 0 or size % 4:
        raise ValueError(f"angle feature size must be a positive multiple of 4, got {size}")
    heading = np.asarray(heading, dtype=np.float64)
    elevation = np.asarray(elevation, dtype=np.float64)
    heading, elevation = np.broadcast_arrays(heading, elevation)
    block = np.stack([np.sin(heading), np.cos(heading), np.sin(elevation), np.cos(elevation)], axis=-1)
    return np.tile(block, size // 4).astype(np.float32)


def panorama_angle_features(base_heading: float, size: int = ANGLE_FEATURE_SIZE) -> np.ndarray:
    """Angle features ``(36, size)`` of the 36 views relative to the agent's heading ``base_heading``.

    View ``ix`` gets heading ``VIEW_HEADINGS[ix] − base_heading`` and its absolute elevation, as the
    panoramic agents (EnvDrop, PREVALENT) feed them beside the 36 view features.
    """
    return angle_feature(VIEW_HEADINGS - base_heading, VIEW_ELEVATIONS, size)
