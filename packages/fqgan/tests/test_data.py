"""Datasets: procedural shapes, 2-D mixtures, CIFAR pickles, image folders, and their bad inputs."""

import logging
import pickle

import pytest
import torch
from fqgan_test_helpers import write_cifar10, write_image_folder

from dgm_core.errors import UserError
from fqgan.data import (
    FACTOR_SIZES,
    NUM_FACTOR_COMBINATIONS,
    factor_combination_index,
    load_dataset,
    make_mixture,
    make_shapes,
    mixture_centers,
)


def test_shapes_are_deterministic_per_seed_and_carry_their_factors():
    a, b, c = make_shapes(64, seed=3), make_shapes(64, seed=3), make_shapes(64, seed=4)
    assert a.images.shape == (64, 3, 32, 32) and a.images.dtype == torch.uint8
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert a.factors.shape == (64, 4)
    for column, size in enumerate(FACTOR_SIZES):
        assert a.factors[:, column].min() >= 0 and a.factors[:, column].max() < size
    assert torch.equal(a.labels, a.factors[:, 0]) and a.num_classes == 3


def test_shape_colour_factor_is_visible_in_the_pixels():
    data = make_shapes(256, seed=0)
    brightest = data.images.float().flatten(2).max(dim=2).values  # (N, 3) peak per channel
    red = data.factors[:, 1] == 0
    blue = data.factors[:, 1] == 2
    assert (brightest[red, 0] > brightest[red, 2] + 80).all()
    assert (brightest[blue, 2] > brightest[blue, 0] + 80).all()


def test_factor_combination_index_is_a_bijection():
    grids = torch.meshgrid(*[torch.arange(k) for k in FACTOR_SIZES], indexing="ij")
    every = torch.stack([g.flatten() for g in grids], dim=1)
    index = factor_combination_index(every)
    assert sorted(index.tolist()) == list(range(NUM_FACTOR_COMBINATIONS))


def test_batches_are_scaled_to_minus_one_one():
    data = make_shapes(16, seed=0)
    images, labels = data.batch([0, 5, 7], torch.device("cpu"))
    assert images.shape == (3, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    assert torch.equal(labels, data.labels[[0, 5, 7]])


@pytest.mark.parametrize("name,modes,std", [("ring8", 8, 0.02), ("grid25", 25, 0.05)])
def test_mixture_points_sit_around_their_components(name, modes, std):
    data = make_mixture(name, num_points=4000, seed=1)
    centers, sigma = mixture_centers(name)
    assert centers.shape == (modes, 2) and sigma == std
    offsets = data.points - centers[data.labels]
    assert offsets.std().item() == pytest.approx(std, rel=0.1)
    assert torch.bincount(data.labels, minlength=modes).min() > 0


def test_cifar10_pickles_load_in_the_official_layout(tmp_path):
    folder = write_cifar10(tmp_path, per_batch=8)
    for root in (tmp_path, folder):  # the folder itself or its parent
        data = load_dataset("cifar10", data_root=str(root))
        assert data.images.shape == (40, 3, 32, 32) and data.num_classes == 10
    with open(folder / "data_batch_2", "rb") as handle:
        entry = pickle.load(handle, encoding="bytes")
    expected = torch.from_numpy(entry[b"data"][3].reshape(3, 32, 32))
    assert torch.equal(data.images[8 + 3], expected)
    assert data.labels[8 + 3].item() == entry[b"labels"][3]


def test_missing_cifar_folder_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no cifar10 python-pickle files .*nothing is downloaded"):
        load_dataset("cifar10", data_root=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="needs --data-root"):
        load_dataset("cifar100", data_root="")


def test_corrupt_cifar_batch_is_a_clear_error(tmp_path):
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes(b"not a pickle at all")
    with pytest.raises(UserError, match="data_batch_3 is not a readable cifar10 pickle batch"):
        load_dataset("cifar10", data_root=str(tmp_path))


def test_cifar_at_another_resolution_is_refused(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(UserError, match="cifar10 images are 32×32"):
        load_dataset("cifar10", data_root=str(tmp_path), resolution=64)


def test_image_folder_uses_subfolders_as_classes_and_skips_unreadable_files(tmp_path, caplog):
    write_image_folder(tmp_path, {"cats": 3, "dogs": 2})
    (tmp_path / "dogs" / "broken.png").write_bytes(b"\x89PNG garbage")
    (tmp_path / "notes.txt").write_text("ignored: not an image")
    with caplog.at_level(logging.WARNING):
        data = load_dataset(f"folder:{tmp_path}", resolution=16)
    assert data.images.shape == (5, 3, 16, 16)
    assert data.class_names == ["cats", "dogs"] and data.labels.tolist() == [0, 0, 0, 1, 1]
    assert data.skipped == 1
    assert "broken.png" in caplog.text


def test_flat_image_folder_is_one_class(tmp_path):
    write_image_folder(tmp_path, {"all": 3})
    data = load_dataset(f"folder:{tmp_path / 'all'}", resolution=8)
    assert data.num_classes == 1 and len(data) == 3


def test_empty_and_unusable_folders_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no images"):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.jpg").write_bytes(b"nope")
    with pytest.raises(UserError, match="none of the 1 image file"):
        load_dataset(f"folder:{tmp_path / 'bad'}")
    with pytest.raises(UserError, match="image folder not found"):
        load_dataset(f"folder:{tmp_path / 'missing'}")


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(UserError, match="unknown --data 'mnist'"):
        load_dataset("mnist")
