"""fqgan-train end to end on tiny settings: every data kind, both FQ modes, resume, divergence, bad input."""

import json
import math

import pytest
import torch
from fqgan_test_helpers import write_cifar10, write_image_folder
from safetensors.torch import load_file

from dgm_core.cli import config_from_dict
from dgm_core.runtime.logging import read_metrics
from fqgan import train as train_module
from fqgan.checkpoints import load_trained_models
from fqgan.data import ImageDataset
from fqgan.train import TrainConfig, main, train

TINY = [
    "--device", "cpu", "--steps", "3", "--batch-size", "8", "--num-images", "64",
    "--g-ch", "4", "--d-ch", "4",
    "--z-dim", "16", "--fq-codebook-size", "16", "--d-steps", "1", "--no-progress", "--log-every", "1",
    "--sample-every", "2", "--checkpoint-every", "2", "--num-grid-samples", "4",
]  # fmt: skip


def _finite_metrics(run_dir):
    records = read_metrics(run_dir / "metrics.jsonl")
    assert records, "no metrics were logged"
    for record in records:
        for key, value in record.items():
            assert math.isfinite(value), f"{key} = {value} at step {record['step']}"
    return records


@pytest.mark.parametrize("fq_mode", ["loss_only", "quantize", "none"])
def test_training_on_shapes_writes_samples_metrics_and_checkpoints(tmp_path, fq_mode):
    run_dir = tmp_path / "run"
    assert main([*TINY, "--run-dir", str(run_dir), "--fq-mode", fq_mode]) == 0
    records = _finite_metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2, 3]
    keys = set(records[-1])
    assert {"d_loss", "g_loss", "fq_loss_d", "fq_loss_g", "images_per_s"} <= keys
    per_layer = {f"fq/{stat}_block{i}" for stat in ("perplexity", "dead_codes") for i in range(4)}
    if fq_mode == "none":
        assert not per_layer & keys and records[-1]["fq_loss_d"] == 0.0
    else:
        assert per_layer <= keys and records[-1]["fq_loss_d"] > 0
    assert sorted(p.name for p in (run_dir / "samples").glob("*.png")) == [
        "step_000002.png",
        "step_000003.png",
    ]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_000002", "step_000003"]
    config = json.loads((run_dir / "checkpoints" / "step_000003" / "config.json").read_text())
    assert config["model"]["fq_mode"] == fq_mode and config["model"]["num_classes"] == 3
    weights = load_file(str(run_dir / "checkpoints" / "step_000003" / "model.safetensors"))
    has_codebooks = any(k.startswith("discriminator.fq.") and k.endswith("codebook") for k in weights)
    assert has_codebooks is (fq_mode != "none")
    assert any(k.startswith("generator_ema.") for k in weights)


def test_training_on_an_image_folder_with_diffaugment(tmp_path):
    write_image_folder(tmp_path / "images", {"a": 10, "b": 10})
    run_dir = tmp_path / "run"
    args = [*TINY, "--run-dir", str(run_dir), "--data", f"folder:{tmp_path / 'images'}", "--resolution", "16"]
    assert main([*args, "--diffaug", "translation,cutout,color", "--fq-layers", "0,2"]) == 0
    records = _finite_metrics(run_dir)
    assert "fq/perplexity_block2" in records[-1] and "fq/perplexity_block1" not in records[-1]


