"""Feature stores: the R2R TSV format, its .npy/safetensors conversions, and missing viewpoints."""

import numpy as np
import pytest

from dgm_core.errors import UserError
from prevalent.env import (
    FeatureStore,
    NpyFeatureStore,
    SafetensorsFeatureStore,
    TsvFeatureStore,
    convert_tsv,
    iter_tsv,
    write_feature_store,
    write_tsv,
)


@pytest.fixture
def items():
    rng = np.random.default_rng(3)
    # the standard shape: 36 views × 2048 floats per viewpoint
    return [("scanA", f"{k:032x}", rng.normal(size=(36, 2048)).astype(np.float32)) for k in range(3)]


def test_tsv_round_trip_is_exact(tmp_path, items):
    path = write_tsv(tmp_path / "feats.tsv", items)
    fields = path.read_text().splitlines()[0].split("\t")
    assert fields[:5] == ["scanA", f"{0:032x}", "640", "480", "60"]
    store = FeatureStore.open(path)
    assert isinstance(store, TsvFeatureStore) and len(store) == 3 and store.feature_size == 2048
    for scan, vp, feats in items[::-1]:
        np.testing.assert_array_equal(store[scan, vp], feats)
    assert [(s, v) for s, v, _ in iter_tsv(path)] == [(s, v) for s, v, _ in items]


@pytest.mark.parametrize("target", ["store", "store.safetensors"])
def test_converted_stores_reload_the_same_features(tmp_path, items, target):
    tsv = write_tsv(tmp_path / "feats.tsv", items)
    out = convert_tsv(tsv, tmp_path / target, dtype="float32")
    store = FeatureStore.open(out)
    assert isinstance(store, SafetensorsFeatureStore if target.endswith("safetensors") else NpyFeatureStore)
    for scan, vp, feats in items:
        got = store[scan, vp]
        assert got.dtype == np.float32 and got.shape == (36, 2048)
        np.testing.assert_array_equal(got, feats)
    assert ("scanA", items[0][1]) in store and ("scanA", "missing") not in store


def test_float16_store_is_close_and_memory_mapped(tmp_path, items):
    out = write_feature_store(tmp_path / "half", items, dtype="float16")
    store = FeatureStore.open(out)
    assert isinstance(store._array, np.memmap)
    np.testing.assert_allclose(store["scanA", items[1][1]], items[1][2], rtol=1e-3, atol=1e-3)


def test_missing_viewpoint_names_scan_viewpoint_and_store(tmp_path, items):
    store = FeatureStore.open(write_feature_store(tmp_path / "s", items))
    with pytest.raises(UserError, match="scanA viewpoint nowhere"):
        store["scanA", "nowhere"]


def test_bad_tsv_line_and_missing_store_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("scan\tvp\t640\n")
    with pytest.raises(UserError, match="bad.tsv:1: expected 6"):
        FeatureStore.open(bad)
    with pytest.raises(UserError, match="does not exist"):
        FeatureStore.open(tmp_path / "nothing.tsv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="missing index.json"):
        FeatureStore.open(tmp_path / "empty")


def test_lru_cache_holds_at_most_its_size(tmp_path, items):
    store = FeatureStore.open(write_tsv(tmp_path / "f.tsv", items), cache_size=2)
    for scan, vp, _ in items:
        store[scan, vp]
    assert len(store._cache) == 2
    assert store["scanA", items[2][1]] is store["scanA", items[2][1]]
