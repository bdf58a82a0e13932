"""The EMA dictionary quantizer of FQ-GAN (and VQ-VAE-2): ``EMAQuantizer``.

Features are snapped to their nearest codeword of a dictionary that is not learned by gradient descent
but kept as an exponential moving average of the features assigned to each codeword. The arithmetic
is the reference's (FQ-GAN's ``Quantize``); what changes is how it is computed and guarded:

- the search and the statistics never build N×K tensors (see :mod:`dgm_core.quantization.ops`);
- inputs of any floating dtype are upcast inside, with autocast switched off, so the dictionary and its
  statistics stay float32 under bf16/fp16 training;
- with ``sync_distributed`` the counts and sums are summed over ranks in one all-reduce before the
  update, so every rank keeps the same dictionary (the reference, under DataParallel, learned from
  1/n_gpu of each batch on a replica that was then thrown away);
- bad features (NaN/inf) raise before anything is written, on every rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dgm_core.quantization.ops import (
    QuantizationInputError,
    codeword_statistics,
    ema_update_,
    kmeans,
    laplace_smoothed_cluster_size,
    nearest_codeword,
    perplexity,
)
from dgm_core.runtime.distributed import all_reduce_sum

__all__ = ["EMAQuantizer", "QuantizerOutput"]

_DISTANCES = ("l2", "cosine")


@dataclass
class QuantizerOutput:
    """What one :class:`EMAQuantizer` call returns.

    Attributes:
        quantized: the codewords in the input's shape, layout and dtype, straight-through
            (``x + sg(q − x)``): the forward value is the codeword, the gradient goes to ``x`` as is.
        indices: int64 codeword index per feature vector; the input's shape without the channel dim.
        commitment_loss: scalar, ``β · mean((sg(q) − x)²)`` over all elements (float32).
        commitment_loss_per_sample: (batch,), the same mean taken per sample (``β`` included), so
            ``commitment_loss == commitment_loss_per_sample.mean()``. For (N, C) input each row is a
            sample.
        perplexity: scalar ``exp(−Σ p log p)`` of this batch's code usage ``p``.
        dead_codes: int64 scalar, how many codewords no feature of this batch chose.
        usage: (K,) float32 counts of features per codeword in this batch.

    In training mode with ``sync_distributed`` under torch.distributed, ``perplexity``, ``dead_codes``
    and ``usage`` describe the global batch (all ranks), since they come from the all-reduced counts;
    otherwise the local batch.
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    commitment_loss: torch.Tensor
    commitment_loss_per_sample: torch.Tensor
    perplexity: torch.Tensor
    dead_codes: torch.Tensor
    usage: torch.Tensor


