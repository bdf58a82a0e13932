"""Synthetic worlds: deterministic, valid in the real formats, split by house, features grounded."""

import json
from pathlib import Path

import numpy as np
import pytest

from dgm_core.errors import UserError
from prevalent.data import load_hanna, load_ndh, load_r2r, make_synthetic_dataset
from prevalent.data.synthetic import ROOM_TYPES, concept_embeddings
from prevalent.env import FeatureStore, NavGraph, NavGraphs

SMALL = dict(
    houses=4,
    unseen_houses=1,
    paths_per_house=6,
    val_paths_per_house=3,
    dialogs_per_house=3,
    hanna_per_house=4,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth") / "data", seed=5, **SMALL)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path, dataset):
    again = make_synthetic_dataset(tmp_path / "again", seed=5, **SMALL)
    assert _files(again) == _files(dataset)
    other = make_synthetic_dataset(tmp_path / "other", seed=6, **SMALL)
    assert _files(other)["features/features.npy"] != _files(dataset)["features/features.npy"]


def test_manifest_and_expected_files(dataset):
    manifest = json.loads((dataset / "dataset.json").read_text())
    assert manifest["config"]["seed"] == 5 and manifest["config"]["feature_size"] == 64
    for rel in (
        "R2R/R2R_train.json",
        "R2R/R2R_val_seen.json",
        "R2R/R2R_val_unseen.json",
        "NDH/train.json",
        "HANNA/val_unseen.json",
        "features/features.npy",
        "features/index.json",
        "instructions.txt",
    ):
        assert (dataset / rel).is_file(), rel
    assert manifest["counts"]["train"]["R2R"] == 3 * 6


def test_graphs_are_connected_with_realistic_edge_lengths(dataset):
    graphs = NavGraphs(dataset / "connectivity")
    assert len(graphs.available_scans()) == 4
    for scan in graphs.available_scans():
        graph = NavGraph.load(dataset / "connectivity", scan)  # real reader, real validation
        assert np.isfinite(graph.distances).all()
        lengths = [graph.edge_weights[i, j] for i, nb in enumerate(graph.neighbours) for j in nb]
        assert min(lengths) >= 0.5 and max(lengths) <= 3.5


def test_episodes_are_valid_in_the_real_formats(dataset):
    graphs = NavGraphs(dataset / "connectivity")
    for split in ("train", "val_seen", "val_unseen"):
        r2r = load_r2r(dataset / "R2R" / f"R2R_{split}.json")
        assert r2r
        for ep in r2r:
            graph = graphs[ep.scan]
            assert all(graph.is_adjacent(a, b) for a, b in zip(ep.path, ep.path[1:]))
            assert graph.path_length(ep.path) == pytest.approx(graph.distance(ep.start, ep.goal))
            assert ep.distance == pytest.approx(graph.path_length(ep.path), abs=0.01)
            assert 4 <= len(ep.path) <= 7 and ep.instruction.endswith(".")
        for ep in load_ndh(dataset / "NDH" / f"{split}.json"):
            graph = graphs[ep.scan]
            assert ep.planner_path[0] == ep.start
            assert all(graph.is_adjacent(a, b) for a, b in zip(ep.path, ep.path[1:]))
            assert all(v in graph for v in ep.end_panos + ep.nav_history)
            assert ep.instruction.endswith(f"<TAR> {ep.target}")
        for ep in load_hanna(dataset / "HANNA" / f"{split}.json"):
            assert ep.path[-1] in ep.goal_viewpoints and ep.help and ep.help[0].viewpoint == ep.start


def test_unseen_houses_never_appear_in_training(dataset):
    manifest = json.loads((dataset / "dataset.json").read_text())
    train = {ep.scan for ep in load_r2r(dataset / "R2R" / "R2R_train.json")}
    unseen = {ep.scan for ep in load_r2r(dataset / "R2R" / "R2R_val_unseen.json")}
    seen = {ep.scan for ep in load_r2r(dataset / "R2R" / "R2R_val_seen.json")}
    assert unseen and not unseen & train and seen <= train
    assert unseen == set(manifest["splits"]["val_unseen"])
    train_paths = {
        tuple(item["path"]) for item in json.loads((dataset / "R2R" / "R2R_train.json").read_text())
    }
    assert len(train_paths) > 1


def test_every_viewpoint_has_features_that_ground_room_types(dataset):
    store = FeatureStore.open(dataset / "features")
    houses = json.loads((dataset / "houses.json").read_text())
    rooms = np.stack([concept_embeddings(64)[f"room:{t}"] for t in ROOM_TYPES])
    correct = total = 0
    for house in houses:
        types = [room["type"] for room in house["rooms"]]
        for viewpoint, room in house["viewpoint_rooms"].items():
            feats = store[house["scan"], viewpoint]
            assert feats.shape == (36, 64)
            level_views = feats[12:24].mean(axis=0)
            correct += ROOM_TYPES[int(np.argmax(rooms @ level_views))] == types[room]
            total += 1
    assert correct / total > 0.9  # the room type is readable from the features


def test_existing_dataset_is_never_overwritten_by_accident(dataset):
    before = (dataset / "features" / "features.npy").read_bytes()
    with pytest.raises(UserError, match="already holds a dataset"):
        make_synthetic_dataset(dataset, seed=9, **SMALL)
    assert (dataset / "features" / "features.npy").read_bytes() == before


def test_bad_sizes_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unseen_houses"):
        make_synthetic_dataset(tmp_path / "x", houses=2, unseen_houses=2)
    with pytest.raises(UserError, match="feature_size"):
        make_synthetic_dataset(tmp_path / "y", feature_size=2)
