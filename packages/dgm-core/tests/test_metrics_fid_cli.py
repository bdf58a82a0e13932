"""``dgm-fid`` end to end: image arrays and cached statistics, KID/IS, clear errors.

The FID Inception runs with random weights placed where the real file would be (the torch hub
cache under a temporary TORCH_HOME), so the real loading path is exercised offline.
"""

import json
import warnings

import numpy as np
import pytest
import torch

from dgm_core.metrics import FID_WEIGHTS_FILENAME, FIDInceptionV3, load_fid_stats
from dgm_core.metrics.fid import main


@pytest.fixture
def weights_in_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(FIDInceptionV3().state_dict(), checkpoints / FID_WEIGHTS_FILENAME)


@pytest.fixture
def image_arrays(tmp_path):
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, size=(6, 16, 16, 3), dtype=np.uint8)  # NHWC uint8
    fake = rng.random((6, 3, 16, 16), dtype=np.float32)  # NCHW float in [0, 1]
    np.save(tmp_path / "real.npy", real)
    np.savez(tmp_path / "fake.npz", images=fake)
    return tmp_path / "real.npy", tmp_path / "fake.npz"


def test_images_to_fid_kid_is_and_cached_statistics_give_the_same_fid(
    weights_in_hub_cache, image_arrays, tmp_path, capsys
):
    real, fake = image_arrays
    stats_path = tmp_path / "stats" / "real.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 6 samples in 2048 dims: singular, as warned
        args = [
            "--real",
            str(real),
            "--fake",
            str(fake),
            "--save-stats",
            str(stats_path),
            "--batch-size",
            "4",
        ]
        code = main([*args, "--is-splits", "3"])
        assert code == 0
        first = json.loads(capsys.readouterr().out)
        assert first["fid"] > 0 and first["num_real"] == 6 and first["num_fake"] == 6
        assert first["kid_subset_size"] == 6 and "kid_mean" in first
        assert first["is_mean"] >= 1.0 - 1e-9  # exp of a mean KL divergence
        mu, sigma = load_fid_stats(stats_path, dim=2048)

        output = tmp_path / "result.json"
        code = main(
            ["--real", str(stats_path), "--fake", str(fake), "--output", str(output), "--is-splits", "3"]
        )
        assert code == 0
    second = json.loads(output.read_text())
    assert second["fid"] == pytest.approx(first["fid"], rel=1e-6)
    assert second["num_real"] is None and "kid_mean" not in second  # statistics carry no features
    assert second["is_mean"] == pytest.approx(first["is_mean"], rel=1e-6)
    assert sigma.shape == (2048, 2048) and mu.shape == (2048,)


def test_missing_weights_is_a_one_line_error(image_arrays, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    real, fake = image_arrays
    assert main(["--real", str(real), "--fake", str(fake)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("dgm-fid: error: FID Inception weights not found")
    assert FID_WEIGHTS_FILENAME in error and "--inception-weights" in error and "\n" not in error


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d: ["--fake", str(d / "fake.npz")], "--real is required"),
        (lambda d: ["--real", str(d / "absent.npy"), "--fake", str(d / "fake.npz")], "does not exist"),
        (lambda d: ["--real", str(d / "flat.npy"), "--fake", str(d / "fake.npz")], "4-d array"),
        (lambda d: ["--real", str(d / "small.npz"), "--fake", str(d / "small.npz")], "64-d statistics"),
    ],
)
def test_bad_inputs_are_one_line_errors(image_arrays, tmp_path, capsys, make_args, message):
    np.save(tmp_path / "flat.npy", np.zeros((4, 16), dtype=np.uint8))
    np.savez(tmp_path / "small.npz", mu=np.zeros(64), sigma=np.eye(64))
    assert main(make_args(tmp_path)) == 2
    assert message in capsys.readouterr().err


def test_module_entry_point_prints_help_in_a_subprocess():
    import subprocess
    import sys

    completed = subprocess.run(
        [sys.executable, "-m", "dgm_core.metrics.fid", "--help"], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    assert "--inception-weights" in completed.stdout and "--save-stats" in completed.stdout
