"""β schedules, KL thresholding arithmetic and the importance-weighted bound."""

from __future__ import annotations

import math

import pytest
import torch
from optimus_tiny import tiny_vae

from dgm_core.errors import UserError
from dgm_core.metrics.latent import gaussian_kl, iw_log_likelihood
from optimus.data import TextBatch
from optimus.evaluation import iw_log_weights
from optimus.objective import BetaSchedule, thresholded_kl, vae_loss


def _reference_zero_linear(
    n_iter: int, stop: float, n_cycle: int, ratio_increase: float, ratio_zero: float
) -> list:
    """The published frange_cycle_zero_linear algorithm, written out as a loop (start = 0)."""
    values = [stop] * n_iter
    period = n_iter / n_cycle
    step = stop / (period * ratio_increase)
    for c in range(n_cycle):
        v, i = 0.0, 0
        while v <= stop and int(i + c * period) < n_iter:
            if i < period * ratio_zero:
                values[int(i + c * period)] = 0.0
            else:
                values[int(i + c * period)] = v
                v += step
            i += 1
    return values


@pytest.mark.parametrize(
    "n_iter,n_cycle,ratio_zero,ratio_increase,beta_max",
    [(100, 1, 0.5, 0.25, 1.0), (100, 4, 0.5, 0.25, 1.0), (1000, 10, 0.5, 0.25, 0.5), (60, 3, 0.3, 0.5, 1.0)],
)
def test_cyclical_schedule_matches_the_reference_loop(n_iter, n_cycle, ratio_zero, ratio_increase, beta_max):
    schedule = BetaSchedule("cyclical", n_iter, beta_max, n_cycle, ratio_zero, ratio_increase)
    expected = _reference_zero_linear(n_iter, beta_max, n_cycle, ratio_increase, ratio_zero)
    got = [schedule(step) for step in range(1, n_iter + 1)]
    assert got == pytest.approx(expected, abs=1e-9)


def test_cyclical_schedule_phases_by_hand():
    schedule = BetaSchedule(
        "cyclical", total_steps=40, beta_max=1.0, n_cycle=2
    )  # period 20: 10 zero, 5 ramp, 5 flat
    assert [schedule(s) for s in range(1, 11)] == [0.0] * 10
    assert [schedule(s) for s in range(11, 17)] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert [schedule(s) for s in range(17, 21)] == [1.0] * 4
    assert schedule(21) == 0.0 and schedule(40) == 1.0


def test_monotonic_and_constant_schedules():
    mono = BetaSchedule("monotonic", total_steps=100, beta_max=2.0, ratio_increase=0.25)
    assert (
        mono(1) == 0.0 and mono(13) == pytest.approx(2.0 * 12 / 25) and mono(26) == 2.0 and mono(100) == 2.0
    )
    assert BetaSchedule("constant", total_steps=10, beta_max=0.3)(7) == 0.3


def test_bad_schedules_are_user_errors():
    with pytest.raises(UserError, match="unknown beta schedule"):
        BetaSchedule("cosine")
    with pytest.raises(UserError, match="ratios"):
        BetaSchedule("cyclical", ratio_zero=0.9, ratio_increase=0.5)


def test_per_dim_threshold_keeps_only_dimensions_above_lambda():
    kl = torch.tensor([[0.05, 0.2, 0.6], [1.0, 0.1, 0.0]])
    torch.testing.assert_close(thresholded_kl(kl, 0.1, "per_dim"), torch.tensor([0.8, 1.0]))
    torch.testing.assert_close(thresholded_kl(kl, 0.0, "per_dim"), kl.sum(1))
    torch.testing.assert_close(thresholded_kl(kl, 5.0, "per_dim"), torch.zeros(2))


def test_per_dim_threshold_gives_no_gradient_to_dimensions_below_lambda():
    mean = torch.tensor([[0.1, 2.0]], requires_grad=True)
    logvar = torch.zeros(1, 2, requires_grad=True)
    thresholded_kl(gaussian_kl(mean, logvar), 0.5).sum().backward()
    assert mean.grad[0, 0] == 0 and mean.grad[0, 1] == pytest.approx(2.0)


