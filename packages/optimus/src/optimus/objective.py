"""The Optimus objective: reconstruction + β · (thresholded) KL, with β on a schedule.

β schedules (``beta_at(step)``):

* ``cyclical`` — the reference's "zero-linear" cycles (``frange_cycle_zero_linear``): the run is cut
  into ``n_cycle`` periods; each spends ``ratio_zero`` of its length at β = 0, ramps linearly to
  ``beta_max`` over the next ``ratio_increase``, and stays at ``beta_max`` for the rest. The paper
  uses 10 cycles for pre-training and 1 for fine-tuning, ratio_zero 0.5, ratio_increase 0.25.
* ``monotonic`` — a linear ramp from 0 to ``beta_max`` over ``ratio_increase`` of the run, then flat.
* ``constant`` — ``beta_max`` throughout.

KL thresholding with λ (``kl_threshold``):

* ``per_dim`` (the reference's rule) — for each sample and latent dimension, the KL term counts only
  where it exceeds λ: ``Σ_d 1[KL_nd > λ] · KL_nd``. Dimensions under the threshold get no gradient
  from the KL, so they are free to carry information.
* ``free_bits`` — batch-averaged free bits (Kingma et al., 2016): ``Σ_d max(λ, mean_n KL_nd)``.

With λ = 0 both reduce to the plain KL. During β = 0 phases z is still sampled (the model is an
autoencoder with noise, not a deterministic one), as in the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dgm_core.errors import UserError
from dgm_core.metrics.latent import gaussian_kl

BETA_SCHEDULES = ("cyclical", "monotonic", "constant")
KL_MODES = ("per_dim", "free_bits")


@dataclass(frozen=True)
class BetaSchedule:
    """β as a function of the (1-based) training step."""

    kind: str = "cyclical"
    total_steps: int = 1000
    beta_max: float = 1.0
    n_cycle: int = 1
    ratio_zero: float = 0.5
    ratio_increase: float = 0.25

    def __post_init__(self) -> None:
        if self.kind not in BETA_SCHEDULES:
            raise UserError(
                f"unknown beta schedule '{self.kind}': expected one of {', '.join(BETA_SCHEDULES)}"
            )
        if self.total_steps < 1 or self.n_cycle < 1:
            raise UserError("beta schedule needs total_steps >= 1 and n_cycle >= 1")
        if not (
            self.ratio_zero >= 0 and self.ratio_increase > 0 and self.ratio_zero + self.ratio_increase <= 1
        ):
            raise UserError(
                f"beta schedule ratios must satisfy 0 <= ratio_zero, 0 < ratio_increase, sum <= 1 "
                f"(got {self.ratio_zero}, {self.ratio_increase})"
            )

    def __call__(self, step: int) -> float:
        return self.beta_at(step)

    def beta_at(self, step: int) -> float:
        """β at training step ``step`` (1-based: step ``t`` is position ``t-1`` of the reference array)."""
        if self.kind == "constant":
            return self.beta_max
        position = min(max(step - 1, 0), self.total_steps - 1)
        if self.kind == "monotonic":
            ramp = self.total_steps * self.ratio_increase
            return self.beta_max * min(1.0, position / ramp)
        period = self.total_steps / self.n_cycle
        offset = position - int(position / period) * period  # position inside its cycle
        zero_length = period * self.ratio_zero
        if offset < zero_length:
            return 0.0
        # The reference ramps from the first index past the zero phase, by beta_max/(period·ratio_increase).
        first_ramp_index = math.ceil(zero_length)
        ramp = (offset - first_ramp_index) / (period * self.ratio_increase)
        return self.beta_max * min(1.0, max(0.0, ramp))


def thresholded_kl(kl: torch.Tensor, kl_threshold: float = 0.0, mode: str = "per_dim") -> torch.Tensor:
    """The KL term per sample ``[B]`` from per-sample, per-dimension KL ``[B, D]``.

    ``per_dim``: ``Σ_d 1[KL_nd > λ]·KL_nd``. ``free_bits``: ``Σ_d max(λ, mean_n KL_nd)``, the same
    value for every sample of the batch (its batch mean is the free-bits objective).
    """
    if mode not in KL_MODES:
        raise UserError(f"unknown KL mode '{mode}': expected one of {', '.join(KL_MODES)}")
    if kl_threshold < 0:
        raise UserError(f"kl_threshold must be >= 0, got {kl_threshold}")
    if mode == "per_dim":
        if kl_threshold == 0:
            return kl.sum(dim=1)
        return (kl * (kl > kl_threshold).to(kl.dtype)).sum(dim=1)
    per_dim = kl.mean(dim=0).clamp(min=kl_threshold)
    return per_dim.sum().expand(kl.shape[0])


@dataclass
class LossTerms:
    """The loss and the numbers logged beside it (all batch means)."""

    loss: torch.Tensor
    reconstruction: torch.Tensor  # mean -log p(x|z) per sentence
    kl: torch.Tensor  # mean plain KL(q(z|x) || p(z)) per sentence
    kl_term: torch.Tensor  # mean thresholded KL that enters the loss
    beta: float


def vae_loss(
    reconstruction_nll: torch.Tensor,
    num_tokens: torch.Tensor,
    mean: torch.Tensor,
    logvar: torch.Tensor,
    beta: float,
    kl_threshold: float = 0.0,
    kl_mode: str = "per_dim",
    length_weighted: bool = False,
) -> LossTerms:
    """``mean_n [rec_n + β · KL_term_n]``; ``length_weighted`` divides each ``rec_n`` by its token count."""
    kl = gaussian_kl(mean, logvar)
    kl_term = thresholded_kl(kl, kl_threshold, kl_mode)
    rec = reconstruction_nll / num_tokens.clamp(min=1) if length_weighted else reconstruction_nll
    loss = (rec + beta * kl_term).mean()
    return LossTerms(loss, reconstruction_nll.mean(), kl.sum(dim=1).mean(), kl_term.mean(), beta)
