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


def test_sample_every_zero_writes_only_the_final_grid(tmp_path):
    run_dir = tmp_path / "run"
    options = [*TINY, "--fq-mode", "none", "--sample-every", "0", "--checkpoint-every", "0"]
    assert main([*options, "--run-dir", str(run_dir)]) == 0
    assert [p.name for p in (run_dir / "samples").glob("*.png")] == ["step_000003.png"]


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


def _nearest_codewords(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    return codebook[torch.cdist(vectors, codebook).argmin(dim=1)]


class _FixedGenerator(torch.nn.Module):
    """Always the same fake points (times a learnable 1, so G has something to update)."""

    z_dim, num_classes = 3, 0

    def __init__(self, fake: torch.Tensor):
        super().__init__()
        self.fake = fake
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, z, y=None):
        return self.fake * self.scale


def test_fq_term_of_d_is_real_mean_plus_fake_mean_and_of_g_the_fake_mean(tmp_path):
    from dgm_core.training import TrainingRun
    from fqgan.models import MLPDiscriminator
    from fqgan.train import GANSteps

    torch.manual_seed(0)
    beta = 2.0
    real = torch.randn(6, 2) * 2 + 3  # D features far from the N(0, 1) dictionary
    fake = torch.randn(6, 2) * 0.1  # ... and close to it: very different commitment losses
    discriminator = MLPDiscriminator(width=8)
    discriminator.enable_feature_quantization("0", codebook_size=4, commitment_weight=beta)
    generator = _FixedGenerator(fake)
    options = {"device": "cpu", "run_dir": str(tmp_path / "run"), "steps": 1, "progress": False}
    cfg = config_from_dict(TrainConfig, {**options, "data": "grid25", "arch": "mlp", "d_steps": 1})

    def commitment_per_sample(points: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = discriminator.blocks[0](points)
        return beta * (_nearest_codewords(features, codebook) - features).pow(2).mean(dim=1)

    with TrainingRun(cfg, model_config={"arch": "mlp"}, name="fqgan") as run:
        opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3)
        opt_d = torch.optim.Adam(discriminator.parameters(), lr=1e-3)
        steps = GANSteps(cfg, run, generator, discriminator, opt_g, opt_d)
        # The nearest codewords are looked up before this call's EMA update of the dictionary.
        codebook = discriminator.fq["0"].codebook.clone()
        real_mean = commitment_per_sample(real, codebook).mean()
        fake_mean = commitment_per_sample(fake, codebook).mean()
        d_metrics = steps.discriminator_update(1, real, torch.zeros(6, dtype=torch.long))
        # The reference (FQ-GAN train_fns): D_loss += quant_loss_real.mean() + quant_loss_fake.mean().
        assert float(d_metrics["fq_loss_d"]) == pytest.approx(float(real_mean + fake_mean), rel=1e-5)
        assert float(d_metrics["d_loss"]) == pytest.approx(
            float(d_metrics["d_gan_loss"] + d_metrics["fq_loss_d"]), rel=1e-6
        )
        # G's loss: + quant_loss_G.mean(), the fake batch's mean (D as updated by the step above).
        codebook = discriminator.fq["0"].codebook.clone()
        expected_g = commitment_per_sample(fake, codebook).mean()
        g_metrics = steps.generator_update(1, 6)
        assert float(g_metrics["fq_loss_g"]) == pytest.approx(float(expected_g), rel=1e-5)


