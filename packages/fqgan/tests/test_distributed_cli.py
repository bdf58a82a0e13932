"""Two-process DDP training (identical dictionaries on every rank) and the console scripts as subprocesses."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from dgm_core.cli import config_from_dict
from dgm_core.testing import run_distributed


def _train_on_one_rank(rank: int, world_size: int, run_dir: str):
    torch.set_num_threads(1)
    from fqgan.train import TrainConfig, train

    options = {
        "device": "cpu", "run_dir": run_dir, "steps": 2, "batch_size": 8, "num_images": 64, "g_ch": 4,
        "d_ch": 4, "z_dim": 16, "fq_codebook_size": 16, "d_steps": 1, "progress": False, "log_every": 1,
        "fq_mode": "loss_only",
    }  # fmt: skip
    result = train(config_from_dict(TrainConfig, options))
    codebooks = {name: q.codebook.clone() for name, q in result.discriminator.quantizers.items()}
    # Parameters only: BatchNorm running statistics are per rank under DDP (no SyncBN), as usual.
    generator = {k: v.detach().clone() for k, v in result.generator.named_parameters()}
    return codebooks, generator


@pytest.mark.slow
def test_two_process_training_keeps_identical_dictionaries_on_both_ranks(tmp_path):
    (codebooks_0, g_0), (codebooks_1, g_1) = run_distributed(_train_on_one_rank, 2, str(tmp_path / "run"))
    assert set(codebooks_0) == {"block0", "block1", "block2", "block3"}
    for name in codebooks_0:
        torch.testing.assert_close(codebooks_0[name], codebooks_1[name], rtol=0, atol=0)
    for key in g_0:
        torch.testing.assert_close(g_0[key], g_1[key], rtol=0, atol=0, msg=f"generator {key} differs")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["world_size"] == 2
    assert (tmp_path / "run" / "checkpoints" / "step_000002" / "model.safetensors").is_file()


def _train_with_fid_on_one_rank(rank: int, world_size: int, run_dir: str, cache: str):
    torch.set_num_threads(1)
    from fqgan.train import TrainConfig, train

    options = {
        "device": "cpu", "run_dir": run_dir, "steps": 2, "batch_size": 8, "num_images": 64, "g_ch": 4,
        "d_ch": 4, "z_dim": 16, "fq_codebook_size": 16, "d_steps": 1, "progress": False, "log_every": 1,
        "fid_every": 1, "fid_samples": 160, "fid_real_images": 256, "classifier_cache": cache,
        "classifier_steps": 20, "classifier_images": 256,
    }  # fmt: skip
    result = train(config_from_dict(TrainConfig, options))
    return result.metrics


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*singular:RuntimeWarning")
def test_two_process_training_with_fid_every_measures_on_rank_0_and_agrees_on_best(tmp_path):
    run_dir = tmp_path / "run"
    metrics = run_distributed(_train_with_fid_on_one_rank, 2, str(run_dir), str(tmp_path / "cache"))
    # Rank 0 measured, every rank logged the broadcast value.
    assert metrics[0]["factor_fd"] == metrics[1]["factor_fd"] > 0
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    measured = {r["step"]: r["factor_fd"] for r in logged}
    best = json.loads((run_dir / "checkpoints" / "best" / "config.json").read_text())["best"]
    assert best["value"] == min(measured.values()) and measured[best["step"]] == best["value"]


def _train_packed_with_accumulation_on_one_rank(rank: int, world_size: int, run_dir: str, packed: str):
    torch.set_num_threads(1)
    from fqgan.train import TrainConfig, train

    options = {
        "device": "cpu", "run_dir": run_dir, "steps": 2, "batch_size": 2, "grad_accum": 2, "g_ch": 4,
        "d_ch": 4, "z_dim": 16, "fq_codebook_size": 16, "fq_layers": "0,2", "d_steps": 1, "resolution": 16,
        "data": f"packed:{packed}", "num_workers": 1, "progress": False, "log_every": 1,
    }  # fmt: skip
    result = train(config_from_dict(TrainConfig, options))
    codebooks = {name: q.codebook.clone() for name, q in result.discriminator.quantizers.items()}
    discriminator = {k: v.detach().clone() for k, v in result.discriminator.named_parameters()}
    return codebooks, discriminator, result.metrics


@pytest.mark.slow
def test_two_processes_train_on_one_packed_folder_with_gradient_accumulation(tmp_path):
    from fqgan_test_helpers import write_image_folder

    from fqgan.packed import pack_image_folder

    source = write_image_folder(tmp_path / "src", {"a": 8, "b": 8}, size=16)
    pack_image_folder(source, tmp_path / "packed", 16)
    results = run_distributed(
        _train_packed_with_accumulation_on_one_rank, 2, str(tmp_path / "run"), str(tmp_path / "packed")
    )
    (codebooks_0, d_0, metrics), (codebooks_1, d_1, _) = results
    # Gradients all-reduced once per update (after the micro-batches) still leave the ranks equal.
    for name in codebooks_0:
        torch.testing.assert_close(codebooks_0[name], codebooks_1[name], rtol=0, atol=0)
    for key in d_0:
        torch.testing.assert_close(d_0[key], d_1[key], rtol=0, atol=0, msg=f"discriminator {key} differs")
    assert math.isfinite(metrics["d_loss"])  # logged: the mean over ranks
    assert (tmp_path / "run" / "checkpoints" / "step_000002" / "model.safetensors").is_file()


def _script(name: str) -> str:
    path = os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.exists(path):
        pytest.skip(f"{name} is not installed next to {sys.executable}")
    return path


@pytest.mark.slow
def test_console_scripts_train_sample_and_report_errors(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "run"
    tiny = [
        "--steps",
        "1",
        "--batch-size",
        "8",
        "--num-images",
        "32",
        "--g-ch",
        "4",
        "--d-ch",
        "4",
        "--no-progress",
    ]
    done = subprocess.run(
        [_script("fqgan-train"), *tiny, "--run-dir", str(run_dir)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert (run_dir / "checkpoints" / "step_000001").is_dir()
    sampled = subprocess.run(
        [_script("fqgan-sample"), "--checkpoint", str(run_dir), "--num-samples", "2", "--deterministic"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert sampled.returncode == 0, sampled.stderr
    bad = subprocess.run(
        [_script("fqgan-eval"), "--checkpoint", str(tmp_path / "none")], capture_output=True, text=True
    )
    assert (
        bad.returncode == 2 and bad.stderr.startswith("fqgan-eval: error:") and "Traceback" not in bad.stderr
    )
    for name in ("fqgan-train", "fqgan-ablate"):
        helped = subprocess.run([_script(name), "--help"], capture_output=True, text=True)
        assert helped.returncode == 0 and "--fq" in helped.stdout or "--variants" in helped.stdout
