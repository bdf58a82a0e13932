"""Sentences to latents and back, in batches: what generation, classification and training samples share.

Called under ``Precision.autocast()`` the forward passes run in that precision; the returned
latents and features are float32 either way. Sentences are encoded with the model's own block
size (longer ones truncated) unless a block size is given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from optimus.data import TextBatch, encode_texts, iterate_batches
from optimus.tokenization import SentenceCodec
from optimus.vae import OptimusVAE


@torch.no_grad()
def _encode_in_batches(
    model: OptimusVAE,
    codec: SentenceCodec,
    texts: list[str],
    device: torch.device,
    features_of: Callable[[TextBatch], torch.Tensor],
    batch_size: int,
    block_size: int | None,
) -> torch.Tensor:
    pairs, _ = encode_texts(texts, codec, block_size or model.block_size)
    return torch.cat(
        [features_of(batch.to(device)).float() for batch in iterate_batches(pairs, batch_size, codec)]
    )


def posterior_means(
    model: OptimusVAE,
    codec: SentenceCodec,
    texts: list[str],
    device: torch.device,
    batch_size: int = 64,
    block_size: int | None = None,
) -> torch.Tensor:
    """``E[z|x]`` for each sentence, ``[N, latent]`` on ``device``."""
    return _encode_in_batches(
        model,
        codec,
        texts,
        device,
        lambda batch: model.encode(batch.encoder_ids, batch.encoder_mask)[0],
        batch_size,
        block_size,
    )


def pooled_features(
    model: OptimusVAE,
    codec: SentenceCodec,
    texts: list[str],
    device: torch.device,
    batch_size: int = 64,
    block_size: int | None = None,
) -> torch.Tensor:
    """The encoder's pooled output for each sentence, ``[N, hidden]`` on ``device``."""
    return _encode_in_batches(
        model,
        codec,
        texts,
        device,
        lambda batch: model.encoder_features(batch.encoder_ids, batch.encoder_mask),
        batch_size,
        block_size,
    )


@dataclass
class DecodingOptions:
    strategy: str = "greedy"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_length: int = 40


def decode_latents(
    model: OptimusVAE,
    codec: SentenceCodec,
    z: torch.Tensor,
    options: DecodingOptions,
    generator: torch.Generator | None = None,
) -> list[str]:
    """One sentence decoded from each row of ``z``."""
    ids = model.generate(
        z,
        options.max_length,
        options.strategy,
        options.temperature,
        options.top_k,
        options.top_p,
        generator=generator,
    )
    return [codec.decode(row.tolist()) for row in ids]
