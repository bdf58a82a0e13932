"""BigGAN-style ResNet generator and discriminator for 32×32 and 64×64 images (Brock et al., 2019).

The layout follows the BigGAN-PyTorch architectures (``G_arch``/``D_arch``) that
FQ-GAN's reference code trains: spectral norm in G and D, class-conditional
BatchNorm in G and a projection head in D when ``num_classes > 0``
(unconditional otherwise), N(0, 0.02) init, optional self-attention. With width
``ch`` (each block's output size in brackets):

G: a linear layer to 4×4, then up-sampling blocks (every block ×2):

- 32: 4ch→4ch (8), 4ch→4ch (16), 4ch→4ch (32)
- 64: 16ch→16ch (8), 16ch→8ch (16), 8ch→4ch (32), 4ch→2ch (64)

D blocks (↓: average-pooled by 2):

- 32: 3→4ch↓ (16), 4ch→4ch↓ (8), 4ch→4ch (8), 4ch→4ch (8)
- 64: 3→ch↓ (32), ch→2ch↓ (16), 2ch→4ch↓ (8), 4ch→8ch↓ (4), 8ch→16ch (4)

The last 64×64 D block does not downsample (``D_arch[64]``: ``[True] * 4 + [False]``), so
D's last feature map is 4×4, as at 32×32 the last two blocks keep 8×8.

FQ can follow any D block (``QuantizedDiscriminator``); FQ-GAN quantizes blocks
0–3 at 32×32 and block 2 at 64×64. The differences that remain from BigGAN-PyTorch
/ FQ-BigGAN are listed in the package README ("Verified against the original").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dgm_core.errors import UserError
from fqgan.fq import QuantizedDiscriminator
from fqgan.models.layers import (
    ConditionalBatchNorm2d,
    ProjectionHead,
    SelfAttention,
    init_normal,
    sn_conv,
    sn_linear,
)

_G_ARCH = {32: ([4, 4, 4], [4, 4, 4]), 64: ([16, 16, 8, 4], [16, 8, 4, 2])}
_D_ARCH = {
    32: ([4, 4, 4, 4], [True, True, False, False]),
    64: ([1, 2, 4, 8, 16], [True, True, True, True, False]),
}
RESOLUTIONS = tuple(sorted(_G_ARCH))


def _check_resolution(resolution: int) -> None:
    if resolution not in _G_ARCH:
        raise UserError(
            f"the biggan architecture takes 32 or 64-pixel images, not {resolution}; "
            "pass --resolution 32 or 64"
        )


class GBlock(nn.Module):
    """Pre-activation up-sampling residual block: cBN-ReLU-up-conv3-cBN-ReLU-conv3, 1×1 shortcut."""

    def __init__(self, in_channels: int, out_channels: int, num_classes: int):
        super().__init__()
        self.bn1 = ConditionalBatchNorm2d(in_channels, num_classes)
        self.conv1 = sn_conv(in_channels, out_channels)
        self.bn2 = ConditionalBatchNorm2d(out_channels, num_classes)
        self.conv2 = sn_conv(out_channels, out_channels)
        self.shortcut = sn_conv(in_channels, out_channels, 1, padding=0)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class DBlock(nn.Module):
    """Residual D block: (ReLU)-conv3-ReLU-conv3-(avg-pool), learnable shortcut when shape changes.

    The first block skips the leading ReLU (raw pixels) and pools before its 1×1
    shortcut conv, as in BigGAN's "optimized" first block.
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: bool, preactivation: bool):
        super().__init__()
        self.preactivation = preactivation
        self.downsample = downsample
        self.conv1 = sn_conv(in_channels, out_channels)
        self.conv2 = sn_conv(out_channels, out_channels)
        self.learnable_shortcut = in_channels != out_channels or downsample
        if self.learnable_shortcut:
            self.shortcut = sn_conv(in_channels, out_channels, 1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x) if self.preactivation else x
        h = self.conv2(F.relu(self.conv1(h)))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        skip = x
        if self.learnable_shortcut:
            if self.preactivation:
                skip = self.shortcut(skip)
                skip = F.avg_pool2d(skip, 2) if self.downsample else skip
            else:
                skip = F.avg_pool2d(skip, 2) if self.downsample else skip
                skip = self.shortcut(skip)
        return h + skip


class BigGANGenerator(nn.Module):
    """z (and class y) → image in [-1, 1] of ``resolution`` pixels."""

    def __init__(
        self,
        resolution: int = 32,
        ch: int = 64,
        z_dim: int = 128,
        num_classes: int = 0,
        attention: int = 0,
    ):
        super().__init__()
        _check_resolution(resolution)
        self.resolution, self.z_dim, self.num_classes = resolution, z_dim, num_classes
        ins, outs = _G_ARCH[resolution]
        self.base_channels = ins[0] * ch
        self.linear = sn_linear(z_dim, 4 * 4 * self.base_channels)
        self.blocks = nn.ModuleList()
        size = 4
        for i, o in zip(ins, outs):
            size *= 2
            self.blocks.append(GBlock(i * ch, o * ch, num_classes))
            if attention == size:
                self.blocks.append(SelfAttention(o * ch))
        self.out_bn = nn.BatchNorm2d(outs[-1] * ch)
        self.out_conv = sn_conv(outs[-1] * ch, 3)
        init_normal(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.linear(z).view(z.shape[0], self.base_channels, 4, 4)
        for block in self.blocks:
            h = block(h, y)
        return torch.tanh(self.out_conv(F.relu(self.out_bn(h))))


class BigGANDiscriminator(QuantizedDiscriminator):
    """Image (and class y) → one real/fake score per image; FQ attachable after any block."""

    def __init__(self, resolution: int = 32, ch: int = 64, num_classes: int = 0, attention: int = 0):
        super().__init__()
        _check_resolution(resolution)
        self.resolution, self.num_classes = resolution, num_classes
        widths, downsample = _D_ARCH[resolution]
        self.blocks = nn.ModuleList()
        self.block_channels = []
        in_channels, size = 3, resolution
        for index, (width, down) in enumerate(zip(widths, downsample)):
            block: nn.Module = DBlock(in_channels, width * ch, down, preactivation=index > 0)
            size = size // 2 if down else size
            if attention == size:
                # Attention rides inside the block's slot so FQ indices keep counting residual blocks.
                block = nn.Sequential(block, SelfAttention(width * ch))
            self.blocks.append(block)
            self.block_channels.append(width * ch)
            in_channels = width * ch
        self.head = ProjectionHead(in_channels, num_classes)
        init_normal(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            raise UserError(
                f"this discriminator takes {self.resolution}-pixel images, got {tuple(x.shape[-2:])}"
            )
        h = self.run_blocks(x)
        h = F.relu(h).sum(dim=(2, 3))
        return self.head(h, y)
