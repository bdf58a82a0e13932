"""Feature quantization against an EMA dictionary (FQ-GAN), for any model.

- :class:`EMAQuantizer` — the ``nn.Module``: nearest-codeword quantization with a straight-through
  output, commitment loss, and a dictionary updated as an exponential moving average (float32 always,
  all-reduced across ranks).
- :class:`QuantizerOutput` — its outputs as named fields.
- :func:`nearest_codeword` — the search alone: chunked torch on any device, a fused Triton kernel on
  CUDA; never an N×K matrix.

See ``packages/dgm-core/docs/quantization.md`` for semantics and measured speed.
"""

from dgm_core.quantization.ema_quantizer import EMAQuantizer, QuantizerOutput
from dgm_core.quantization.ops import (
    QuantizationInputError,
    codeword_statistics,
    ema_update_,
    kmeans,
    laplace_smoothed_cluster_size,
    nearest_codeword,
    perplexity,
)

__all__ = [
    "EMAQuantizer",
    "QuantizationInputError",
    "QuantizerOutput",
    "codeword_statistics",
    "ema_update_",
    "kmeans",
    "laplace_smoothed_cluster_size",
    "nearest_codeword",
    "perplexity",
]
