"""Packed image folders (fqgan-prepare, packed:DIR): the images of folder:, read lazily, written safely."""

import json
import logging
import pickle

import numpy as np
import pytest
import torch
from fqgan_test_helpers import write_image_folder
from PIL import Image
from safetensors.torch import load_file

from dgm_core.errors import UserError
from dgm_core.training import TrainingConfig, TrainingRun
from fqgan import packed as packed_module
from fqgan.data import load_dataset
from fqgan.packed import PackedImages, pack_image_folder
from fqgan.prepare import main as prepare_main
from fqgan.train import main as train_main

RES = 16
IMAGE_BYTES = 3 * RES * RES


def _source(root, counts=None):
    """Two classes of random 20×24 PNGs, plus files the packer must skip or ignore."""
    source = write_image_folder(root, counts or {"cats": 5, "dogs": 4}, size=20)
    (source / "dogs" / "broken.png").write_bytes(b"\x89PNG garbage")
    (source / "notes.txt").write_text("not an image")
    Image.fromarray(np.full((24, 20), 77, np.uint8), mode="L").save(source / "cats" / "grey.png")
    return source


def _one_line_error(capsys, message):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    assert err.splitlines()[-1].startswith("fqgan-prepare: error:") and message in err, err


def test_packed_images_equal_the_folder_path_for_the_same_indices(tmp_path):
    source = _source(tmp_path / "src")
    # 4 images per shard: three shards, so indices cross shard boundaries.
    result = pack_image_folder(source, tmp_path / "packed", RES, workers=2, shard_bytes=4 * IMAGE_BYTES)
    folder = load_dataset(f"folder:{source}", resolution=RES)
    packed = load_dataset(f"packed:{tmp_path / 'packed'}", resolution=RES)
    assert isinstance(packed, PackedImages)
    assert len(packed) == len(folder) == result.num_images == 10
    for i in range(len(folder)):
        pixels, label = packed[i]
        assert pixels.dtype == torch.uint8 and torch.equal(pixels, folder.images[i]), f"image {i} differs"
        assert label == int(folder.labels[i])
    assert packed.class_names == folder.class_names == ["cats", "dogs"] and packed.num_classes == 2
    assert packed.skipped == folder.skipped == 1
    index = json.loads((tmp_path / "packed" / "index.json").read_text())
    assert [s["num_images"] for s in index["shards"]] == [4, 4, 2]
    assert index["resolution"] == RES and index["num_images"] == 10 and index["class_counts"] == [6, 4]
    assert [s["file"] for s in index["skipped"]] == ["dogs/broken.png"] and index["skipped"][0]["reason"]
    assert index["source"]["num_files"] == 11 and index["source"]["fingerprint"].startswith("sha256:")
    # files.txt names the source of every image, in order: the grey one is image 5 (cats/0..4, grey).
    files = (tmp_path / "packed" / "files.txt").read_text().splitlines()
    assert len(files) == 10 and files[5] == "cats/grey.png"
    assert torch.equal(packed[5][0], torch.full((3, RES, RES), 77, dtype=torch.uint8))


def test_the_packed_resize_is_a_centre_crop_not_a_squash(tmp_path):
    # 50 wide, 20 high: blue columns 5..44 between 5-pixel red margins. The centre crop (columns
    # 15..34, plus the few the bicubic filter reads beyond it) is all blue; a squash would show red.
    pixels = np.zeros((20, 50, 3), np.uint8)
    pixels[:, :, 0] = 255
    pixels[:, 5:45] = (0, 0, 255)
    (tmp_path / "src").mkdir()
    Image.fromarray(pixels).save(tmp_path / "src" / "wide.png")
    pack_image_folder(tmp_path / "src", tmp_path / "packed", 8)
    image, _ = PackedImages(tmp_path / "packed")[0]
    assert torch.equal(image, torch.tensor([0, 0, 255], dtype=torch.uint8).view(3, 1, 1).expand(3, 8, 8))


def _loader_run(tmp_path, **options) -> TrainingRun:
    cfg = TrainingConfig(run_dir=str(tmp_path / "run"), device="cpu", steps=10, progress=False, **options)
    return TrainingRun(cfg, model_config={}, name="loader")


def test_the_training_process_maps_nothing_and_loader_workers_read_the_sampler_batches(tmp_path):
    source = write_image_folder(tmp_path / "src", {"a": 12, "b": 12}, size=RES)
    pack_image_folder(source, tmp_path / "packed", RES, shard_bytes=5 * IMAGE_BYTES)
    folder = load_dataset(f"folder:{source}", resolution=RES)
    dataset = PackedImages(tmp_path / "packed")
    with _loader_run(tmp_path, num_workers=2) as run:
        sampler = run.sampler(len(dataset), 4)
        loaded = iter(run.loader(dataset, 4))
        for step in range(1, 8):  # 7 steps: past the end of the first epoch (6 batches)
            images, labels = next(loaded)
            indices = sampler.batch_for_step(step)
            assert torch.equal(images, folder.images[indices]) and torch.equal(labels, folder.labels[indices])
        del loaded
    assert dataset._shards is None and dataset._labels is None  # never mapped here
    # Spawned workers get a pickled dataset: paths only, even once this process has mapped it.
    dataset[0]
    assert dataset._shards is not None and len(pickle.dumps(dataset)) < 4096
    assert torch.equal(pickle.loads(pickle.dumps(dataset))[3][0], folder.images[3])


