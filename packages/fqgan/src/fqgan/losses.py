"""GAN objectives on raw discriminator scores: hinge (BigGAN/FQ-GAN default) and non-saturating."""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("hinge", "nonsaturating")


def discriminator_loss(kind: str, real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """D's loss: hinge ``E[relu(1 − D(x))] + E[relu(1 + D(G(z)))]``;
    non-saturating ``E[softplus(−D(x))] + E[softplus(D(G(z)))]`` (= BCE with logits)."""
    if kind == "hinge":
        return F.relu(1.0 - real_scores).mean() + F.relu(1.0 + fake_scores).mean()
    if kind == "nonsaturating":
        return F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean()
    raise ValueError(f"unknown GAN loss {kind!r}; expected one of {LOSSES}")


def generator_loss(kind: str, fake_scores: torch.Tensor) -> torch.Tensor:
    """G's loss: hinge ``−E[D(G(z))]``; non-saturating ``E[softplus(−D(G(z)))]``."""
    if kind == "hinge":
        return -fake_scores.mean()
    if kind == "nonsaturating":
        return F.softplus(-fake_scores).mean()
    raise ValueError(f"unknown GAN loss {kind!r}; expected one of {LOSSES}")
