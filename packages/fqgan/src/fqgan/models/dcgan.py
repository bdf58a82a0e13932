"""A small DCGAN/SNGAN pair for quick runs (the CPU demo): conv G with BatchNorm, SN conv D.

G: z → 4×4×(8ch) → [nearest up ×2, conv3, (c)BN, ReLU] × n → conv3 → tanh.
D: n+1 blocks of [conv3, LReLU(0.1), conv4 stride 2, LReLU(0.1)] (the last one
without the strided conv), then a projection head on the flattened features.
Resolutions 16, 32 and 64. FQ can follow any D block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dgm_core.errors import UserError
from fqgan.fq import QuantizedDiscriminator
from fqgan.models.layers import ConditionalBatchNorm2d, ProjectionHead, init_normal, sn_conv

RESOLUTIONS = (16, 32, 64)


def _num_upsamplings(resolution: int) -> int:
    if resolution not in RESOLUTIONS:
        raise UserError(
            f"the dcgan architecture takes {', '.join(map(str, RESOLUTIONS))}-pixel images, not {resolution}"
        )
    return {16: 2, 32: 3, 64: 4}[resolution]


class DCGANGenerator(nn.Module):
    def __init__(self, resolution: int = 32, ch: int = 32, z_dim: int = 128, num_classes: int = 0):
        super().__init__()
        steps = _num_upsamplings(resolution)
        self.resolution, self.z_dim, self.num_classes = resolution, z_dim, num_classes
        widths = [ch * 2 ** (steps - i) for i in range(steps + 1)]  # e.g. 8ch, 4ch, 2ch, ch
        self.base_channels = widths[0]
        self.linear = nn.Linear(z_dim, 4 * 4 * widths[0])
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(widths[:-1], widths[1:]))
        self.norms = nn.ModuleList(ConditionalBatchNorm2d(w, num_classes) for w in [widths[0], *widths[1:]])
        self.out_conv = nn.Conv2d(widths[-1], 3, 3, padding=1)
        init_normal(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.linear(z).view(z.shape[0], self.base_channels, 4, 4)
        h = F.relu(self.norms[0](h, y))
        for conv, norm in zip(self.convs, self.norms[1:]):
            h = F.relu(norm(conv(F.interpolate(h, scale_factor=2, mode="nearest")), y))
        return torch.tanh(self.out_conv(h))


class DCGANDiscriminator(QuantizedDiscriminator):
    def __init__(self, resolution: int = 32, ch: int = 32, num_classes: int = 0):
        super().__init__()
        steps = _num_upsamplings(resolution)
        self.resolution, self.num_classes = resolution, num_classes
        widths = [ch * 2**i for i in range(steps + 1)]  # ch, 2ch, 4ch, 8ch
        self.blocks = nn.ModuleList()
        self.block_channels = []
        in_channels = 3
        for index, width in enumerate(widths):
            layers: list[nn.Module] = [sn_conv(in_channels, width), nn.LeakyReLU(0.1)]
            if index < steps:
                layers += [sn_conv(width, width, 4, stride=2, padding=1), nn.LeakyReLU(0.1)]
            self.blocks.append(nn.Sequential(*layers))
            self.block_channels.append(width)
            in_channels = width
        self.head = ProjectionHead(in_channels * 16, num_classes)
        init_normal(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            raise UserError(
                f"this discriminator takes {self.resolution}-pixel images, got {tuple(x.shape[-2:])}"
            )
        return self.head(self.run_blocks(x).flatten(1), y)