def test_free_bits_clamps_the_batch_mean_of_each_dimension():
    kl = torch.tensor([[0.0, 1.0, 3.0], [0.2, 0.0, 1.0]])  # batch means 0.1, 0.5, 2.0
    torch.testing.assert_close(thresholded_kl(kl, 0.4, "free_bits"), torch.full((2,), 0.4 + 0.5 + 2.0))


def test_vae_loss_combines_reconstruction_beta_and_length_weighting():
    rec = torch.tensor([10.0, 20.0])
    tokens = torch.tensor([5.0, 10.0])
    mean, logvar = torch.tensor([[1.0], [0.0]]), torch.zeros(2, 1)  # KL 0.5 and 0
    terms = vae_loss(rec, tokens, mean, logvar, beta=2.0)
    assert terms.loss.item() == pytest.approx((10 + 2 * 0.5 + 20) / 2)
    assert terms.kl.item() == pytest.approx(0.25)
    weighted = vae_loss(rec, tokens, mean, logvar, beta=2.0, length_weighted=True)
    assert weighted.loss.item() == pytest.approx((2 + 1 + 2) / 2)
    assert vae_loss(rec, tokens, mean, logvar, beta=0.0).loss.item() == pytest.approx(15.0)


def test_z_is_still_sampled_when_beta_is_zero():
    torch.manual_seed(0)
    model = tiny_vae()
    enc = torch.randint(5, 40, (2, 5))
    dec = torch.randint(3, 40, (2, 6))
    a = model(enc, torch.ones_like(enc), dec, torch.ones_like(dec))
    b = model(enc, torch.ones_like(enc), dec, torch.ones_like(dec))
    assert not torch.equal(a.z, b.z) and torch.equal(a.mean, b.mean)


def _batch() -> TextBatch:
    torch.manual_seed(1)
    enc = torch.randint(5, 40, (3, 6))
    dec = torch.randint(3, 40, (3, 7))
    return TextBatch(enc, torch.ones_like(enc), dec, torch.ones_like(dec))


def test_iw_bound_with_one_sample_is_a_one_sample_elbo_estimate():
    model = tiny_vae()
    batch = _batch()
    mean, logvar = model.encode(batch.encoder_ids, batch.encoder_mask)
    torch.manual_seed(5)
    log_w, rec = iw_log_weights(model, batch, num_samples=1)
    bound = iw_log_likelihood(log_w)
    torch.manual_seed(5)
    z = model.reparameterize(mean, logvar, 1)[:, 0]
    nll, _ = model.reconstruction_nll(z, batch.decoder_ids, batch.decoder_mask)
    log_q = torch.distributions.Normal(mean, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(bound, -nll + log_p - log_q, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(rec, nll)
    # Its expectation is the analytic ELBO −E[rec] − KL: the K columns of one call are independent draws.
    torch.manual_seed(6)
    many = iw_log_weights(model, batch, num_samples=400, chunk=100)[0].mean(1)
    z = model.reparameterize(mean, logvar, 400).reshape(-1, mean.shape[1])
    recs, _ = model.reconstruction_nll(
        z, batch.decoder_ids.repeat_interleave(400, 0), batch.decoder_mask.repeat_interleave(400, 0)
    )
    elbo = -recs.view(3, 400).mean(1) - gaussian_kl(mean, logvar).sum(-1)
    torch.testing.assert_close(many, elbo, atol=0.3, rtol=0)


def test_iw_bound_does_not_decrease_in_expectation_as_k_grows():
    model = tiny_vae()
    # A wide posterior makes the K=1 bound loose so the gain from K is visible.
    with torch.no_grad():
        model.latent_head.weight.mul_(40)
    batch = _batch()
    torch.manual_seed(7)
    # 1500 independent importance samples per sentence, split into groups of K: the mean bound per K.
    log_w = iw_log_weights(model, batch, num_samples=1500, chunk=250)[0]
    means = {k: iw_log_likelihood(log_w.reshape(-1, k)).mean() for k in (1, 5, 50)}
    assert means[1] <= means[5] + 1e-3 <= means[50] + 2e-3
    assert means[50] - means[1] > 0.01
    assert math.isfinite(float(means[50]))
