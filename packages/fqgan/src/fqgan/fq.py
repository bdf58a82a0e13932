"""Feature quantization for discriminators: dgm-core's EMA dictionary, attached to D blocks.

FQ-GAN (Zhao et al., ICML 2020) keeps, for each quantized discriminator block,
a dictionary of K feature prototypes that is an exponential moving average of
that block's features on recent real and fake batches
(:class:`dgm_core.quantization.EMAQuantizer` does the nearest-codeword search
and the EMA update). Each forward pass records the commitment loss
``β·‖sg(q) − x‖²`` (a mean per sample) for the loss being minimised: the D loss
on real and fake features, the G loss on fake features. As in the reference
code, D's term is the mean over the real samples *plus* the mean over the fake
samples, also when D sees ``[real; fake]`` in one call
(``pop_loss(batch_parts=(n_real, n_fake))``). Two modes:

- ``loss_only`` (the official code's behaviour, default): the block's output
  goes on unchanged; FQ acts only through the commitment loss.
- ``quantize`` (the paper's figure): the quantized features replace the block's
  output, with a straight-through gradient.

Drop-in use on any discriminator, by hook::

    fq = FeatureQuantizer(dim=256, codebook_size=1024, decay=0.8, commitment_weight=1.0)
    fq.attach(my_discriminator.block3)         # output of block3 is quantized
    logits = my_discriminator(torch.cat([real, fake]))  # runs the hook
    # mean commitment loss of the real part + that of the fake part (FQ-GAN's D loss)
    d_loss = hinge_d_loss(...) + fq.pop_loss(batch_parts=(len(real), len(fake)))

or by an explicit call ``h = fq(h)`` inside ``forward``, which is what the
discriminators in :mod:`fqgan.models` do.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from dgm_core.errors import UserError
from dgm_core.quantization import EMAQuantizer

FQMode = Literal["loss_only", "quantize"]
FQ_MODES = ("none", "loss_only", "quantize")


class FeatureQuantizer(nn.Module):
    """One EMA feature dictionary for one discriminator block.

    Args:
        dim: channels of the block's output (``C`` of ``(B, C, H, W)`` or ``(B, C)``).
        codebook_size: K, the number of prototypes (2^10 for CIFAR-10 in the paper).
        decay: EMA decay of the dictionary (0.8 for CIFAR-10).
        commitment_weight: β of the commitment loss (1.0 for CIFAR-10).
        mode: ``loss_only`` (reference code) or ``quantize`` (straight-through forward).
        **quantizer_kwargs: passed on to :class:`~dgm_core.quantization.EMAQuantizer`
            (``dead_code_threshold``, ``kmeans_init``, ``distance``, ``sync_distributed``).

    Calling the module on features returns the features (``loss_only``) or their
    straight-through quantization (``quantize``), and records the commitment loss of
    every sample; :meth:`pop_loss` turns the records since the last pop into one loss.
    ``perplexity`` and ``dead_codes`` hold the statistics of the last call.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int = 1024,
        decay: float = 0.8,
        commitment_weight: float = 1.0,
        mode: FQMode = "loss_only",
        **quantizer_kwargs,
    ):
        super().__init__()
        if mode not in ("loss_only", "quantize"):
            raise UserError(f"unknown FQ mode '{mode}': expected loss_only or quantize")
        self.mode = mode
        self.quantizer = EMAQuantizer(
            dim, codebook_size, decay=decay, commitment_weight=commitment_weight, **quantizer_kwargs
        )
        self._losses: list[torch.Tensor] = []
        self.perplexity: torch.Tensor | None = None
        self.dead_codes: torch.Tensor | None = None

    @property
    def codebook(self) -> torch.Tensor:
        """The dictionary, ``(K, C)``."""
        return self.quantizer.codebook

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        output = self.quantizer(features)
        # Per sample, so that a call on [real; fake] can still be weighted as the reference
        # weights two separate calls (see pop_loss).
        self._losses.append(output.commitment_loss_per_sample)
        self.perplexity = output.perplexity.detach()
        self.dead_codes = output.dead_codes.detach()
        return output.quantized if self.mode == "quantize" else features

    def pop_loss(self, batch_parts: Sequence[int] | None = None) -> torch.Tensor:
        """The commitment loss recorded since the last pop (0 when none), then forget the records.

        Each recorded call contributes the mean of its per-sample losses. With
        ``batch_parts`` (e.g. ``(n_real, n_fake)`` for a call on ``[real; fake]``) every
        call's batch is cut into consecutive parts of these sizes and the part means are
        added: FQ-GAN adds ``mean(real) + mean(fake)`` to D's loss, twice the mean over
        the concatenated batch.
        """
        losses, self._losses = self._losses, []
        total = self.codebook.new_zeros((), dtype=torch.float32)
        for per_sample in losses:
            parts = [per_sample] if batch_parts is None else _split_batch(per_sample, batch_parts)
            for part in parts:
                total = total + part.float().mean()
        return total

    def attach(self, block: nn.Module) -> RemovableHandle:
        """Quantize ``block``'s output on every forward (a forward hook); returns the removable handle."""

        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            return self(output)

        return block.register_forward_hook(hook)

    def extra_repr(self) -> str:
        return f"mode={self.mode}"