TINY_TRAIN = [
    "--device", "cpu", "--batch-size", "4", "--g-ch", "4", "--d-ch", "4", "--z-dim", "16",
    "--resolution", "16", "--fq-codebook-size", "16", "--fq-layers", "0,2", "--d-steps", "2",
    "--no-progress", "--log-every", "1", "--sample-every", "100", "--checkpoint-every", "2",
    "--num-grid-samples", "4",
]  # fmt: skip


def _weights(run_dir, step):
    return load_file(str(run_dir / "checkpoints" / f"step_{step:06d}" / "model.safetensors"))


def test_training_on_packed_data_equals_training_on_the_folder_and_resumes_exactly(tmp_path):
    source = _source(tmp_path / "src", {"cats": 9, "dogs": 8})
    assert prepare_main([f"folder:{source}", "--resolution", "16", "--out", str(tmp_path / "packed")]) == 0
    on_folder, on_packed = tmp_path / "folder-run", tmp_path / "packed-run"
    assert (
        train_main([*TINY_TRAIN, "--data", f"folder:{source}", "--run-dir", str(on_folder), "--steps", "4"])
        == 0
    )
    packed = [*TINY_TRAIN, "--data", f"packed:{tmp_path / 'packed'}", "--num-workers", "1"]
    assert train_main([*packed, "--run-dir", str(on_packed), "--steps", "2"]) == 0
    assert train_main([*packed, "--run-dir", str(on_packed), "--steps", "4"]) == 0  # resumes at step 2
    # The same pixels and labels in the same order, read by a loader worker after a resume: the
    # very same training, bit for bit.
    a, b = _weights(on_folder, 4), _weights(on_packed, 4)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{key} differs")
    config = json.loads((on_packed / "config.json").read_text())
    assert config["model"]["num_classes"] == 2


class _MeanColours(torch.nn.Module):
    """A stand-in for the FID Inception: [0, 1] images → the mean colour of each quadrant (12-d)."""

    def forward(self, images):
        return torch.nn.functional.adaptive_avg_pool2d(images, 2).flatten(1)


@pytest.mark.filterwarnings("ignore:.*singular:RuntimeWarning")
def test_eval_computes_real_statistics_from_packed_data(tmp_path, monkeypatch):
    import fqgan.evaluate as evaluate_module
    from fqgan.evaluate import main as eval_main

    source = write_image_folder(tmp_path / "src", {"a": 6, "b": 6}, size=RES)
    pack_image_folder(source, tmp_path / "packed", RES, shard_bytes=5 * IMAGE_BYTES)
    run_dir = tmp_path / "run"
    args = [*TINY_TRAIN, "--data", f"packed:{tmp_path / 'packed'}", "--num-workers", "0", "--d-steps", "1"]
    assert train_main([*args, "--run-dir", str(run_dir), "--steps", "1"]) == 0
    monkeypatch.setattr(evaluate_module, "load_fid_inception", lambda *a, **k: _MeanColours())
    stats = tmp_path / "real.npz"
    output = tmp_path / "eval.json"
    common = ["--checkpoint", str(run_dir), "--num-samples", "20", "--batch-size", "5"]
    assert eval_main([*common, "--fid-stats", str(stats), "--output", str(output)]) == 0
    assert json.loads(output.read_text())["fid"] >= 0
    real = load_dataset(f"folder:{source}", resolution=RES).images.float() / 255
    expected = _MeanColours()(real).double().mean(0).numpy()
    with np.load(stats) as data:
        np.testing.assert_allclose(data["mu"], expected, rtol=1e-6)
        assert int(data["num_samples"]) == 12


