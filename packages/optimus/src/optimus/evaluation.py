"""Evaluating a VAE on held-out sentences: the language-modelling and latent metrics, and sample texts.

Metrics (per the reference evaluation, vae-lagging-encoder / Optimus conventions):

* ``ppl`` — perplexity from the importance-weighted bound with K posterior samples:
  ``log p(x) ≈ logsumexp_k [log p(x|z_k) + log p(z_k) − log q(z_k|x)] − log K``;
* ``nll`` — the same bound per sentence, negated and averaged (nats);
* ``neg_elbo`` — reconstruction + KL with one posterior sample, per sentence;
* ``reconstruction`` — −log p(x|z) with one posterior sample, per sentence;
* ``kl`` — KL(q(z|x) || N(0, I)) per sentence; ``mi`` — mutual information I(x; z) under the
  aggregate posterior of the whole set; ``au`` — active units at δ = 0.01.

PPL's token count is every token the decoder predicts: the sentence's tokens plus ``<EOS>``,
not ``<BOS>`` (which it conditions on), never padding; ``num_tokens`` says how many that was.
``ppl_original`` divides the same bound by the original code's count instead (``calc_iwnll`` in
ChunyuanLI/Optimus sums ``gpt2_token_length``, the length of ``<BOS> tokens <EOS>``: one more per
sentence, the unpredicted ``<BOS>``): ``num_tokens_original`` = ``num_tokens`` + sentences when
nothing is truncated. Papers comparing with Optimus's numbers need that one; it is lower.

Sentences longer than the block size (in either tokenizer's tokens, special tokens included) are
``drop``-ped and counted (``dropped``) — what the original's evaluation does with its datasets,
whose loader drops lines of more than ``block_size`` words — or ``truncate``-d (the decoder
copy loses its ``<EOS>``) and counted (``truncated``). The block size is the model's own unless
given.

Called under ``Precision.autocast()`` the forward passes run in that precision; every
log-likelihood term and sum is computed in float32 (the decoder's logits are cast before the
cross-entropy, the posterior parameters are float32), and MI/AU in float64 by dgm-core.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from dgm_core.errors import UserError
from dgm_core.metrics.latent import (
    active_units,
    gaussian_kl,
    iw_log_likelihood,
    mutual_information,
    perplexity,
)
from optimus.data import iterate_batches
from optimus.latents import DecodingOptions, decode_latents, posterior_means
from optimus.tokenization import SentenceCodec
from optimus.vae import OptimusVAE

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


LONG_SENTENCES = ("drop", "truncate")


def encode_for_evaluation(
    texts: list[str], codec: SentenceCodec, block_size: int, long_sentences: str
) -> tuple[list, int, int]:
    """``(encoder_ids, decoder_ids)`` of the sentences evaluated, and how many were truncated and dropped."""
    if long_sentences not in LONG_SENTENCES:
        raise UserError(f"long_sentences must be one of {', '.join(LONG_SENTENCES)}, got {long_sentences!r}")
    pairs, truncated, dropped = [], 0, 0
    for text in texts:
        encoded = codec.encode(text, block_size)
        if encoded.truncated:
            if long_sentences == "drop":
                dropped += 1
                continue
            truncated += 1
        pairs.append((encoded.encoder_ids, encoded.decoder_ids))
    return pairs, truncated, dropped


@torch.no_grad()
def evaluate_model(
    model: OptimusVAE,
    codec: SentenceCodec,
    texts: list[str],
    device: torch.device,
    num_iw_samples: int = 100,
    batch_size: int = 32,
    block_size: int | None = None,
    long_sentences: str = "drop",
    iw_chunk: int = 25,
) -> dict:
    """All metrics of the module docstring over ``texts`` (model in eval mode).

    ``block_size`` defaults to the model's own; ``long_sentences`` is ``drop`` or ``truncate``.
    The importance samples go through the decoder ``iw_chunk`` at a time: the peak is one decoder
    pass over ``batch_size × iw_chunk`` sequences, whose logits alone take
    ``batch_size · iw_chunk · block_size · vocabulary · 4`` bytes (32 · 25 · 64 · 50 260 · 4 ≈
    10 GB for GPT-2's vocabulary at the defaults; lower ``iw_chunk`` or ``batch_size`` on a small
    machine). The result does not depend on it.
    """
    if iw_chunk < 1:
        raise UserError(f"iw_chunk must be at least 1, got {iw_chunk}")
    block_size = block_size or model.block_size
    pairs, truncated, dropped = encode_for_evaluation(texts, codec, block_size, long_sentences)
    if not pairs:
        raise UserError(
            f"all {len(texts)} test sentence(s) are longer than the block size ({block_size} tokens) and "
            "were dropped: use --long-sentences truncate or a larger --block-size"
        )
    was_training = model.training
    model.eval()
    totals = {"iw_nll": 0.0, "rec": 0.0, "kl": 0.0, "tokens": 0, "sequence_tokens": 0}
    means, logvars = [], []
    for batch in iterate_batches(pairs, batch_size, codec):
        batch = batch.to(device)
        log_w, rec = (
            iw_log_weights(model, batch, num_iw_samples, iw_chunk) if num_iw_samples > 0 else (None, None)
        )
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
        totals["sequence_tokens"] += int(batch.decoder_mask.sum())  # <BOS> included: the original's count
        means.append(mean.cpu())
        logvars.append(logvar.cpu())
    model.train(was_training)
    n = len(pairs)
    all_means, all_logvars = torch.cat(means), torch.cat(logvars)
    au, _ = active_units(all_means, 0.01) if n >= 2 else (0, None)
    result = {
        "num_sentences": n,
        "num_tokens": totals["tokens"],
        "num_tokens_original": totals["sequence_tokens"],
        "block_size": block_size,
        "long_sentences": long_sentences,
        "truncated": truncated,
        "dropped": dropped,
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
        result["ppl_original"] = perplexity(totals["iw_nll"], totals["sequence_tokens"])
    else:
        result["ppl_elbo"] = perplexity(totals["rec"] + totals["kl"], totals["tokens"])
        result["ppl_elbo_original"] = perplexity(totals["rec"] + totals["kl"], totals["sequence_tokens"])
    return result


def write_samples(
    model: OptimusVAE,
    codec: SentenceCodec,
    texts: list[str],
    path: Path,
    device: torch.device,
    num: int,
    block_size: int,
) -> None:
    """JSON lines at ``path``: greedy reconstructions of the first ``num`` texts, then prior samples."""
    was_training = model.training
    model.eval()
    texts = texts[:num]
    options = DecodingOptions(max_length=block_size - 1)  # the block holds <BOS> too
    reconstructions = decode_latents(model, codec, posterior_means(model, codec, texts, device), options)
    prior = decode_latents(model, codec, torch.randn(len(texts), model.latent_size, device=device), options)
    model.train(was_training)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for text, output in zip(texts, reconstructions):
            handle.write(json.dumps({"kind": "reconstruction", "input": text, "output": output}) + "\n")
        for output in prior:
            handle.write(json.dumps({"kind": "prior_sample", "output": output}) + "\n")
