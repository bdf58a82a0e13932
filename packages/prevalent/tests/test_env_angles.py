"""Angles of the 36-view panorama and the one angle-feature layout."""

import math

import numpy as np
import pytest

from prevalent.env import (
    VIEW_ELEVATIONS,
    VIEW_HEADINGS,
    angle_feature,
    panorama_angle_features,
    view_index,
    wrap_angle,
)


def test_view_index_is_heading_step_plus_twelve_times_row():
    assert view_index(0.0, 0.0) == 12
    assert view_index(math.radians(30), math.radians(-30)) == 1
    assert view_index(math.radians(330), math.radians(30)) == 35
    assert view_index(math.radians(359), 0.0) == 12  # wraps to heading step 0
    assert view_index(-math.radians(30), 0.0) == 23
    for ix in range(36):
        assert view_index(VIEW_HEADINGS[ix], VIEW_ELEVATIONS[ix]) == ix
    assert VIEW_ELEVATIONS[0] == pytest.approx(-math.pi / 6) and VIEW_ELEVATIONS[35] == pytest.approx(
        math.pi / 6
    )


def test_wrap_angle_lands_in_half_open_interval():
    angles = np.linspace(-10, 10, 1001)
    wrapped = wrap_angle(angles)
    assert np.all(wrapped > -math.pi) and np.all(wrapped <= math.pi)
    np.testing.assert_allclose(np.sin(wrapped), np.sin(angles), atol=1e-12)
    np.testing.assert_allclose(np.cos(wrapped), np.cos(angles), atol=1e-12)
    assert wrap_angle(-math.pi) == pytest.approx(math.pi)


def test_angle_feature_layout_is_tiled_sin_cos_blocks():
    h, e = 0.7, -0.2
    feature = angle_feature(h, e, size=12)
    expected = np.array([math.sin(h), math.cos(h), math.sin(e), math.cos(e)] * 3, dtype=np.float32)
    np.testing.assert_allclose(feature, expected, rtol=1e-6)
    assert angle_feature(np.zeros(5), np.zeros(5), 128).shape == (5, 128)
    with pytest.raises(ValueError, match="multiple of 4"):
        angle_feature(0.0, 0.0, size=10)


def test_panorama_angle_features_are_relative_to_the_agent_heading():
    base = math.radians(90)
    feats = panorama_angle_features(base, size=8)
    assert feats.shape == (36, 8)
    # view 15 (heading 90°, level) is straight ahead of an agent facing 90°
    np.testing.assert_allclose(feats[15, :4], [0.0, 1.0, 0.0, 1.0], atol=1e-6)
    # view 27 (heading 90°, up) is ahead and 30° up
    np.testing.assert_allclose(feats[27, :4], [0.0, 1.0, 0.5, math.sqrt(3) / 2], atol=1e-6)
