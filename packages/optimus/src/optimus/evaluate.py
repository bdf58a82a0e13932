"""``optimus-eval``: language-modelling metrics of a trained Optimus VAE on a test file.

Reports, per the reference evaluation (vae-lagging-encoder / Optimus conventions):

* ``ppl`` — perplexity from the importance-weighted bound with K posterior samples (default 100):
  ``log p(x) ≈ logsumexp_k [log p(x|z_k) + log p(z_k) − log q(z_k|x)] − log K``;
* ``nll`` — the same bound per sentence, negated and averaged (nats);
* ``neg_elbo`` — reconstruction + KL with one posterior sample, per sentence;
* ``reconstruction`` — −log p(x|z) with one posterior sample, per sentence;
* ``kl`` — KL(q(z|x) || N(0, I)) per sentence; ``mi`` — mutual information I(x; z) under the
  aggregate posterior of the whole test set; ``au`` — active units at δ = 0.01.

PPL's token count is every token the decoder predicts: the sentence's tokens plus ``<EOS>``,
not ``<BOS>`` (which it conditions on), never padding; ``num_tokens`` in the output says how
many that was.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from dgm_core import cli
from dgm_core.cli import option
from dgm_core.errors import UserError
from dgm_core.metrics.latent import (
    active_units,
    gaussian_kl,
    iw_log_likelihood,
    mutual_information,
    perplexity,
)
from dgm_core.runtime.device import resolve_device, seed_everything
from dgm_core.training import RuntimeConfig
from optimus.data import encode_texts, iterate_batches, read_sentences
from optimus.grammar import generate_corpus
from optimus.tokenization import SentenceCodec
from optimus.vae import OptimusVAE

DEFAULT_MODEL = "runs/optimus/model"
_LOG_2PI = math.log(2 * math.pi)


def _log_normal(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return -0.5 * (((z - mean) ** 2) / logvar.exp() + logvar + _LOG_2PI).sum(dim=-1)


@torch.no_grad()
def iw_log_weights(
    model: OptimusVAE, batch, num_samples: int, chunk: int = 25
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log importance weights ``[B, K]`` and the one-sample reconstruction NLL ``[B]`` of a batch.

    ``log w_k = log p(x|z_k) + log p(z_k) − log q(z_k|x)`` with ``z_k ~ q(z|x)``; samples are
    scored ``chunk`` at a time (the batch is repeated ``chunk`` times through the decoder).
    """
    mean, logvar = model.encode(batch.encoder_ids, batch.encoder_mask)
    z_all = model.reparameterize(mean, logvar, num_samples)  # [B, K, D]
    size = mean.shape[0]
    weights = []
    rec_first = None
    for start in range(0, num_samples, chunk):
        z = z_all[:, start : start + chunk]  # [B, k, D]
        k = z.shape[1]
        flat_z = z.reshape(size * k, -1)
        ids = batch.decoder_ids.repeat_interleave(k, dim=0)
        mask = batch.decoder_mask.repeat_interleave(k, dim=0)
        rec_nll, _ = model.reconstruction_nll(flat_z, ids, mask)
        log_px_z = -rec_nll.view(size, k)
        if rec_first is None:  # the first sample's reconstruction is the one-sample ELBO's term
            rec_first = rec_nll.view(size, k)[:, 0]
        log_pz = _log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
        log_qz = _log_normal(z, mean.unsqueeze(1), logvar.unsqueeze(1))
        weights.append(log_px_z + log_pz - log_qz)
    return torch.cat(weights, dim=1), rec_first


@torch.no_grad()
def evaluate_model(
    model: OptimusVAE,
    codec: SentenceCodec,
    texts: list[str],
    device: torch.device,
    num_iw_samples: int = 100,
    batch_size: int = 32,
    block_size: int = 64,
) -> dict:
    """All metrics of the module docstring over ``texts`` (model in eval mode)."""
    was_training = model.training
    model.eval()
    pairs, truncated = encode_texts(texts, codec, block_size)
    totals = {"iw_nll": 0.0, "rec": 0.0, "kl": 0.0, "tokens": 0}
    means, logvars = [], []
    for batch in iterate_batches(pairs, batch_size, codec):
        batch = batch.to(device)
        log_w, rec = iw_log_weights(model, batch, num_iw_samples) if num_iw_samples > 0 else (None, None)
        mean, logvar = model.encode(batch.encoder_ids, batch.encoder_mask)
        if rec is None:
            rec, _ = model.reconstruction_nll(
                model.reparameterize(mean, logvar), batch.decoder_ids, batch.decoder_mask
            )
        else:
            totals["iw_nll"] += float(-iw_log_likelihood(log_w).sum())
        totals["rec"] += float(rec.sum())
        totals["kl"] += float(gaussian_kl(mean, logvar).sum())
        totals["tokens"] += int(batch.decoder_mask[:, 1:].sum())
        means.append(mean.cpu())
        logvars.append(logvar.cpu())
    model.train(was_training)
    n = len(pairs)
    all_means, all_logvars = torch.cat(means), torch.cat(logvars)
    au, _ = active_units(all_means, 0.01) if n >= 2 else (0, None)
    result = {
        "num_sentences": n,
        "num_tokens": totals["tokens"],
        "truncated": truncated,
        "iw_samples": num_iw_samples,
        "reconstruction": totals["rec"] / n,
        "kl": totals["kl"] / n,
        "neg_elbo": (totals["rec"] + totals["kl"]) / n,
        "mi": mutual_information(all_means, all_logvars),
        "au": au,
        "latent_size": model.latent_size,
    }
    if num_iw_samples > 0:
        result["nll"] = totals["iw_nll"] / n
        result["ppl"] = perplexity(totals["iw_nll"], totals["tokens"])
    else:
        result["ppl_elbo"] = perplexity(totals["rec"] + totals["kl"], totals["tokens"])
    return result