class _StraightThrough(torch.autograd.Function):
    """Forward: the codewords themselves. Backward: the gradient goes to the features unchanged.

    The same as the reference's ``x + sg(q − x)`` without its two N×C passes, and the forward value is
    exactly the codeword rather than ``x + (q − x)`` rounded.
    """

    @staticmethod
    def forward(ctx, features: torch.Tensor, codewords: torch.Tensor) -> torch.Tensor:
        return codewords

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class _SquaredError(torch.autograd.Function):
    """Per-row ``‖x − sg(q)‖²`` of (N, C) features and codewords, with its gradient for ``x`` only.

    Computed over 32 MB row blocks, so the forward never holds an N×C residual (autograd would keep
    one alive until backward); the backward rebuilds ``x − q`` once, when it is needed.
    """

    block_bytes = 32 * 1024 * 1024  # few blocks: each op is a parallel region, and regions are costly

    @staticmethod
    def forward(ctx, features: torch.Tensor, codewords: torch.Tensor) -> torch.Tensor:
        out = features.new_empty(features.shape[0])
        step = max(1, _SquaredError.block_bytes // (4 * max(1, features.shape[1])))
        for start in range(0, features.shape[0], step):
            residual = features[start : start + step] - codewords[start : start + step]
            torch.linalg.vector_norm(residual, dim=1, out=out[start : start + step])
        ctx.save_for_backward(features, codewords)
        return out.square_()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None
        features, codewords = ctx.saved_tensors
        return (features - codewords).mul_(2.0 * grad.unsqueeze(1)), None


class EMAQuantizer(nn.Module):
    """Quantize features against a dictionary kept as an EMA of the features assigned to it.

    Args:
        dim: channels ``C`` of a feature vector.
        codebook_size: codewords ``K`` (FQ-GAN uses 2^10 on CIFAR-10).
        decay: EMA decay ``d`` of the statistics (FQ-GAN: 0.8).
        eps: Laplace smoothing of the cluster sizes (FQ-GAN: 1e-5).
        commitment_weight: ``β`` of the commitment loss (FQ-GAN: 1.0).
        dead_code_threshold: when > 0, a codeword that no feature chose for this many consecutive
            training steps is revived: it is replaced by a feature drawn from the current batch.
            0 (default, like FQ-GAN) never revives.
        kmeans_init: when True, the first training batch runs ``kmeans_iters`` Lloyd iterations and
            the dictionary starts from the centroids instead of N(0, 1).
        kmeans_iters: Lloyd iterations for ``kmeans_init``.
        distance: ``"l2"`` (FQ-GAN) or ``"cosine"``: features and codewords are L2-normalised, the
            search and the EMA work on the unit sphere, and ``quantized`` is the unit codeword.
        sync_distributed: sum counts and sums over ranks before each update (a no-op outside
            torch.distributed).
        chunk_size: rows scored per GEMM by the torch search (default: sized for the device).
        search_backend: ``"auto"`` (fused Triton kernel on CUDA, chunked torch elsewhere), ``"torch"``
            or ``"triton"``; see :func:`~dgm_core.quantization.nearest_codeword`.

    Buffers (all float32 but ``unused_steps``/``initialized``): ``codebook`` (K, C), ``cluster_size``
    (K,), ``embed_avg`` (K, C), ``unused_steps`` (K,) int64 consecutive training steps without a
    feature, ``initialized`` (bool, False until k-means ran when ``kmeans_init``). The reference stores
    the dictionary as (C, K) ``embed``; :meth:`load_state_dict` accepts such a state dict too.

    Layouts: (N, C); (B, T, C) channel-last sequences; (B, C, H, W) channel-first feature maps.
    In eval mode the dictionary is never updated.
    """

    codebook: torch.Tensor
    cluster_size: torch.Tensor
    embed_avg: torch.Tensor
    unused_steps: torch.Tensor
    initialized: torch.Tensor

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        decay: float = 0.8,
        eps: float = 1e-5,
        commitment_weight: float = 1.0,
        *,
        dead_code_threshold: int = 0,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        distance: str = "l2",
        sync_distributed: bool = True,
        chunk_size: int | None = None,
        search_backend: str = "auto",
    ) -> None:
        super().__init__()
        if int(dim) != dim or dim < 1:
            raise QuantizationInputError(f"dim must be a positive integer; got {dim!r}")
        if int(codebook_size) != codebook_size or codebook_size < 1:
            raise QuantizationInputError(
                f"codebook_size (K) must be a positive integer; got {codebook_size!r}"
            )
        if not 0.0 <= decay < 1.0:
            raise QuantizationInputError(f"decay must be in [0, 1); got {decay!r}")
        if not eps > 0.0:
            raise QuantizationInputError(f"eps must be > 0; got {eps!r}")
        if commitment_weight < 0.0:
            raise QuantizationInputError(f"commitment_weight must be >= 0; got {commitment_weight!r}")
        if dead_code_threshold < 0:
            raise QuantizationInputError(
                f"dead_code_threshold must be >= 0 (0 = off); got {dead_code_threshold!r}"
            )
        if kmeans_iters < 1:
            raise QuantizationInputError(f"kmeans_iters must be >= 1; got {kmeans_iters!r}")
        if distance not in _DISTANCES:
            raise QuantizationInputError(f"distance must be one of {_DISTANCES}; got {distance!r}")
        if chunk_size is not None and chunk_size < 1:
            raise QuantizationInputError(f"chunk_size must be >= 1; got {chunk_size!r}")
        if search_backend not in ("auto", "torch", "triton"):
            raise QuantizationInputError(
                f"search_backend must be 'auto', 'torch' or 'triton'; got {search_backend!r}"
            )
        self.dim = int(dim)
        self.codebook_size = int(codebook_size)
        self.decay = float(decay)
        self.eps = float(eps)
        self.commitment_weight = float(commitment_weight)
        self.dead_code_threshold = int(dead_code_threshold)
        self.kmeans_init = bool(kmeans_init)
        self.kmeans_iters = int(kmeans_iters)
        self.distance = distance
        self.sync_distributed = bool(sync_distributed)
        self.chunk_size = chunk_size
        self.search_backend = search_backend

        codebook = torch.randn(self.codebook_size, self.dim)
        if distance == "cosine":
            codebook = F.normalize(codebook, dim=1)
        self.register_buffer("codebook", codebook)
        self.register_buffer("cluster_size", torch.zeros(self.codebook_size))
        self.register_buffer("embed_avg", codebook.clone())
        self.register_buffer("unused_steps", torch.zeros(self.codebook_size, dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(not self.kmeans_init))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, codebook_size={self.codebook_size}, decay={self.decay}, eps={self.eps}, "
            f"commitment_weight={self.commitment_weight}, distance={self.distance!r}, "
            f"dead_code_threshold={self.dead_code_threshold}, kmeans_init={self.kmeans_init}"
        )

    # -- layouts -------------------------------------------------------------------------------

    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) view/copy of the features, checking shape and dtype first."""
        if not isinstance(x, torch.Tensor):
            raise QuantizationInputError(f"EMAQuantizer expects a tensor; got {type(x).__name__}")
        if not x.is_floating_point():
            raise QuantizationInputError(f"EMAQuantizer expects floating-point features; got dtype {x.dtype}")
        if x.dim() not in (2, 3, 4):
            raise QuantizationInputError(
                "EMAQuantizer expects (N, C), (B, T, C) or (B, C, H, W) features; "
                f"got {x.dim()}-D shape {tuple(x.shape)}"
            )
        channel_dim = 1 if x.dim() == 4 else -1
        if x.shape[channel_dim] != self.dim:
            where = "dim 1 of (B, C, H, W)" if x.dim() == 4 else "the last dim"
            raise QuantizationInputError(
                f"EMAQuantizer(dim={self.dim}) got {x.shape[channel_dim]} channels in {where}, "
                f"shape {tuple(x.shape)}"
            )
        if x.numel() == 0:
            raise QuantizationInputError(f"EMAQuantizer got an empty batch, shape {tuple(x.shape)}")
        if x.dim() == 4:
            x = x.permute(0, 2, 3, 1)
        return x.reshape(-1, self.dim)

    def _unflatten(self, flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if like.dim() == 4:
            b, c, h, w = like.shape
            return flat.view(b, h, w, c).permute(0, 3, 1, 2)
        return flat.view(like.shape)

    # -- distributed helpers -------------------------------------------------------------------

    def _syncing(self) -> bool:
        return (
            self.sync_distributed and torch.distributed.is_available() and torch.distributed.is_initialized()
        )

    def _from_rank0(self, tensor: torch.Tensor, is_rank0: bool) -> torch.Tensor:
        """Rank 0's ``tensor`` on every rank, with the all-reduce the module already relies on."""
        if not self._syncing():
            return tensor
        if not is_rank0:
            tensor = torch.zeros_like(tensor)
        return all_reduce_sum(tensor)

    def _is_rank0(self) -> bool:
        return not self._syncing() or torch.distributed.get_rank() == 0

    # -- forward -------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> QuantizerOutput:
        """Quantize ``x`` ((N, C), (B, T, C) or (B, C, H, W)); in training mode also update the dictionary."""
        flat = self._flatten(x)
        # Under autocast the GEMM would run in bf16/fp16; the dictionary arithmetic must not.
        with torch.autocast(device_type=x.device.type, enabled=False):
            features = flat.float()
            if self.distance == "cosine":
                features = F.normalize(features, dim=1)
            detached = features.detach()
            if self.training and not bool(self.initialized):
                self._initialize_by_kmeans(detached)
            indices, sq_distances = nearest_codeword(
                detached, self.codebook, self.chunk_size, backend=self.search_backend
            )
            # The reference looks the codewords up before the EMA step; so do we.
            codewords = self.codebook.index_select(0, indices)
            if self.training:
                counts = self._update_dictionary(detached, indices, sq_distances)
            else:
                self._raise_if_nonfinite(sq_distances, detached)
                counts = torch.bincount(indices, minlength=self.codebook_size).float()

            quantized = _StraightThrough.apply(features, codewords).to(x.dtype)
            # β·mean((sg(q) − x)²) per sample, from per-vector squared errors (no N×C residual kept).
            vector_error = _SquaredError.apply(features, codewords)
            elements_per_sample = math.prod(x.shape[1:])
            per_sample = vector_error.view(x.shape[0], -1).sum(1) * (
                self.commitment_weight / elements_per_sample
            )
            commitment_loss = per_sample.mean()
        return QuantizerOutput(
            quantized=self._unflatten(quantized, x),
            indices=indices.view(x.shape[:1] + x.shape[2:] if x.dim() == 4 else x.shape[:-1]),
            commitment_loss=commitment_loss,
            commitment_loss_per_sample=per_sample,
            perplexity=perplexity(counts),
            dead_codes=(counts == 0).sum(),
            usage=counts,
        )

    # -- training-mode pieces ------------------------------------------------------------------

    def _raise_if_nonfinite(self, sq_distances: torch.Tensor, features: torch.Tensor) -> None:
        if bool(torch.isfinite(sq_distances).all()):
            return
        bad_rows = (~torch.isfinite(features).all(1)).nonzero().flatten()
        if bad_rows.numel():
            row = int(bad_rows[0])
            raise QuantizationInputError(
                f"EMAQuantizer: features contain NaN or inf ({bad_rows.numel()} of {features.shape[0]} "
                f"vectors, first at flat row {row}: {features[row, :4].tolist()}...); "
                "the dictionary was not updated"
            )
        raise QuantizationInputError(
            "EMAQuantizer: squared distances overflow float32 (feature or codeword norms around "
            f"{float(features.abs().max()):.3g}); the dictionary was not updated"
        )

    def _update_dictionary(
        self, features: torch.Tensor, indices: torch.Tensor, sq_distances: torch.Tensor
    ) -> torch.Tensor:
        """EMA step from this batch (summed over ranks); returns the (global) counts."""
        k, c = self.codebook_size, self.dim
        # Sums, counts and a bad-feature flag in one flat buffer: one all-reduce syncs all three, and
        # every rank learns that some rank saw NaN/inf, so all raise together instead of deadlocking.
        stats = features.new_empty(k * c + k + 1)
        sums = stats[: k * c].view(k, c)
        counts = stats[k * c : k * c + k]
        nonfinite = ~torch.isfinite(sq_distances)
        stats[-1] = nonfinite.sum()
        codeword_statistics(features, indices, k, counts_out=counts, sums_out=sums)
        if self._syncing():
            all_reduce_sum(stats)
        if bool(stats[-1] > 0):
            if bool(nonfinite.any()):
                self._raise_if_nonfinite(sq_distances, features)
            raise QuantizationInputError(
                "EMAQuantizer: another rank's features contain NaN or inf; the dictionary was not updated"
            )

        ema_update_(self.codebook, self.cluster_size, self.embed_avg, counts, sums, self.decay, self.eps)
        if self.distance == "cosine":
            self.codebook.copy_(F.normalize(self.codebook, dim=1))
        unused = counts == 0
        self.unused_steps.add_(1).masked_fill_(~unused, 0)
        if self.dead_code_threshold > 0:
            self._revive_dead_codes(features)
        return counts.clone()

    def _revive_dead_codes(self, features: torch.Tensor) -> None:
        dead = (self.unused_steps >= self.dead_code_threshold).nonzero().flatten()
        if dead.numel() == 0:  # the same on every rank: the counts behind it are global
            return
        is_rank0 = self._is_rank0()
        replacements = features.new_zeros(dead.numel(), self.dim)
        if is_rank0 and features.shape[0] > 0:
            replacements = features[
                torch.randint(0, features.shape[0], (dead.numel(),), device=features.device)
            ]
        replacements = self._from_rank0(replacements, is_rank0)
        # A revived codeword starts as one feature of weight one: embed_avg / cluster_size = feature.
        self.codebook[dead] = replacements
        self.embed_avg[dead] = replacements
        self.cluster_size[dead] = 1.0
        self.unused_steps[dead] = 0

    def _initialize_by_kmeans(self, features: torch.Tensor) -> None:
        """Start the dictionary from k-means centroids of the first training batch (all ranks)."""
        flag = torch.tensor([0.0 if bool(torch.isfinite(features).all()) else 1.0], device=features.device)
        if self._syncing():
            all_reduce_sum(flag)
        if float(flag) > 0:
            if not bool(torch.isfinite(features).all()):
                self._raise_if_nonfinite(torch.tensor([float("nan")]), features)
            raise QuantizationInputError(
                "EMAQuantizer: another rank's features contain NaN or inf; the dictionary was not initialised"
            )
        is_rank0 = self._is_rank0()
        seeds = features.new_zeros(self.codebook_size, self.dim)
        if is_rank0 and features.shape[0] > 0:
            n = features.shape[0]
            pick = (
                torch.randperm(n, device=features.device)[: self.codebook_size]
                if n >= self.codebook_size
                else torch.randint(0, n, (self.codebook_size,), device=features.device)
            )
            seeds = features[pick]
        seeds = self._from_rank0(seeds, is_rank0)
        centroids, counts = kmeans(
            features,
            self.codebook_size,
            self.kmeans_iters,
            cosine=self.distance == "cosine",
            all_reduce_sum=all_reduce_sum if self._syncing() else None,
            seed_features=seeds,
        )
        # Consistent with the EMA invariant codebook = embed_avg / smoothed(cluster_size).
        self.codebook.copy_(centroids)
        self.cluster_size.copy_(counts)
        self.embed_avg.copy_(centroids * laplace_smoothed_cluster_size(counts, self.eps).unsqueeze(1))
        self.unused_steps.zero_()
        self.initialized.fill_(True)

    def _apply(self, fn, *args, **kwargs):
        # ``.half()``/``.to(torch.bfloat16)`` on a whole model must not demote the dictionary: the EMA
        # statistics need float32 (1 − decay and the Laplace smoothing underflow in half precision).
        super()._apply(fn, *args, **kwargs)
        for name in ("codebook", "cluster_size", "embed_avg"):
            buffer = self._buffers[name]
            if buffer is not None and buffer.is_floating_point() and buffer.dtype != torch.float32:
                self._buffers[name] = buffer.float()
        return self

    # -- checkpoints ---------------------------------------------------------------------------

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, *args):
        # FQ-GAN's Quantize stores the dictionary as ``embed`` (C, K) and ``embed_avg`` (C, K), and has
        # neither ``unused_steps`` nor ``initialized``: translate such a state dict in place.
        legacy = prefix + "embed"
        if legacy in state_dict and prefix + "codebook" not in state_dict:
            state_dict[prefix + "codebook"] = state_dict.pop(legacy).t().contiguous()
            state_dict[prefix + "embed_avg"] = state_dict[prefix + "embed_avg"].t().contiguous()
            state_dict.setdefault(prefix + "unused_steps", torch.zeros_like(self.unused_steps))
            state_dict.setdefault(prefix + "initialized", torch.tensor(True))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, *args)