def test_training_biggan_on_cifar_pickles(tmp_path):
    write_cifar10(tmp_path / "data", per_batch=4)
    run_dir = tmp_path / "run"
    args = [*TINY, "--run-dir", str(run_dir), "--data", "cifar10", "--data-root", str(tmp_path / "data")]
    assert main([*args, "--arch", "biggan", "--g-ch", "2", "--d-ch", "2", "--steps", "2"]) == 0
    _finite_metrics(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["arch"] == "biggan" and config["model"]["num_classes"] == 10


def test_training_mlps_on_the_25_gaussian_grid(tmp_path):
    run_dir = tmp_path / "run"
    args = ["--preset", "grid25", "--run-dir", str(run_dir), "--steps", "4", "--batch-size", "32"]
    assert main([*args, "--no-progress", "--g-ch", "16", "--d-ch", "16", "--num-images", "256"]) == 0
    records = _finite_metrics(run_dir)
    assert "fq/perplexity_block2" in records[-1]
    assert (run_dir / "samples" / "step_000004.png").is_file()


def test_resume_continues_bit_identically(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = [*TINY, "--fq-mode", "quantize", "--d-steps", "2", "--ema-start", "1"]
    assert main([*common, "--run-dir", str(straight), "--steps", "4"]) == 0
    assert main([*common, "--run-dir", str(resumed), "--steps", "2"]) == 0
    assert main([*common, "--run-dir", str(resumed), "--steps", "4"]) == 0
    a = load_file(str(straight / "checkpoints" / "step_000004" / "model.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step_000004" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{key} differs after resume")


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    real_loss = train_module.discriminator_loss

    def poisoned(kind, real, fake):
        calls["n"] += 1
        loss = real_loss(kind, real, fake)
        return loss * float("nan") if calls["n"] == 3 else loss  # d_steps 1: the 3rd call is step 3

    monkeypatch.setattr(train_module, "discriminator_loss", poisoned)
    run_dir = tmp_path / "run"
    assert main([*TINY, "--run-dir", str(run_dir), "--steps", "5"]) == 2
    err = capsys.readouterr().err
    assert "d_loss became nan at step 3" in err and "step_000002" in err
    assert "Traceback" not in err
    kept = run_dir / "checkpoints" / "step_000002"
    assert sorted(p.name for p in kept.iterdir()) == ["config.json", "model.safetensors", "training_state.pt"]
    assert not (run_dir / "checkpoints" / "step_000003").exists()
    load_file(str(kept / "model.safetensors"))  # still readable


def test_non_finite_discriminator_features_stop_with_the_step_and_the_last_good_checkpoint(
    tmp_path, monkeypatch, capsys
):
    calls = {"n": 0}
    real_batch = ImageDataset.batch

    def poisoned(self, indices, device):
        calls["n"] += 1
        images, labels = real_batch(self, indices, device)
        # d_steps 1: the 3rd real batch is step 3's; NaN images give NaN features in block 0's dictionary.
        return (images * float("nan") if calls["n"] == 3 else images), labels

    monkeypatch.setattr(ImageDataset, "batch", poisoned)
    run_dir = tmp_path / "run"
    assert main([*TINY, "--run-dir", str(run_dir), "--steps", "5"]) == 2
    err = capsys.readouterr().err
    assert "discriminator features became non-finite at step 3" in err
    assert f"the last good checkpoint is {run_dir / 'checkpoints' / 'step_000002'}" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_000002"]


def test_a_checkpoint_reloads_the_trained_models_exactly(tmp_path):
    options = {
        "device": "cpu", "run_dir": str(tmp_path / "run"), "steps": 2, "batch_size": 8, "num_images": 64,
        "g_ch": 4, "d_ch": 4, "z_dim": 16, "fq_codebook_size": 16, "d_steps": 1, "progress": False,
        "ema_start": 1,
    }  # fmt: skip
    result = train(config_from_dict(TrainConfig, options))
    trained = load_trained_models(tmp_path / "run")
    assert trained.step == 2 and trained.checkpoint.name == "step_000002"
    assert trained.run_dir == tmp_path / "run" and trained.run_config["steps"] == 2
    pairs = {
        "generator": (result.generator, trained.generator),
        "discriminator": (result.discriminator, trained.discriminator),  # dictionaries included
        "generator_ema": (result.generator_ema, trained.generator_ema),
    }
    for name, (saved, loaded) in pairs.items():
        before, after = saved.state_dict(), loaded.state_dict()
        assert before.keys() == after.keys(), name
        for key in before:
            assert torch.equal(before[key], after[key]), f"{name}.{key} differs after reloading"
    assert any(".codebook" in key for key in trained.discriminator.state_dict())
    z, y = torch.randn(4, 16), torch.tensor([0, 1, 2, 0])
    result.generator_ema.eval()
    with torch.no_grad():
        assert torch.equal(trained.generator_ema(z, y), result.generator_ema(z, y))


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--fq-layers", "0,9"], "FQ layer index 9 does not exist"),
        (
            ["--arch", "biggan", "--resolution", "48"],
            "biggan architecture takes 32 or 64-pixel images, not 48",
        ),
        (["--data", "cifar10", "--data-root", "/nonexistent/cifar"], "no cifar10 python-pickle files"),
        (["--arch", "mlp"], "--arch mlp is for the 2-D mixtures"),
        (["--diffaug", "rotate"], "unknown DiffAugment policy 'rotate'"),
        (["--batch-size", "128"], "fewer than one global batch"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, capsys, extra, message):
    assert main([*TINY, "--run-dir", str(tmp_path / "run"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("fqgan-train: error:") and message in last


def test_empty_image_folder_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([*TINY, "--run-dir", str(tmp_path / "run"), "--data", f"folder:{tmp_path / 'empty'}"]) == 2
    assert "holds no images" in capsys.readouterr().err


def test_resuming_with_another_model_config_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main([*TINY, "--run-dir", str(run_dir), "--steps", "2"]) == 0
    capsys.readouterr()
    assert main([*TINY, "--run-dir", str(run_dir), "--steps", "4", "--fq-mode", "quantize"]) == 2
    assert "cannot resume" in capsys.readouterr().err
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_000002"]


def test_generator_ema_copies_before_its_start_and_averages_after():
    from fqgan.train import GeneratorEMA

    generator = torch.nn.Linear(2, 1)
    ema = GeneratorEMA(generator, decay=0.9, start_step=3)
    with torch.no_grad():
        generator.weight.fill_(1.0)
    ema.update(generator, step=2)  # before the start: a plain copy
    torch.testing.assert_close(ema.model.weight, torch.ones(1, 2))
    with torch.no_grad():
        generator.weight.fill_(3.0)
    ema.update(generator, step=3)  # 0.9 · 1 + 0.1 · 3
    torch.testing.assert_close(ema.model.weight, torch.full((1, 2), 1.2))
    assert not ema.model.weight.requires_grad
