"""optimus-train from a saved model (--init-from), gradient accumulation, --epochs (tiny VAE, no dropout)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from optimus_tiny import grammar_codec, tiny_vae

from dgm_core.runtime.logging import read_metrics
from optimus import train
from optimus.data import collate
from optimus.grammar import generate_corpus
from optimus.saved_model import load_trained, save_trained
from optimus.vae import OptimusVAE

BLOCK = 32


def _sentences(path: Path, count: int, seed: int) -> Path:
    path.write_text("\n".join(s.text for s in generate_corpus(count, seed=seed)) + "\n")
    return path


@pytest.fixture
def source_model(tmp_path) -> Path:
    """A tiny VAE without dropout (so a training step is deterministic) saved with grammar tokenizers."""
    torch.manual_seed(0)
    return save_trained(tmp_path / "source", tiny_vae(vocab=400, attn="sdpa"), grammar_codec())


def _train(run_dir: Path, init_from: Path, train_file: Path, eval_file: Path, *extra: str) -> None:
    args = [
        "--init-from", str(init_from), "--train-file", str(train_file), "--eval-file", str(eval_file),
        "--run-dir", str(run_dir), "--device", "cpu", "--block-size", str(BLOCK), "--eval-every", "0",
        "--eval-sentences", "4", "--log-every", "1", "--max-grad-norm", "0", "--no-progress", *extra,
    ]  # fmt: skip
    assert train.main(args) == 0


def _loss_on(model_dir: Path, texts: list[str]) -> float:
    """−log p(x|z = E[z|x]) averaged over the sentences: the --autoencoder loss of one batch."""
    model, codec = load_trained(model_dir, torch.device("cpu"))
    batch = collate([(e.encoder_ids, e.decoder_ids) for e in (codec.encode(t, BLOCK) for t in texts)], 0, 0)
    with torch.no_grad():
        out = model(
            batch.encoder_ids, batch.encoder_mask, batch.decoder_ids, batch.decoder_mask, sample=False
        )
    return float(out.reconstruction_nll.mean())


@pytest.mark.slow
def test_init_from_starts_at_step_one_from_the_source_weights_with_a_fresh_optimizer(tmp_path, source_model):
    train_file = _sentences(tmp_path / "train.txt", 8, seed=5)
    eval_file = _sentences(tmp_path / "eval.txt", 4, seed=6)
    common = ["--batch-size", "8", "--autoencoder", "--lr", "1e-3"]
    # A first run from the tiny model leaves a run directory with AdamW state at step 2 ...
    first = tmp_path / "first"
    _train(first, source_model, train_file, eval_file, *common, "--steps", "2")
    # ... and a second run starts from that run's model.
    second = tmp_path / "second"
    _train(second, first, train_file, eval_file, *common, "--steps", "1")

    metrics = [m for m in read_metrics(second / "metrics.jsonl") if "loss" in m]
    assert [m["step"] for m in metrics] == [1]
    # Step 1's batch is the whole 8-sentence file: its loss is the source model's loss on it.
    texts = train_file.read_text().splitlines()
    assert metrics[0]["loss"] == pytest.approx(_loss_on(first / "model", texts), rel=1e-5)
    assert metrics[0]["lr"] == pytest.approx(0.0)  # a fresh 1-step schedule ends at 0 after its step

    # A fresh AdamW's first update is lr * g / (|g| + eps): no parameter moves further than lr, and
    # parameters with real gradients move by almost exactly lr. Carried-over moments would not.
    before = OptimusVAE.from_pretrained(first / "model").state_dict()
    after = OptimusVAE.from_pretrained(second / "model").state_dict()
    deltas = torch.cat([(after[k] - before[k]).abs().flatten() for k in before])
    assert deltas.max() <= 1e-3 * (1 + 1e-4)
    assert deltas.max() >= 0.99e-3
    state = torch.load(second / "checkpoints" / "step_000001" / "training_state.pt", weights_only=True)
    assert {float(s["step"]) for s in state["objects"]["optimizer/model"]["state"].values()} == {1.0}
    assert state["step"] == 1
    # The run records what it was started from, and its tokenizers are the source's.
    record = json.loads((second / "config.json").read_text())
    assert record["model"]["init_from"] == str(first / "model")
    assert record["model"]["latent_size"] == 8
    _, codec = load_trained(second, torch.device("cpu"))
    assert codec.encode(texts[0], BLOCK) == grammar_codec().encode(texts[0], BLOCK)
    # The source run is untouched: still its own two steps.
    assert sorted(p.name for p in (first / "checkpoints").iterdir()) == ["step_000002"]


def test_init_from_refuses_options_that_would_change_the_model(tmp_path, source_model, capsys):
    train_file = _sentences(tmp_path / "train.txt", 8, seed=5)
    args = [
        "--init-from",
        str(source_model),
        "--train-file",
        str(train_file),
        "--run-dir",
        str(tmp_path / "r"),
    ]
    assert train.main([*args, "--latent-size", "16"]) == 2
    assert "conflicts with --init-from" in capsys.readouterr().err
    assert train.main([*args, "--decoder", "gpt2"]) == 2
    assert "drop --decoder" in capsys.readouterr().err


@pytest.mark.slow
def test_grad_accum_4x8_gives_the_gradient_of_one_batch_of_32(tmp_path, source_model, monkeypatch):
    train_file = _sentences(tmp_path / "train.txt", 32, seed=7)
    eval_file = _sentences(tmp_path / "eval.txt", 4, seed=8)
    captured: dict[str, list] = {}
    forward_sizes: list[int] = []
    adamw_step = torch.optim.AdamW.step
    vae_forward = OptimusVAE.forward

    def capture_step(self, *args, **kwargs):
        captured[current].append(
            [p.grad.clone() for g in self.param_groups for p in g["params"] if p.grad is not None]
        )
        return adamw_step(self, *args, **kwargs)

    def record_forward(self, encoder_ids, *args, **kwargs):
        forward_sizes.append(encoder_ids.shape[0])
        return vae_forward(self, encoder_ids, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", capture_step)
    monkeypatch.setattr(OptimusVAE, "forward", record_forward)
    # A VAE step with sampled z, β = 1 and per-dimension thresholding: every term of the loss.
    objective = ["--steps", "1", "--beta-schedule", "constant", "--beta-max", "1", "--kl-threshold", "0.05"]
    losses = {}
    for current, batch, accum in (("one_batch", "32", "1"), ("accumulated", "8", "4")):
        captured[current] = []
        forward_sizes.clear()
        run_dir = tmp_path / current
        _train(
            run_dir,
            source_model,
            train_file,
            eval_file,
            *objective,
            "--batch-size",
            batch,
            "--grad-accum",
            accum,
        )
        # Micro-batches really are 8 sentences: that is what bounds the memory.
        assert forward_sizes == ([32] if accum == "1" else [8, 8, 8, 8])
        losses[current] = [m["loss"] for m in read_metrics(run_dir / "metrics.jsonl") if "loss" in m]
    (one_batch,), (accumulated,) = captured["one_batch"], captured["accumulated"]
    assert len(one_batch) == len(accumulated) > 10
    for expected, got in zip(one_batch, accumulated):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert losses["accumulated"] == pytest.approx(losses["one_batch"], rel=1e-5)


@pytest.mark.slow
def test_epochs_set_the_number_of_steps_from_the_corpus_size(tmp_path, source_model):
    train_file = _sentences(tmp_path / "train.txt", 36, seed=9)
    eval_file = _sentences(tmp_path / "eval.txt", 4, seed=10)
    run_dir = tmp_path / "run"
    # 36 sentences in step batches of 4 x 2: 4 whole batches per epoch (the remainder is dropped),
    # 2.5 epochs: 10 steps — the original's t_total = len(loader) // accumulation * epochs.
    _train(run_dir, source_model, train_file, eval_file, "--batch-size", "4", "--grad-accum", "2",
           "--epochs", "2.5", "--steps", "999", "--autoencoder")  # fmt: skip
    steps = [m["step"] for m in read_metrics(run_dir / "metrics.jsonl") if "loss" in m]
    assert steps == list(range(1, 11))
    assert json.loads((run_dir / "config.json").read_text())["run"]["steps"] == 10
