"""Producing samples from a generator: the noise to draw, batched generation, and images of the result.

Used by ``fqgan-train`` (a grid from fixed noise every few steps), ``fqgan-sample`` and ``fqgan-eval``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgm_core.errors import UserError

MIXTURE_GRID_POINTS = 2048


def fixed_noise(
    n: int, model_config: dict[str, Any], seed: int = 0, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Noise (and, when conditional, labels in contiguous class blocks) that is the same at every call."""
    if model_config.get("resolution", 0) == 0:  # 2-D points: a scatter needs many
        n = max(n, MIXTURE_GRID_POINTS)
    generator = torch.Generator().manual_seed(seed + 12345)
    z = torch.randn(n, int(model_config["z_dim"]), generator=generator).to(device)
    num_classes = int(model_config.get("num_classes", 0))
    y = (torch.arange(n) * num_classes // n).to(device) if num_classes > 0 else None
    return z, y


def truncated_noise(
    n: int, dim: int, threshold: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Standard normal noise; with ``threshold > 0`` every entry above it in magnitude is redrawn."""
    z = torch.randn(n, dim, generator=generator)
    if threshold > 0:
        outside = z.abs() > threshold
        while outside.any():
            z[outside] = torch.randn(int(outside.sum()), generator=generator)
            outside = z.abs() > threshold
    return z


def generate_batches(
    generator: nn.Module, z: torch.Tensor, y: torch.Tensor | None, batch_size: int = 256
) -> Iterator[torch.Tensor]:
    """``generator(z, y)`` in eval mode, one float32 batch at a time (on G's device), without grad.

    For sample counts whose images should not all be held at once (50 000 for FID). Run it under
    an autocast context for reduced precision: every batch is cast back to float32.
    """
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    was_training = generator.training
    generator.eval()
    try:
        for start in range(0, z.shape[0], batch_size):
            labels = y[start : start + batch_size] if y is not None else None
            with torch.no_grad():
                images = generator(z[start : start + batch_size], labels)
            yield images.float()
    finally:
        generator.train(was_training)


def generate(
    generator: nn.Module, z: torch.Tensor, y: torch.Tensor | None, batch_size: int = 256
) -> torch.Tensor:
    """``generator(z, y)`` in eval mode, in batches; returns float32 on the CPU.

    Run it under an autocast context for reduced precision: every batch is cast back to float32.
    """
    return torch.cat([batch.cpu() for batch in generate_batches(generator, z, y, batch_size)])


def render_points(points: torch.Tensor, size: int = 256, extent: float = 5.0) -> torch.Tensor:
    """Draw 2-D points (in ``[-extent, extent]²``) as dark dots on white, ``(3, size, size)``."""
    image = torch.ones(3, size, size)
    pixels = ((points.float().cpu() + extent) / (2 * extent) * (size - 1)).round().long()
    inside = ((pixels >= 0) & (pixels < size)).all(dim=1)
    px, py = pixels[inside, 0], size - 1 - pixels[inside, 1]
    for dx in (0, 1):
        for dy in (0, 1):
            image[:, (py + dy).clamp(max=size - 1), (px + dx).clamp(max=size - 1)] = torch.tensor(
                [0.1, 0.2, 0.6]
            ).view(3, 1)
    return image


def save_sample_grid(
    generator: nn.Module, z: torch.Tensor, y: torch.Tensor | None, path: str | Path, mixture: bool = False
) -> Path:
    """Write G's samples for ``(z, y)`` as one PNG (an image grid, or a scatter render for 2-D points)."""
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = generate(generator, z, y)
    if mixture:
        save_image(render_points(samples), path)
    else:
        nrow = max(1, int(math.ceil(math.sqrt(samples.shape[0]))))
        save_image(samples, path, nrow=nrow, normalize=True, value_range=(-1, 1))
    return path