FID_CLASSIFIER = [
    "--classifier-steps", "20", "--classifier-images", "256", "--fid-real-images", "256",
    "--fid-samples", "160",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*singular:RuntimeWarning")
def test_fid_every_logs_the_metric_and_keeps_the_lowest_as_a_loadable_best_checkpoint(tmp_path, capsys):
    from fqgan.evaluate import main as eval_main
    from fqgan.sample import main as sample_main

    run_dir = tmp_path / "run"
    args = [*TINY, "--run-dir", str(run_dir), "--steps", "3", "--checkpoint-every", "1", "--log-every", "2"]
    args += ["--fid-every", "1", "--classifier-cache", str(tmp_path / "cache"), *FID_CLASSIFIER]
    assert main(args) == 0
    records = _finite_metrics(run_dir)
    measured = {r["step"]: r["factor_fd"] for r in records if "factor_fd" in r}
    assert sorted(measured) == [1, 2, 3]  # measured at every step, logged even off the log cadence
    best_step = min(measured, key=measured.get)
    best = run_dir / "checkpoints" / "best"
    config = json.loads((best / "config.json").read_text())
    assert config["best"] == {"metric": "factor_fd", "value": measured[best_step], "step": best_step}
    assert config["step"] == best_step
    # The very weights of that step (its step_N checkpoint was written after the same step).
    saved = load_file(str(best / "model.safetensors"))
    same_step = load_file(str(run_dir / "checkpoints" / f"step_{best_step:06d}" / "model.safetensors"))
    assert saved.keys() == same_step.keys()
    assert all(torch.equal(saved[k], same_step[k]) for k in saved)
    # A full checkpoint folder: the inference CLIs read it, the run's own step_N rotation ignores it.
    assert load_trained_models(best).step == best_step
    assert load_trained_models(run_dir).step == 3
    assert sample_main(["--checkpoint", str(best), "--num-samples", "2", "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / f"sample_step_{best_step:06d}.png").is_file()
    output = tmp_path / "eval.json"
    eval_args = ["--checkpoint", str(best), "--num-samples", "160", "--output", str(output)]
    assert eval_main([*eval_args, "--classifier-cache", str(tmp_path / "cache"), *FID_CLASSIFIER[:4]]) == 0
    assert json.loads(output.read_text())["step"] == best_step


def test_best_checkpoint_is_replaced_only_by_a_lower_value_and_can_be_resumed_from(tmp_path, monkeypatch):
    from fqgan.train import TrainingFID

    values = iter([5.0, 3.0, 4.0, float("nan")])
    monkeypatch.setattr(TrainingFID, "_prepare", lambda self, dataset: None)  # no classifier needed
    monkeypatch.setattr(TrainingFID, "measure", lambda self, generator: next(values))
    run_dir = tmp_path / "run"
    args = [*TINY, "--run-dir", str(run_dir), "--steps", "4", "--checkpoint-every", "1", "--fid-every", "1"]
    assert main(args) == 0
    assert [r.get("factor_fd") for r in read_metrics(run_dir / "metrics.jsonl")][:3] == [5.0, 3.0, 4.0]
    best = run_dir / "checkpoints" / "best"
    assert json.loads((best / "config.json").read_text())["best"]["step"] == 2
    saved = load_file(str(best / "model.safetensors"))
    step_2 = load_file(str(run_dir / "checkpoints" / "step_000002" / "model.safetensors"))
    assert all(torch.equal(saved[k], step_2[k]) for k in saved)
    # Resuming from `best` continues exactly as resuming from the step-2 checkpoint.
    from_best, from_step = tmp_path / "from_best", tmp_path / "from_step"
    common = [*TINY, "--steps", "3", "--fid-every", "0"]
    assert main([*common, "--run-dir", str(from_best), "--resume", str(best)]) == 0
    step_2_folder = run_dir / "checkpoints" / "step_000002"
    assert main([*common, "--run-dir", str(from_step), "--resume", str(step_2_folder)]) == 0
    a = load_file(str(from_best / "checkpoints" / "step_000003" / "model.safetensors"))
    b = load_file(str(from_step / "checkpoints" / "step_000003" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--fid-every", "-1"], "--fid-every must be 0 (off) or positive"),
        (["--fid-every", "2", "--fid-samples", "1"], "--fid-samples must be 0 (the default count)"),
        (["--preset", "grid25", "--fid-every", "2"], "--fid-every needs images; --data grid25 is 2-D points"),
    ],
)
def test_bad_fid_options_are_one_clear_line(tmp_path, capsys, extra, message):
    assert main([*TINY, "--run-dir", str(tmp_path / "run"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and message in err.splitlines()[-1]
    assert not (tmp_path / "run").exists()  # refused before the run directory is touched


# FQ-BigGAN's launch scripts (scripts/launch_C10.sh, launch_C100.sh, launch_I64_bs128x4.sh):
# --discrete_layer, --dict_size (log2 K), --dict_decay, --commitment, --batch_size, --num_D_steps,
# --G_lr, --D_lr, --ema_start, --G_attn/--D_attn, --dim_z (default 128), Adam β1 0 / β2 0.999.
# "accumulations": --num_D_accumulations = --num_G_accumulations (one process, as the I64 script's
# 4 × 128 images per update).
REFERENCE_SCRIPTS = {
    "cifar10": {"layers": "0123", "dict_size": 10, "decay": 0.8, "commitment": 1.0, "batch": 64,
                "d_steps": 4, "lr_g": 2e-4, "lr_d": 2e-4, "ema_start": 1000, "attention": 0, "z": 128,
                "accumulations": 1},
    "cifar100": {"layers": "0123", "dict_size": 6, "decay": 0.9, "commitment": 10.0, "batch": 64,
                 "d_steps": 4, "lr_g": 2e-4, "lr_d": 2e-4, "ema_start": 1000, "attention": 0, "z": 128,
                 "accumulations": 1},
    "imagenet64": {"layers": "2", "dict_size": 10, "decay": 0.7, "commitment": 0.5, "batch": 128,
                   "d_steps": 1, "lr_g": 1e-4, "lr_d": 4e-4, "ema_start": 20000, "attention": 32, "z": 120,
                   "accumulations": 4},
}  # fmt: skip


@pytest.mark.parametrize("preset", sorted(REFERENCE_SCRIPTS))
def test_presets_carry_the_reference_launch_scripts_settings(preset):
    from fqgan.train import PRESETS

    script, options = REFERENCE_SCRIPTS[preset], PRESETS[preset]
    cfg = config_from_dict(TrainConfig, options)
    assert [int(i) for i in cfg.fq_layers.split(",")] == [int(c) for c in script["layers"]]
    assert cfg.fq_codebook_size == 2 ** script["dict_size"]
    assert (cfg.fq_decay, cfg.fq_commitment) == (script["decay"], script["commitment"])
    assert (cfg.batch_size, cfg.d_steps) == (script["batch"], script["d_steps"])
    assert (cfg.lr_g, cfg.lr_d) == (script["lr_g"], script["lr_d"])
    assert (cfg.adam_beta1, cfg.adam_beta2) == (0.0, 0.999)
    assert (cfg.ema_start, cfg.attention) == (script["ema_start"], script["attention"])
    assert cfg.z_dim == script["z"]
    assert cfg.grad_accum == script["accumulations"]
    assert (cfg.arch, cfg.g_ch, cfg.d_ch, cfg.loss) == ("biggan", 64, 64, "hinge")


class _NoiseSource:
    """Hands out consecutive rows of fixed noise, however many rows each call asks for."""

    def __init__(self, z: torch.Tensor, y: torch.Tensor):
        self.z, self.y, self.used = z, y, 0

    def __call__(self, n: int):
        start, self.used = self.used, self.used + n
        return self.z[start : self.used], self.y[start : self.used]


def _batch_sizes_seen(module: torch.nn.Module) -> list[int]:
    seen: list[int] = []
    module.register_forward_pre_hook(lambda _module, args: seen.append(args[0].shape[0]))
    return seen


@pytest.mark.parametrize("fq_mode", ["none", "loss_only"])
@pytest.mark.parametrize("arch,resolution", [("dcgan", 16), ("biggan", 32)])
def test_gradient_accumulation_of_4_x_8_gives_the_gradients_of_one_batch_of_32(
    tmp_path, arch, resolution, fq_mode
):
    """D's and G's gradients from 4 micro-batches of 8 equal those of the batch of 32, written out.

    Eval mode holds still what a forward pass changes and accumulation cannot make independent of
    the batch cut (spectral norm's power iteration, BatchNorm's batch statistics, the dictionaries'
    EMA); in training those advance per micro-batch, as in BigGAN-PyTorch's accumulation. The
    models run in float64 so that convolutions cut into other batch sizes cannot move a feature
    across a nearest-codeword tie (the dictionary search itself runs in float32).
    """
    import torch.nn.functional as F

    from dgm_core.training import TrainingRun
    from fqgan.models import build_models
    from fqgan.train import GANSteps

    torch.manual_seed(0)
    model_config = {
        "arch": arch, "resolution": resolution, "g_ch": 4, "d_ch": 4, "z_dim": 8, "num_classes": 3,
        "fq_mode": fq_mode, "fq_layers": "0,2", "fq_codebook_size": 8, "fq_commitment": 0.5,
    }  # fmt: skip
    generator, discriminator = build_models(model_config)
    generator.double().eval()
    discriminator.double().eval()
    real = torch.rand(32, 3, resolution, resolution, dtype=torch.float64) * 2 - 1
    labels = torch.randint(3, (32,))
    # The D update's 32 fakes, then the G update's.
    z, y = torch.randn(64, 8, dtype=torch.float64), torch.randint(3, (64,))

    # The reference: one batch of 32, FQ-GAN's losses (hinge; FQ = real mean + fake mean in D's loss,
    # the fake mean in G's).
    d_params, g_params = list(discriminator.parameters()), list(generator.parameters())
    with torch.no_grad():
        fake = generator(z[:32], y[:32])
    scores = discriminator(torch.cat([real, fake]), torch.cat([labels, y[:32]]))
    d_loss = F.relu(1 - scores[:32]).mean() + F.relu(1 + scores[32:]).mean()
    d_loss = d_loss + discriminator.pop_fq_loss(batch_parts=(32, 32))
    expected_d = torch.autograd.grad(d_loss, d_params)
    g_loss = -discriminator(generator(z[32:], y[32:]), y[32:]).mean() + discriminator.pop_fq_loss()
    expected_g = torch.autograd.grad(g_loss, g_params)

    options = {"device": "cpu", "run_dir": str(tmp_path / "run"), "steps": 1, "progress": False}
    cfg = config_from_dict(TrainConfig, {**options, "batch_size": 8, "grad_accum": 4})
    seen = _batch_sizes_seen(discriminator)
    with TrainingRun(cfg, model_config=model_config, name="fqgan") as run:
        # lr 0: the D update leaves D as it was, so the G update is compared against the same D.
        opt_g, opt_d = torch.optim.SGD(g_params, lr=0.0), torch.optim.SGD(d_params, lr=0.0)
        steps = GANSteps(cfg, run, generator, discriminator, opt_g, opt_d)
        steps._noise = _NoiseSource(z, y)
        d_metrics = steps.discriminator_update(1, real, labels)
        assert seen == [16] * 4  # [8 real; 8 fake] four times: really accumulated
        g_metrics = steps.generator_update(1, 32)
        assert seen == [16] * 4 + [8] * 4
    assert float(d_metrics["d_loss"]) == pytest.approx(float(d_loss.detach()), rel=1e-6)
    assert float(g_metrics["g_loss"]) == pytest.approx(float(g_loss.detach()), rel=1e-6)
    for name, param, expected in zip([n for n, _ in discriminator.named_parameters()], d_params, expected_d):
        torch.testing.assert_close(
            param.grad, expected, rtol=1e-6, atol=1e-9, msg=lambda m, name=name: f"D {name}: {m}"
        )
    for name, param, expected in zip([n for n, _ in generator.named_parameters()], g_params, expected_g):
        torch.testing.assert_close(
            param.grad, expected, rtol=1e-6, atol=1e-9, msg=lambda m, name=name: f"G {name}: {m}"
        )


def test_grad_accum_runs_every_update_as_micro_batches_of_the_batch_size(tmp_path, monkeypatch):
    real_build = train_module.build_models
    seen: list[int] = []

    def recording_build(model_config):
        generator, discriminator = real_build(model_config)
        discriminator.register_forward_pre_hook(lambda _module, args: seen.append(args[0].shape[0]))
        return generator, discriminator

    monkeypatch.setattr(train_module, "build_models", recording_build)
    run_dir = tmp_path / "run"
    args = [*TINY, "--run-dir", str(run_dir), "--steps", "1", "--batch-size", "4", "--d-steps", "2"]
    assert main([*args, "--grad-accum", "2"]) == 0
    # Two D updates of 2 × [4 real; 4 fake], then a G update of 2 × 4 fakes.
    assert seen == [8, 8, 8, 8, 4, 4]
    assert _finite_metrics(run_dir)[-1]["images_per_s"] > 0
