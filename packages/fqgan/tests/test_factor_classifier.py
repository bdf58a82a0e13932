"""The factor classifier's cache: a dgm-core model folder, reused only for its own recipe, retrained when
unreadable, and a one-line error when it cannot be written."""

import json
import logging

import pytest
import torch

from dgm_core.errors import UserError
from dgm_core.pretrained import CONFIG_FILE, WEIGHTS_FILE, save_pretrained
from dgm_core.testing import check_pretrained_round_trip
from fqgan import factor_classifier
from fqgan.data import images_in_model_range, make_shapes
from fqgan.factor_classifier import ClassifierRecipe, classifier_folder, load_factor_classifier

TINY = ClassifierRecipe(num_images=64, steps=2, batch_size=16)


@pytest.fixture
def trainings(monkeypatch):
    """Count the classifier trainings (a cache hit trains nothing)."""
    calls = []
    train = factor_classifier.train_factor_classifier

    def counted(recipe, device="cpu"):
        calls.append(recipe)
        return train(recipe, device)

    monkeypatch.setattr(factor_classifier, "train_factor_classifier", counted)
    return calls


def test_classifier_survives_the_pretrained_round_trip(tmp_path, monkeypatch):
    model, config = load_factor_classifier(tmp_path / "trained", TINY)
    images = images_in_model_range(make_shapes(8, seed=1).images)

    # Loading goes through load_factor_classifier itself: it must find the folder, not retrain.
    def never(*args, **kwargs):
        pytest.fail("the saved classifier was retrained instead of loaded")

    monkeypatch.setattr(factor_classifier, "train_factor_classifier", never)
    cache = tmp_path / "copy"
    loaded = check_pretrained_round_trip(
        model,
        save=lambda folder: save_pretrained(folder, model, config),
        load=lambda folder: load_factor_classifier(folder.parent, TINY)[0],
        folder=classifier_folder(cache, TINY),
        forward=lambda m: m(images),
    )
    assert isinstance(loaded, factor_classifier.FactorClassifier) and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())


def test_cache_is_a_model_folder_with_recipe_accuracy_and_version(tmp_path, trainings):
    model, config = load_factor_classifier(tmp_path, TINY)
    folder = classifier_folder(tmp_path, TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # no temporary folder left
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    on_disk = json.loads((folder / CONFIG_FILE).read_text())
    assert on_disk == config
    assert on_disk["recipe"]["steps"] == 2 and on_disk["version"] == factor_classifier._VERSION
    assert set(on_disk["held_out_accuracy"]) == {"shape", "colour", "size", "position"}
    again, again_config = load_factor_classifier(tmp_path, TINY)
    assert len(trainings) == 1 and again_config == config
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)


def test_a_cache_of_another_recipe_is_never_reused(tmp_path, trainings, caplog):
    other = ClassifierRecipe(num_images=64, steps=3, batch_size=16)
    load_factor_classifier(tmp_path, TINY)
    load_factor_classifier(tmp_path, other)
    assert trainings == [TINY, other] and classifier_folder(tmp_path, other).is_dir()
    # A folder holding TINY's classifier under other's name (copied by hand) is retrained too.
    (classifier_folder(tmp_path, other) / CONFIG_FILE).write_text(
        (classifier_folder(tmp_path, TINY) / CONFIG_FILE).read_text()
    )
    with caplog.at_level(logging.WARNING):
        _, config = load_factor_classifier(tmp_path, other)
    assert trainings == [TINY, other, other] and config["recipe"]["steps"] == 3
    assert "another recipe" in caplog.text
    assert json.loads((classifier_folder(tmp_path, other) / CONFIG_FILE).read_text())["recipe"]["steps"] == 3


@pytest.mark.parametrize("damage", ["weights", "config"])
def test_an_unreadable_cache_is_retrained_with_a_warning(tmp_path, trainings, caplog, damage):
    load_factor_classifier(tmp_path, TINY)
    folder = classifier_folder(tmp_path, TINY)
    if damage == "weights":
        (folder / WEIGHTS_FILE).write_bytes(b"truncated")
    else:
        (folder / CONFIG_FILE).write_text("{not json")
    with caplog.at_level(logging.WARNING):
        model, _ = load_factor_classifier(tmp_path, TINY)
    assert len(trainings) == 2
    assert "unreadable" in caplog.text and "retraining" in caplog.text
    # The cache was rewritten and is read back without training again.
    load_factor_classifier(tmp_path, TINY)
    assert len(trainings) == 2


def test_an_unwritable_cache_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot write the factor-classifier cache") as error:
        load_factor_classifier(blocker / "cache", TINY)
    assert "\n" not in str(error.value)