def _split_batch(per_sample: torch.Tensor, batch_parts: Sequence[int]) -> tuple[torch.Tensor, ...]:
    sizes = [int(size) for size in batch_parts]
    if any(size < 1 for size in sizes) or sum(sizes) != per_sample.shape[0]:
        raise ValueError(
            f"batch_parts {tuple(sizes)} do not cut a batch of {per_sample.shape[0]} samples "
            "into non-empty parts"
        )
    return per_sample.split(sizes)


def pop_fq_loss(
    quantizers: Iterable[FeatureQuantizer],
    device: torch.device | None = None,
    batch_parts: Sequence[int] | None = None,
) -> torch.Tensor:
    """Sum of :meth:`FeatureQuantizer.pop_loss` over ``quantizers`` (a zero scalar when there are none)."""
    total = torch.zeros((), device=device)
    for quantizer in quantizers:
        total = total + quantizer.pop_loss(batch_parts).to(total.device)
    return total


def fq_statistics(quantizers: dict[str, FeatureQuantizer]) -> dict[str, float]:
    """Per-layer dictionary perplexity and dead codes of the last forward, for logging."""
    stats: dict[str, float] = {}
    for name, quantizer in quantizers.items():
        if quantizer.perplexity is not None:
            stats[f"fq/perplexity_{name}"] = float(quantizer.perplexity)
        if quantizer.dead_codes is not None:
            stats[f"fq/dead_codes_{name}"] = float(quantizer.dead_codes)
    return stats


def parse_fq_layers(spec: str | Iterable[int], num_blocks: int) -> list[int]:
    """``"0,1,2,3"`` (or ints) → sorted unique block indices, each checked against ``num_blocks``."""
    if isinstance(spec, str):
        items = [s.strip() for s in spec.split(",") if s.strip()]
        try:
            layers = [int(s) for s in items]
        except ValueError:
            raise UserError(f"--fq-layers must be comma-separated block indices, got '{spec}'") from None
    else:
        layers = [int(i) for i in spec]
    for index in layers:
        if not 0 <= index < num_blocks:
            raise UserError(
                f"FQ layer index {index} does not exist: this discriminator has blocks 0..{num_blocks - 1}"
            )
    return sorted(set(layers))


class QuantizedDiscriminator(nn.Module):
    """Base of the discriminators in :mod:`fqgan.models`: a list of ``blocks`` with optional FQ after any.

    Subclasses build ``self.blocks`` (an ``nn.ModuleList``) and ``self.block_channels``
    (output channels of each block) and run :meth:`run_blocks` in ``forward``.
    """

    blocks: nn.ModuleList
    block_channels: list[int]

    def __init__(self) -> None:
        super().__init__()
        self.fq = nn.ModuleDict()

    def enable_feature_quantization(
        self,
        layers: str | Iterable[int],
        *,
        mode: FQMode = "loss_only",
        codebook_size: int = 1024,
        decay: float = 0.8,
        commitment_weight: float = 1.0,
        **quantizer_kwargs,
    ) -> list[int]:
        """Give each block in ``layers`` its own dictionary (dim = that block's channels)."""
        indices = parse_fq_layers(layers, len(self.blocks))
        self.fq = nn.ModuleDict(
            {
                str(i): FeatureQuantizer(
                    self.block_channels[i],
                    codebook_size,
                    decay=decay,
                    commitment_weight=commitment_weight,
                    mode=mode,
                    **quantizer_kwargs,
                )
                for i in indices
            }
        )
        return indices

    @property
    def quantizers(self) -> dict[str, FeatureQuantizer]:
        return {f"block{name}": module for name, module in self.fq.items()}  # type: ignore[misc]

    def run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        for index, block in enumerate(self.blocks):
            h = block(h)
            if str(index) in self.fq:
                h = self.fq[str(index)](h)
        return h

    def pop_fq_loss(self, batch_parts: Sequence[int] | None = None) -> torch.Tensor:
        """Commitment loss of every quantized block over every forward since the last pop.

        After a call on ``[real; fake]`` pass ``batch_parts=(n_real, n_fake)``: each block then
        contributes the mean over the real samples plus the mean over the fake ones, FQ-GAN's
        weighting of D's FQ loss (see :meth:`FeatureQuantizer.pop_loss`).
        """
        device = next(self.parameters()).device
        return pop_fq_loss(self.fq.values(), device, batch_parts)  # type: ignore[arg-type]
