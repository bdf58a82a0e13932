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


def test_more_unseen_houses_keep_the_training_houses_episodes_and_features(tmp_path, dataset):
    """The claim world: the default world's training side, with more unseen houses and episodes."""
    bigger = make_synthetic_dataset(
        tmp_path / "bigger", seed=5, **{**SMALL, "houses": 6, "unseen_houses": 3, "val_paths_per_house": 9}
    )
    for rel in ("R2R/R2R_train.json", "NDH/train.json", "HANNA/train.json", "instructions.txt"):
        assert (bigger / rel).read_bytes() == (dataset / rel).read_bytes(), rel
    small_manifest = json.loads((dataset / "dataset.json").read_text())
    big_manifest = json.loads((bigger / "dataset.json").read_text())
    assert big_manifest["splits"]["train"] == small_manifest["splits"]["train"]
    assert len(big_manifest["splits"]["val_unseen"]) == 3
    assert not set(big_manifest["splits"]["val_unseen"]) & set(big_manifest["splits"]["train"])
    assert big_manifest["counts"]["val_unseen"]["R2R"] == 3 * 9
    small_store, big_store = FeatureStore.open(dataset / "features"), FeatureStore.open(bigger / "features")
    for house in json.loads((dataset / "houses.json").read_text()):
        if house["split"] == "seen":
            for viewpoint in house["viewpoint_rooms"]:
                key = (house["scan"], viewpoint)
                assert np.array_equal(small_store[key], big_store[key])


def _phrases(phrasing) -> set[str]:
    """A family's fixed wording: every template cut at its placeholders ("exit the {room}" → "exit the")."""
    templates = [t for table in phrasing.turn.values() for t in table]
    for name in ("exit", "enter", "through", "pass_by", "stop", "stop_room"):
        templates += getattr(phrasing, name)
    pieces = {piece.split("}")[-1].strip(" ,").lower() for t in templates for piece in t.split("{")}
    return {piece for piece in pieces if len(piece) > 4}


def test_dialog_answers_and_help_use_their_own_template_family(dataset):
    from prevalent.data.synthetic import DIALOG, INSTRUCTION

    instruction, dialog = _phrases(INSTRUCTION), _phrases(DIALOG)
    r2r = [
        t.lower()
        for item in json.loads((dataset / "R2R" / "R2R_train.json").read_text())
        for t in item["instructions"]
    ]
    ndh = json.loads((dataset / "NDH" / "train.json").read_text())
    answers = [t["message"] for item in ndh for t in item["dialog_history"] if t["role"] == "oracle"]
    hanna = json.loads((dataset / "HANNA" / "train.json").read_text())
    help_texts = [r["instruction"].lower() for item in hanna for r in item["help"]]
    assert answers and help_texts and r2r

    def uses(texts: list[str], phrases: set[str]) -> int:
        return sum(any(p in t for p in phrases) for t in texts)

    # R2R instructions (the pretraining text) never use the dialog family, and the answers and
    # help never use the instruction family's wording; each uses its own.
    assert uses(r2r, dialog) == 0 and uses(answers, instruction) == 0 and uses(help_texts, instruction) == 0
    assert uses(r2r, instruction) == len(r2r)
    assert uses(answers, dialog) == len(answers) and uses(help_texts, dialog) == len(help_texts)


def test_worlds_of_another_format_or_size_are_refused_not_replaced(tmp_path, dataset):
    import shutil

    from prevalent.rollout import synthetic_world

    folder = tmp_path / "old"
    shutil.copytree(dataset, folder)
    manifest = json.loads((folder / "dataset.json").read_text())
    assert synthetic_world(folder, 5, **SMALL).data_dir == folder
    with pytest.raises(UserError, match="other sizes: unseen_houses 1, wanted 2"):
        synthetic_world(folder, 5, **{**SMALL, "unseen_houses": 2})
    (folder / "dataset.json").write_text(json.dumps({**manifest, "format": "prevalent-synthetic/1"}))
    with pytest.raises(UserError, match="format 'prevalent-synthetic/1'.*move the folder away"):
        synthetic_world(folder, 5)
    assert _files(folder)["features/features.npy"] == _files(dataset)["features/features.npy"]
