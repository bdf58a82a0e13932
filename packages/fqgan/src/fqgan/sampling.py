"""Generators from checkpoints, fixed noise, and writing samples (image grids, 2-D scatter renders)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgm_core.runtime.checkpoint import CheckpointError, CheckpointManager
from fqgan.models import build_models

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


@torch.no_grad()
def generate(
    generator: nn.Module, z: torch.Tensor, y: torch.Tensor | None, batch_size: int = 256
) -> torch.Tensor:
    """``generator(z, y)`` in eval mode, in batches; returns float32 on the CPU."""
    was_training = generator.training
    generator.eval()
    chunks = []
    for start in range(0, z.shape[0], batch_size):
        labels = y[start : start + batch_size] if y is not None else None
        chunks.append(generator(z[start : start + batch_size], labels).float().cpu())
    generator.train(was_training)
    return torch.cat(chunks)


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


def load_checkpoint_models(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[nn.Module, nn.Module, nn.Module, dict[str, Any]]:
    """``(generator_ema, generator, discriminator, config_record)`` from a checkpoint or run directory.

    ``config_record`` is the checkpoint's ``config.json``: ``model`` (the model
    config), ``run`` (the training options, e.g. ``data``) and ``step``.
    """
    checkpoint = CheckpointManager.resolve(path)
    record = CheckpointManager.read_config(checkpoint)
    if record.get("name") != "fqgan" or "model" not in record:
        raise CheckpointError(f"{checkpoint} is not an fqgan checkpoint (name {record.get('name')!r})")
    generator, discriminator = build_models(record["model"])
    ema, _ = build_models({**record["model"], "fq_mode": "none"})
    CheckpointManager.load_weights(
        checkpoint, {"generator": generator, "discriminator": discriminator, "generator_ema": ema}
    )
    record["checkpoint"] = str(checkpoint)
    for module in (ema, generator, discriminator):
        module.to(device).eval()
    return ema, generator, discriminator, record