def load_trained(model_dir: str | Path, device: torch.device) -> tuple[OptimusVAE, SentenceCodec]:
    """A saved model folder (or a run directory holding ``model/``) and its tokenizers."""
    folder = Path(model_dir)
    if (folder / "model" / "config.json").is_file():  # a run directory
        folder = folder / "model"
    if not folder.exists():
        raise UserError(
            f"model folder '{folder}' not found; train one first with optimus-train "
            f"(its default is {DEFAULT_MODEL})"
        )
    model = OptimusVAE.from_pretrained(folder).to(device)
    codec = SentenceCodec.from_pretrained(folder)
    if (
        codec.decoder_vocab_size > model.decoder.config.vocab_size
        or codec.encoder_vocab_size > model.encoder.config.vocab_size
    ):
        raise UserError(f"the tokenizers in '{folder}' do not match the model's vocabulary sizes")
    model.eval()
    return model, codec


def embedded_test_texts(num: int, seed: int = 1) -> list[str]:
    """Held-out embedded sentences (a different seed stream from training's default seed 0)."""
    return [s.text for s in generate_corpus(num, seed=10_000 + seed)]


@dataclass
class EvalConfig(RuntimeConfig):
    model: str = option(DEFAULT_MODEL, help="Saved model folder (or a run directory holding model/).")
    test_file: str = option(
        "", help="Test sentences (text, label<TAB>text or JSONL); empty: embedded held-out corpus."
    )
    data_format: str = option("auto", help="Input format.", choices=("auto", "text", "labeled", "jsonl"))
    num_sentences: int = option(500, help="Embedded test sentences when no --test-file is given.")
    iw_samples: int = option(
        100, help="K, the importance samples per sentence for the PPL bound (0: ELBO only)."
    )
    batch_size: int = option(32, help="Sentences per batch.")
    block_size: int = option(64, help="Longest token sequence; longer sentences are truncated and counted.")
    output: str = option("", help="Where to write the JSON (default: <model>/../eval.json).")


def evaluate(cfg: EvalConfig) -> dict:
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    model, codec = load_trained(cfg.model, device)
    if cfg.test_file:
        texts = read_sentences(cfg.test_file, cfg.data_format).texts
    else:
        texts = embedded_test_texts(cfg.num_sentences, cfg.seed)
    if cfg.iw_samples < 0:
        raise UserError(f"iw_samples must be >= 0, got {cfg.iw_samples}")
    if not texts:
        raise UserError("nothing to evaluate: --num-sentences must be at least 1")
    result = evaluate_model(model, codec, texts, device, cfg.iw_samples, cfg.batch_size, cfg.block_size)
    result["model"] = str(cfg.model)
    result["test_file"] = cfg.test_file or "embedded"
    model_folder = Path(cfg.model)
    output = (
        Path(cfg.output)
        if cfg.output
        else (model_folder.parent if model_folder.name == "model" else model_folder) / "eval.json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    print(format_table(result))
    print(f"wrote {output}")
    return result


def format_table(result: dict) -> str:
    rows = [
        (f"PPL (IW, K={result['iw_samples']})", result.get("ppl", result.get("ppl_elbo"))),
        ("NLL / sentence", result.get("nll")),
        ("-ELBO / sentence", result["neg_elbo"]),
        ("reconstruction", result["reconstruction"]),
        ("KL", result["kl"]),
        ("MI", result["mi"]),
        ("AU (delta 0.01)", f"{result['au']} / {result['latent_size']}"),
        ("sentences / tokens", f"{result['num_sentences']} / {result['num_tokens']}"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = []
    for name, value in rows:
        if value is None:
            continue
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{name:<{width}}  {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return cli.run(
        evaluate,
        EvalConfig,
        argv,
        prog="optimus-eval",
        description="PPL (importance-weighted), -ELBO, reconstruction, KL, MI and AU of an Optimus model.",
    )


if __name__ == "__main__":
    sys.exit(main())
