"""Building blocks shared by the GAN architectures: spectral norm, conditional BN, attention, projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


def sn_conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    padding: int | None = None,
    use_sn: bool = True,
) -> nn.Module:
    """A conv layer (``same`` padding for odd kernels by default), spectrally normalised when ``use_sn``."""
    if padding is None:
        padding = kernel_size // 2
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding)
    return spectral_norm(conv, eps=1e-6) if use_sn else conv


def sn_linear(in_features: int, out_features: int, use_sn: bool = True, bias: bool = True) -> nn.Module:
    linear = nn.Linear(in_features, out_features, bias=bias)
    return spectral_norm(linear, eps=1e-6) if use_sn else linear


def sn_embedding(num_embeddings: int, dim: int, use_sn: bool = True) -> nn.Module:
    embedding = nn.Embedding(num_embeddings, dim)
    return spectral_norm(embedding, eps=1e-6) if use_sn else embedding


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose gain ``1 + γ(y)`` and bias ``β(y)`` come from the class (BigGAN's cBN, unshared).

    With ``num_classes == 0`` it is an ordinary affine BatchNorm and ``y`` is ignored.
    """

    def __init__(self, channels: int, num_classes: int = 0):
        super().__init__()
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(channels, affine=num_classes == 0, eps=1e-5, momentum=0.1)
        if num_classes > 0:
            self.gain = nn.Embedding(num_classes, channels)
            self.bias = nn.Embedding(num_classes, channels)
            nn.init.zeros_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        out = self.bn(x)
        if self.num_classes == 0:
            return out
        if y is None:
            raise ValueError("a class-conditional generator needs labels y")
        gain = 1 + self.gain(y).view(-1, x.shape[1], 1, 1)
        bias = self.bias(y).view(-1, x.shape[1], 1, 1)
        return out * gain + bias


class SelfAttention(nn.Module):
    """SAGAN/BigGAN non-local block: ``x + γ·attention(x)``, γ starting at 0."""

    def __init__(self, channels: int, use_sn: bool = True):
        super().__init__()
        self.theta = sn_conv(channels, channels // 8, 1, padding=0, use_sn=use_sn)
        self.phi = sn_conv(channels, channels // 8, 1, padding=0, use_sn=use_sn)
        self.g = sn_conv(channels, channels // 2, 1, padding=0, use_sn=use_sn)
        self.out = sn_conv(channels // 2, channels, 1, padding=0, use_sn=use_sn)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        theta = self.theta(x).flatten(2)  # (b, c/8, hw)
        phi = F.max_pool2d(self.phi(x), 2).flatten(2)  # (b, c/8, hw/4)
        g = F.max_pool2d(self.g(x), 2).flatten(2)  # (b, c/2, hw/4)
        attention = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # (b, hw, hw/4)
        o = (g @ attention.transpose(1, 2)).view(b, c // 2, h, w)
        return x + self.gamma * self.out(o)


class ProjectionHead(nn.Module):
    """The discriminator's output: ``ψ(h) + ⟨embed(y), h⟩`` (Miyato & Koyama's projection)."""

    def __init__(self, channels: int, num_classes: int = 0, use_sn: bool = True):
        super().__init__()
        self.linear = sn_linear(channels, 1, use_sn)
        self.embed = sn_embedding(num_classes, channels, use_sn) if num_classes > 0 else None

    def forward(self, h: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        out = self.linear(h).squeeze(1)
        if self.embed is not None:
            if y is None:
                raise ValueError("a class-conditional discriminator needs labels y")
            out = out + (self.embed(y) * h).sum(dim=1)
        return out


def init_normal(module: nn.Module, std: float = 0.02) -> None:
    """BigGAN's ``N02`` init: every conv/linear/embedding weight ~ N(0, 0.02), biases 0, cBN identity.

    Spectral norm's power-iteration vectors are then set for the new weights
    (:func:`refresh_spectral_norm`), so the model is normalised correctly before any training step.
    """
    for name, sub in module.named_modules():
        if isinstance(sub, (nn.Conv2d, nn.Linear, nn.Embedding)) and not name.endswith(("gain", "bias")):
            weight = sub.parametrizations.weight.original if hasattr(sub, "parametrizations") else sub.weight
            nn.init.normal_(weight, 0.0, std)
            if getattr(sub, "bias", None) is not None and isinstance(sub.bias, torch.Tensor):
                nn.init.zeros_(sub.bias)
    refresh_spectral_norm(module)


@torch.no_grad()
def refresh_spectral_norm(module: nn.Module) -> None:
    """Point every spectral norm's ``u``, ``v`` at the top singular pair of its current weight.

    ``spectral_norm`` runs its power iteration when it is registered, on the layer's default
    weights; re-initialising the weights afterwards leaves ``u``, ``v`` describing a different
    matrix. Training-mode forwards would drift back within some steps, but an eval-mode forward
    (which never iterates) of a fresh model would divide by ``uᵀWv`` of unrelated vectors — any
    size, even negative. Setting the exact top singular pair here makes ``σ = uᵀWv`` the top
    singular value from the start; later training-mode forwards continue the power iteration.
    """
    for sub in module.modules():
        parametrizations = getattr(sub, "parametrizations", None)
        if parametrizations is None or "weight" not in parametrizations:
            continue
        weight = parametrizations.weight.original
        if weight.is_meta or weight.numel() == 0:  # shape validation on the meta device, or empty
            continue
        for parametrization in parametrizations.weight:
            if not hasattr(parametrization, "_u"):  # not a spectral norm
                continue
            # The matrix spectral norm normalises: the `dim` axis first, everything else flattened.
            matrix = weight.movedim(parametrization.dim, 0).flatten(1)
            u, v = _top_singular_pair(matrix)
            if u is not None:
                parametrization._u.copy_(u)
                parametrization._v.copy_(v)


def _top_singular_pair(matrix: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Unit ``(u, v)`` with ``uᵀ M v = σ_max(M)``; ``(None, None)`` for a zero matrix.

    Via the eigenvectors of the smaller Gram matrix in float64: as exact as an SVD for the top
    pair, and several times faster on CPU for BigGAN's 1024 × 9216 convolutions.
    """
    m = matrix.double()
    if m.shape[0] <= m.shape[1]:
        u = torch.linalg.eigh(m @ m.T).eigenvectors[:, -1]  # eigenvalues ascend: the last is σ²_max
        v = m.T @ u
        norm = v.norm()
        v = v / norm
    else:
        v = torch.linalg.eigh(m.T @ m).eigenvectors[:, -1]
        u = m @ v
        norm = u.norm()
        u = u / norm
    if norm == 0:
        return None, None
    return u.to(matrix.dtype), v.to(matrix.dtype)
