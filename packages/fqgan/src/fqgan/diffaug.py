"""Differentiable augmentation (Zhao, Liu, Lin, Zhu & Han, 2020), applied to real and fake images alike.

Beyond the FQ-GAN reference: with small datasets D overfits, and augmenting
both what D sees of real data and of G's output (differentiably, so G's
gradient flows through) helps. Policies, comma-separated: ``color``
(brightness ±0.5, saturation ×[0, 2], contrast ×[0.5, 1.5]), ``translation``
(shift by up to 1/8 of the size, zero fill), ``cutout`` (one zeroed square of
half the size per image). Images are in ``[-1, 1]``.
"""

from __future__ import annotations

import torch

POLICIES = ("color", "translation", "cutout")


def parse_policy(spec: str) -> list[str]:
    """``"translation,cutout"`` → ``["translation", "cutout"]``; unknown names are errors."""
    from dgm_core.errors import UserError

    names = [s.strip() for s in spec.split(",") if s.strip()]
    for name in names:
        if name not in POLICIES:
            raise UserError(f"unknown DiffAugment policy '{name}': expected some of {', '.join(POLICIES)}")
    return names


def _rand(x: torch.Tensor, *shape: int) -> torch.Tensor:
    return torch.rand(x.shape[0], *shape, device=x.device, dtype=x.dtype)


def color(x: torch.Tensor) -> torch.Tensor:
    x = x + (_rand(x, 1, 1, 1) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(x, 1, 1, 1) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(x, 1, 1, 1) + 0.5) + mean


def translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    shift_y = torch.randint(-sh, sh + 1, (b, 1, 1), device=x.device)
    shift_x = torch.randint(-sw, sw + 1, (b, 1, 1), device=x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1) - shift_y  # source row of each output row
    cols = torch.arange(w, device=x.device).view(1, 1, w) - shift_x
    valid = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).unsqueeze(1)
    flat = rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)  # (b, h, w)
    gathered = x.flatten(2).gather(2, flat.flatten(1).unsqueeze(1).expand(-1, x.shape[1], -1))
    return gathered.view_as(x) * valid


def cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device) - ch // 2
    left = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device) - cw // 2
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)
    return x * (~inside).unsqueeze(1)


_OPS = {"color": color, "translation": translation, "cutout": cutout}


def diff_augment(x: torch.Tensor, policy: list[str] | tuple[str, ...]) -> torch.Tensor:
    """Apply the policies in order, with fresh randomness per image; the identity for an empty policy."""
    for name in policy:
        x = _OPS[name](x)
    return x
