"""Small MLP generator and discriminator for the 2-D mixtures (ring8, grid25) — mode-collapse checks."""

from __future__ import annotations

import torch
from torch import nn

from fqgan.fq import QuantizedDiscriminator


class MLPGenerator(nn.Module):
    """z → point in R²: ``depth`` ReLU layers of ``width`` units (no BatchNorm)."""

    def __init__(self, z_dim: int = 2, width: int = 128, depth: int = 3, num_classes: int = 0):
        super().__init__()
        self.z_dim, self.num_classes, self.resolution = z_dim, 0, 0
        layers: list[nn.Module] = []
        in_features = z_dim
        for _ in range(depth):
            layers += [nn.Linear(in_features, width), nn.ReLU()]
            in_features = width
        layers.append(nn.Linear(in_features, 2))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(z)


class MLPDiscriminator(QuantizedDiscriminator):
    """Point → score; each hidden layer (Linear + LeakyReLU) is one block that FQ can follow."""

    def __init__(self, width: int = 128, depth: int = 3, num_classes: int = 0):
        super().__init__()
        self.num_classes, self.resolution = 0, 0
        self.blocks = nn.ModuleList()
        self.block_channels = []
        in_features = 2
        for _ in range(depth):
            self.blocks.append(nn.Sequential(nn.Linear(in_features, width), nn.LeakyReLU(0.2)))
            self.block_channels.append(width)
            in_features = width
        self.head = nn.Linear(in_features, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.run_blocks(x)).squeeze(1)
