"""Fused nearest-codeword kernel: distances and a running argmin in one Triton program.

Each program owns ``BLOCK_N`` feature rows. It walks the dictionary ``BLOCK_K`` codewords at a time,
scores the tile ``‖e‖² − 2·x·eᵀ`` with ``tl.dot`` over ``BLOCK_C``-wide slices of the channels, and folds
the tile into a per-row running (min, argmin) held in registers. Nothing of size N×K ever reaches
memory; the kernel writes N indices and N squared distances.

Triton is optional: importing this module never fails. :func:`triton_available` says whether the
kernel can run; without a GPU it can still be exercised by setting ``TRITON_INTERPRET=1`` *before*
Triton is first imported (that is how the CPU test suite checks it, in a subprocess).
"""

from __future__ import annotations

import os

import torch

try:  # Triton ships with CUDA builds of torch, but not with every wheel.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where Triton is absent
    triton = None
    tl = None

__all__ = ["nearest_codeword_triton", "triton_available"]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available() -> bool:
    """True when the fused kernel can run here: Triton importable and a CUDA device (or the interpreter).

    Triton targets NVIDIA GPUs of compute capability 7.0 (Volta) and newer; older ones use the torch
    path.
    """
    if triton is None:
        return False
    if _interpreting():
        return True
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 7


if triton is not None:

    @triton.jit
    def _nearest_codeword_kernel(
        x_ptr,
        codebook_ptr,
        codebook_sq_ptr,
        indices_ptr,
        sq_distances_ptr,
        n_rows,
        n_codes,
        n_channels,
        stride_xn,
        stride_xc,
        stride_ek,
        stride_ec,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_C: tl.constexpr,
        INPUT_PRECISION: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = rows < n_rows
        row_offsets = rows.to(tl.int64) * stride_xn  # 64-bit: N·C may pass 2^31 elements
        channel_offsets = tl.arange(0, BLOCK_C)

        # ‖x‖² per row: not needed for the argmin, but it turns the tile scores into true squared
        # distances and, being a plain sum, carries NaN/inf from the features into the output
        # (comparisons in the running min would silently drop a NaN).
        x_sq = tl.zeros([BLOCK_N], dtype=tl.float32)
        for c0 in range(0, n_channels, BLOCK_C):
            channels = c0 + channel_offsets
            x_tile = tl.load(
                x_ptr + row_offsets[:, None] + channels[None, :] * stride_xc,
                mask=row_mask[:, None] & (channels[None, :] < n_channels),
                other=0.0,
            )
            x_sq += tl.sum(x_tile * x_tile, axis=1)

        best = tl.full([BLOCK_N], float("inf"), dtype=tl.float32)
        best_index = tl.zeros([BLOCK_N], dtype=tl.int32)
        for k0 in range(0, n_codes, BLOCK_K):
            codes = k0 + tl.arange(0, BLOCK_K)
            code_mask = codes < n_codes
            dots = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
            for c0 in range(0, n_channels, BLOCK_C):
                channels = c0 + channel_offsets
                channel_mask = channels < n_channels
                x_tile = tl.load(
                    x_ptr + row_offsets[:, None] + channels[None, :] * stride_xc,
                    mask=row_mask[:, None] & channel_mask[None, :],
                    other=0.0,
                )
                codebook_tile = tl.load(  # (BLOCK_C, BLOCK_K): the codebook read transposed
                    codebook_ptr + codes[None, :] * stride_ek + channels[:, None] * stride_ec,
                    mask=code_mask[None, :] & channel_mask[:, None],
                    other=0.0,
                )
                dots = tl.dot(x_tile, codebook_tile, dots, input_precision=INPUT_PRECISION)
            codebook_sq = tl.load(codebook_sq_ptr + codes, mask=code_mask, other=0.0)
            scores = codebook_sq[None, :] - 2.0 * dots
            # Padding codewords and NaN scores (NaN != NaN) never win; a NaN feature still shows in x_sq.
            scores = tl.where(code_mask[None, :] & (scores == scores), scores, float("inf"))
            tile_best, tile_index = tl.min(scores, axis=1, return_indices=True)
            # Strictly smaller only: on an exact tie the earlier codeword wins, as in torch.argmin.
            improved = tile_best < best
            best = tl.where(improved, tile_best, best)
            best_index = tl.where(improved, tile_index + k0, best_index)

        tl.store(indices_ptr + rows, best_index.to(tl.int64), mask=row_mask)
        tl.store(sq_distances_ptr + rows, best + x_sq, mask=row_mask)


def nearest_codeword_triton(
    x: torch.Tensor,
    codebook: torch.Tensor,
    *,
    block_n: int | None = None,
    block_k: int | None = None,
    block_c: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused-kernel version of :func:`dgm_core.quantization.nearest_codeword` (float32 (N, C), (K, C)).

    Block sizes default to a tiling suited to current NVIDIA GPUs (64 rows × 128 codewords × 32
    channels); tests pass small ones. Scores use full float32 products (``ieee``) unless
    ``torch.backends.cuda.matmul.allow_tf32`` is on, so that assignments match the torch path.
    """
    if not triton_available():
        raise RuntimeError(
            "the fused nearest-codeword kernel needs Triton and a CUDA device (or TRITON_INTERPRET=1)"
        )
    x = x.float()
    codebook = codebook.float().contiguous()
    n_rows, n_channels = x.shape
    n_codes = codebook.shape[0]
    indices = torch.empty(n_rows, dtype=torch.long, device=x.device)
    sq_distances = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    if n_rows == 0:
        return indices, sq_distances
    codebook_sq = codebook.pow(2).sum(1)
    block_n = block_n or 64
    block_k = block_k or 128
    block_c = block_c or 32
    precision = "tf32" if torch.backends.cuda.matmul.allow_tf32 and not _interpreting() else "ieee"
    grid = (triton.cdiv(n_rows, block_n),)
    _nearest_codeword_kernel[grid](
        x,
        codebook,
        codebook_sq,
        indices,
        sq_distances,
        n_rows,
        n_codes,
        n_channels,
        x.stride(0),
        x.stride(1),
        codebook.stride(0),
        codebook.stride(1),
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        BLOCK_C=block_c,
        INPUT_PRECISION=precision,
    )
    return indices, sq_distances
