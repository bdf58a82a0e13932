"""Functional pieces of feature quantization: nearest-codeword search, EMA statistics, perplexity.

Everything here works on flat features ``x`` of shape (N, C) and a dictionary ``codebook`` of shape
(K, C), in float32. Two rules keep memory at O(N + K·C) whatever N is:

- the search never builds the N×K distance matrix: it walks over row chunks, each chunk scored by one
  ``addmm`` into a reused (chunk × K) buffer and reduced by ``min`` at once (on CUDA a fused Triton kernel
  keeps the running minimum in registers instead, see :mod:`dgm_core.quantization.triton_kernels`);
- the EMA statistics are gathered by ``bincount`` (counts) and ``index_add_`` (sums), never through an
  N×K one-hot matrix.

For the argmin the ``‖x‖²`` term is constant per row, so the chunks score ``‖e‖² − 2·x·e`` and ``‖x‖²``
is added back once per row for the reported squared distance.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dgm_core.errors import UserError

__all__ = [
    "QuantizationInputError",
    "codeword_statistics",
    "ema_update_",
    "kmeans",
    "laplace_smoothed_cluster_size",
    "nearest_codeword",
    "perplexity",
]

# Rows per chunk are chosen so that the (chunk × K) float32 score buffer stays about this size: small
# enough to stay in cache between the GEMM that writes it and the min() that reads it, large enough
# that each GEMM call is big. On the 2-core dev box (N=65536, C=256, K=1024) 512..4096-row chunks
# (2..16 MB) all ran at 0.23 s on a quiet machine; under load, many small GEMMs pay one thread
# barrier each, so the larger end wins (see docs/quantization.md).
_CPU_CHUNK_BYTES = 32 * 1024 * 1024
# On GPUs the buffer only has to be big enough to fill the device; memory, not cache, is the limit.
_CUDA_CHUNK_BYTES = 256 * 1024 * 1024


class QuantizationInputError(UserError, ValueError):
    """Features or settings the quantizer cannot work with (wrong shape, dtype, non-finite values).

    A :class:`~dgm_core.errors.UserError` (CLIs print it as one line) and a :class:`ValueError` (what
    library callers expect from a bad argument).
    """


def _check_pair(x: torch.Tensor, codebook: torch.Tensor) -> None:
    if x.dim() != 2:
        raise QuantizationInputError(f"features must be 2-D (N, C); got shape {tuple(x.shape)}")
    if codebook.dim() != 2 or codebook.shape[0] < 1:
        raise QuantizationInputError(
            f"codebook must be 2-D (K, C) with K >= 1; got shape {tuple(codebook.shape)}"
        )
    if x.shape[1] != codebook.shape[1]:
        raise QuantizationInputError(
            f"features have {x.shape[1]} channels but the codebook has {codebook.shape[1]} "
            f"(features {tuple(x.shape)}, codebook {tuple(codebook.shape)})"
        )
    if not x.is_floating_point() or not codebook.is_floating_point():
        raise QuantizationInputError(
            f"features and codebook must be floating point; got {x.dtype} and {codebook.dtype}"
        )
    if x.device != codebook.device:
        raise QuantizationInputError(f"features on {x.device} but codebook on {codebook.device}")


def default_chunk_size(num_codes: int, device: torch.device) -> int:
    """Rows per chunk so that one (chunk × K) float32 score buffer has the device's preferred size."""
    budget = _CUDA_CHUNK_BYTES if device.type == "cuda" else _CPU_CHUNK_BYTES
    return max(16, budget // (4 * num_codes))


def _nearest_codeword_chunked(
    x: torch.Tensor, codebook: torch.Tensor, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[0]
    num_codes = codebook.shape[0]
    codebook_sq = codebook.pow(2).sum(1)
    codebook_t = codebook.t()
    indices = torch.empty(n, dtype=torch.long, device=x.device)
    partial = torch.empty(n, dtype=x.dtype, device=x.device)
    scores = torch.empty(min(chunk_size, n), num_codes, dtype=x.dtype, device=x.device)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        block = scores[: stop - start]
        # block = ‖e‖² − 2·x·eᵀ in one GEMM; ‖x‖² is constant per row and irrelevant to the argmin.
        torch.addmm(codebook_sq, x[start:stop], codebook_t, beta=1.0, alpha=-2.0, out=block)
        torch.min(block, dim=1, out=(partial[start:stop], indices[start:stop]))
    # ‖x‖² for the returned distances: vector_norm reduces in one pass without the N×C temporary that
    # vecdot or (x*x).sum make (an order of magnitude faster on CPU).
    return indices, partial.add_(torch.linalg.vector_norm(x, dim=1).square_())


def nearest_codeword(
    x: torch.Tensor,
    codebook: torch.Tensor,
    chunk_size: int | None = None,
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest codeword (squared L2) for every row of ``x``, without an N×K matrix.

    Args:
        x: features, (N, C), any floating dtype (scored in float32).
        codebook: dictionary, (K, C).
        chunk_size: rows scored per GEMM in the torch path (default: sized for the device's cache).
        backend: ``"auto"`` (the fused Triton kernel on CUDA when Triton is importable, else chunked
            torch), ``"torch"`` or ``"triton"``.

    Returns:
        ``(indices, sq_distances)``: int64 (N,) indices into the codebook (the first of exactly tied
        codewords) and float32 (N,) squared distances ``‖x − e_index‖²``. A row with NaN/inf features
        gets a non-finite distance, which callers use as their finiteness check.
    """
    _check_pair(x, codebook)
    if backend not in ("auto", "torch", "triton"):
        raise QuantizationInputError(f"backend must be 'auto', 'torch' or 'triton'; got {backend!r}")
    if chunk_size is not None and chunk_size < 1:
        raise QuantizationInputError(f"chunk_size must be >= 1; got {chunk_size}")
    with torch.no_grad():
        x = x.detach().float()
        codebook = codebook.detach().float()
        if backend != "torch" and (x.is_cuda or backend == "triton"):
            # Imported here, not at the top: importing Triton costs CPU-only users a second for nothing.
            from dgm_core.quantization import triton_kernels

            if backend == "triton" or triton_kernels.triton_available():
                indices, sq_distances = triton_kernels.nearest_codeword_triton(x, codebook)
                return indices, sq_distances.clamp_min_(0.0)
        if x.shape[0] == 0:
            return x.new_empty(0, dtype=torch.long), x.new_empty(0)
        chunk = chunk_size or default_chunk_size(codebook.shape[0], x.device)
        indices, sq_distances = _nearest_codeword_chunked(x.contiguous(), codebook.contiguous(), chunk)
        # The expansion ‖x‖² + ‖e‖² − 2·x·e can round below zero when x sits on a codeword.
        return indices, sq_distances.clamp_min_(0.0)


def codeword_statistics(
    x: torch.Tensor,
    indices: torch.Tensor,
    num_codes: int,
    *,
    counts_out: torch.Tensor | None = None,
    sums_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """How many features chose each codeword and their sum: (K,) counts and (K, C) sums, float32.

    ``bincount`` and ``index_add_`` do in O(N·C) what the reference's ``xᵀ @ one_hot`` does in
    O(N·K·C) time and O(N·K) memory. ``counts_out``/``sums_out`` let the caller collect both into one
    flat buffer, so that a single all-reduce syncs them across ranks.
    """
    x = x.detach().float()
    counts = torch.bincount(indices, minlength=num_codes).to(torch.float32)
    if counts_out is None:
        counts_out = counts
    else:
        counts_out.copy_(counts)
    if sums_out is None:
        sums_out = x.new_zeros(num_codes, x.shape[1])
    else:
        sums_out.zero_()
    sums_out.index_add_(0, indices, x)
    return counts_out, sums_out


def laplace_smoothed_cluster_size(cluster_size: torch.Tensor, eps: float) -> torch.Tensor:
    """FQ-GAN's / VQ-VAE-2's Laplace smoothing ``(cs + eps) / (n + K·eps) · n`` with ``n = Σ cs``.

    It keeps the total mass ``n`` and never divides by zero for codewords nobody chose.
    """
    total = cluster_size.sum()
    return (cluster_size + eps) / (total + cluster_size.numel() * eps) * total


def ema_update_(
    codebook: torch.Tensor,
    cluster_size: torch.Tensor,
    embed_avg: torch.Tensor,
    counts: torch.Tensor,
    sums: torch.Tensor,
    decay: float,
    eps: float,
) -> None:
    """One EMA step of the dictionary, in place (all tensors float32, codebook/embed_avg (K, C)).

    ``cluster_size ← d·cluster_size + (1−d)·counts``, ``embed_avg ← d·embed_avg + (1−d)·sums``,
    ``codebook = embed_avg / laplace_smoothed(cluster_size)``. Values below the dtype's smallest
    normal number are set to zero (see :func:`flush_subnormal_`).
    """
    cluster_size.mul_(decay).add_(counts, alpha=1.0 - decay)
    embed_avg.mul_(decay).add_(sums, alpha=1.0 - decay)
    flush_subnormal_(cluster_size)
    flush_subnormal_(embed_avg)
    smoothed = laplace_smoothed_cluster_size(cluster_size, eps)
    torch.div(embed_avg, smoothed.unsqueeze(1), out=codebook)
    flush_subnormal_(codebook)


def flush_subnormal_(tensor: torch.Tensor) -> torch.Tensor:
    """Set ``tensor``'s subnormal entries (0 < |x| < the dtype's smallest normal number) to zero, in place.

    An unused codeword's statistics decay geometrically toward zero: at FQ-GAN's decay 0.8 they
    become subnormal after about 400 updates, and so does the codeword. CPUs compute with subnormal
    numbers many times slower, and every distance to the codebook then does: a 16×16 FQ-GAN run
    on the CPU slowed 3.5× from that update on. Zero is the value they decay toward.
    """
    return tensor.masked_fill_(tensor.abs() < torch.finfo(tensor.dtype).tiny, 0.0)


def perplexity(counts: torch.Tensor) -> torch.Tensor:
    """``exp(−Σ p log p)`` of the code usage ``p = counts / Σ counts`` (1 = one code, K = uniform).

    ``0 · log 0`` counts as 0 (the reference adds 1e-10 inside the log; the difference is below 1e-8).
    An empty batch has perplexity 1.
    """
    counts = counts.float()
    total = counts.sum()
    probs = counts / total.clamp_min(1.0)
    return torch.exp(torch.special.entr(probs).sum())


def kmeans(
    x: torch.Tensor,
    num_codes: int,
    iters: int = 10,
    *,
    cosine: bool = False,
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
    seed_features: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on (N, C) features; returns ``(centroids (K, C), counts (K,))`` in float32.

    ``seed_features`` (K, C) are the starting centroids (default: K features drawn from ``x``). With
    ``all_reduce_sum`` the per-cluster counts and sums are summed over ranks each iteration, so every
    rank that starts from the same seeds ends with the same centroids. A cluster that loses all its
    features keeps its previous centroid.
    """
    x = x.detach().float()
    if seed_features is None:
        pick = (
            torch.randperm(x.shape[0], device=x.device)[:num_codes]
            if x.shape[0] >= num_codes
            else torch.randint(0, x.shape[0], (num_codes,), device=x.device)
        )
        seed_features = x[pick]
    centroids = seed_features.float().clone()
    dim = x.shape[1]
    stats = x.new_empty(num_codes * (dim + 1))
    sums = stats[: num_codes * dim].view(num_codes, dim)
    counts = stats[num_codes * dim :]
    for _ in range(max(1, iters)):
        indices, _ = nearest_codeword(x, centroids)
        codeword_statistics(x, indices, num_codes, counts_out=counts, sums_out=sums)
        if all_reduce_sum is not None:
            all_reduce_sum(stats)
        chosen = counts > 0
        centroids = torch.where(chosen.unsqueeze(1), sums / counts.clamp_min(1.0).unsqueeze(1), centroids)
        if cosine:
            centroids = torch.nn.functional.normalize(centroids, dim=1)
    return centroids, counts.clone()