def test_prepare_refuses_what_it_must_not_replace_and_repacks_only_when_asked(tmp_path, capsys):
    source = _source(tmp_path / "src")
    out = tmp_path / "packed"
    assert prepare_main([f"folder:{source}", "--resolution", "8", "--out", str(out), "--workers", "0"]) == 0
    assert "packed 10 images (2 classes, 1 unreadable file(s) skipped)" in capsys.readouterr().out
    index_stat = (out / "index.json").stat().st_mtime_ns
    # Again, same files: a no-op.
    assert prepare_main(["--source", str(source), "--resolution", "8", "--out", str(out)]) == 0
    assert "is up to date" in capsys.readouterr().out
    assert (out / "index.json").stat().st_mtime_ns == index_stat
    # Another resolution (or changed files) is a different packing: refused without --overwrite.
    assert prepare_main([f"folder:{source}", "--resolution", "16", "--out", str(out)]) == 2
    _one_line_error(capsys, "pass --overwrite to replace it")
    assert PackedImages(out).resolution == 8
    write_image_folder(source, {"dogs": 6}, size=20)  # two more dogs (0..3 are rewritten too)
    assert prepare_main([f"folder:{source}", "--resolution", "8", "--out", str(out)]) == 2
    _one_line_error(capsys, "pass --overwrite")
    assert prepare_main([f"folder:{source}", "--resolution", "8", "--out", str(out), "--overwrite"]) == 0
    assert len(PackedImages(out)) == 12
    # Anything that is not a packed folder is never touched.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    for flags in ([], ["--overwrite"]):
        assert prepare_main([f"folder:{source}", "--resolution", "8", "--out", str(foreign), *flags]) == 2
        _one_line_error(capsys, "non-empty folder that fqgan-prepare did not write")
    assert [p.name for p in foreign.iterdir()] == ["thesis.tex"]
    (tmp_path / "a-file").write_text("keep me")
    assert prepare_main([f"folder:{source}", "--resolution", "8", "--out", str(tmp_path / "a-file")]) == 2
    _one_line_error(capsys, "exists and is not a folder")
    assert (tmp_path / "a-file").read_text() == "keep me"
    # An empty folder is fine.
    (tmp_path / "empty").mkdir()
    assert prepare_main([f"folder:{source}", "--resolution", "8", "--out", str(tmp_path / "empty")]) == 0
    assert (tmp_path / "empty" / "index.json").is_file()


@pytest.mark.parametrize(
    "args,message",
    [
        (["folder:{tmp}/missing", "--resolution", "8", "--out", "{tmp}/o"], "image folder not found"),
        (["folder:{tmp}/src", "--out", "{tmp}/o"], "--resolution R is required"),
        (["folder:{tmp}/src", "--resolution", "8"], "--out PACKED is required"),
        (["packed:{tmp}/src", "--resolution", "8", "--out", "{tmp}/o"], "expected folder:DIR"),
        (["--resolution", "8", "--out", "{tmp}/o"], "name the image folder to pack"),
    ],
)
def test_prepare_bad_input_is_one_line(tmp_path, capsys, args, message):
    _source(tmp_path / "src")
    assert prepare_main([a.format(tmp=tmp_path) for a in args]) == 2
    _one_line_error(capsys, message)
    assert not (tmp_path / "o").exists()


def test_an_interrupted_packing_leaves_no_packed_folder_and_keeps_the_previous_one(tmp_path, monkeypatch):
    source = _source(tmp_path / "src")
    out = tmp_path / "packed"
    pack_image_folder(source, out, 8)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_decode = packed_module.decode_in_order

    def dies_after_three(*args, **kwargs):
        for count, item in enumerate(real_decode(*args, **kwargs)):
            if count == 3:
                raise KeyboardInterrupt  # the user's Ctrl-C, mid-way
            yield item

    monkeypatch.setattr(packed_module, "decode_in_order", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        pack_image_folder(source, out, 16, overwrite=True, shard_bytes=IMAGE_BYTES)
    with pytest.raises(KeyboardInterrupt):
        pack_image_folder(source, tmp_path / "fresh", 16, shard_bytes=IMAGE_BYTES)
    assert not (tmp_path / "fresh").exists()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old packing, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["packed", "src"]  # no temporary folder left


def test_damaged_or_unpacked_folders_are_clear_errors(tmp_path, capsys):
    source = _source(tmp_path / "src")
    with pytest.raises(UserError, match="packed image folder not found"):
        load_dataset(f"packed:{tmp_path / 'nowhere'}", resolution=8)
    with pytest.raises(UserError, match="is not a packed image folder .no index.json.; create it with"):
        load_dataset(f"packed:{source}", resolution=8)
    out = tmp_path / "packed"
    pack_image_folder(source, out, 8, shard_bytes=4 * 3 * 8 * 8)
    with pytest.raises(UserError, match="holds 8×8 images; use --resolution 8"):
        load_dataset(f"packed:{out}", resolution=32)
    shard = out / "images-00001.npy"
    shard.write_bytes(shard.read_bytes()[:-10])  # a copy cut short
    with pytest.raises(UserError, match="is damaged: images-00001.npy has .* bytes instead of"):
        PackedImages(out)
    (out / "labels.npy").unlink()
    shard.unlink()
    with pytest.raises(UserError, match="is damaged: images-00001.npy is missing"):
        PackedImages(out)
    assert train_main([*TINY_TRAIN, "--data", f"packed:{out}", "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith("fqgan-train: error:") and "is damaged" in err
    assert not (tmp_path / "run").exists()


def test_a_large_image_folder_warns_that_every_process_holds_it(tmp_path, monkeypatch, caplog):
    import fqgan.data as data_module

    source = write_image_folder(tmp_path / "src", {"a": 3}, size=8)
    monkeypatch.setattr(data_module, "LARGE_FOLDER_BYTES", 2 * 3 * 8 * 8)
    with caplog.at_level(logging.WARNING, logger="fqgan.data"):
        load_dataset(f"folder:{source}", resolution=8)
    assert "held by every process" in caplog.text and "fqgan-prepare folder:" in caplog.text
