"""Latent-variable metrics against closed forms: KL, mutual information, active units, IW-NLL, PPL."""

import math
import subprocess
import sys

import pytest
import torch

from dgm_core.errors import UserError
from dgm_core.metrics import (
    active_units,
    gaussian_kl,
    iw_log_likelihood,
    mutual_information,
    perplexity,
)
from dgm_core.metrics.latent import gaussian_kl as gaussian_kl_from_module


def test_latent_metrics_are_reexported_from_the_package():
    assert gaussian_kl is gaussian_kl_from_module


def test_gaussian_kl_matches_torch_distributions_and_is_zero_at_the_prior():
    generator = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(6, 4, generator=generator), torch.randn(6, 4, generator=generator)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
    )
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected)
    assert torch.equal(gaussian_kl(torch.zeros(3, 2), torch.zeros(3, 2)), torch.zeros(3, 2))


def test_gaussian_kl_is_differentiable():
    mu = torch.ones(2, 3, requires_grad=True)
    gaussian_kl(mu, torch.zeros(2, 3)).sum().backward()
    torch.testing.assert_close(mu.grad, torch.ones(2, 3))  # d/dmu of mu²/2


def _typical_sample(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + σ·1: its squared standardised norm is D, the expected value, so log q(z|x) equals the
    exact negative entropy and the Monte Carlo part of the estimator carries no sampling noise."""
    return mu + (0.5 * logvar).exp()


def test_mutual_information_of_a_posterior_that_ignores_x_is_zero():
    n, dim = 500, 4
    mu = torch.full((n, dim), 0.3, dtype=torch.float64)
    logvar = torch.full((n, dim), -0.5, dtype=torch.float64)
    # q(z|x) is the same for every x, so q(z) = q(z|x) and I(x; z) = 0.
    assert mutual_information(mu, logvar, _typical_sample(mu, logvar)) == pytest.approx(0.0, abs=1e-12)
    # With sampled z the exact entropy meets a Monte Carlo mean of log q(z), standard error sqrt(D/2N).
    generator = torch.Generator().manual_seed(1)
    sampled = mutual_information(mu, logvar, generator=generator)
    assert sampled == pytest.approx(0.0, abs=4 * math.sqrt(dim / 2 / n))


def test_mutual_information_of_distinguishable_posteriors_reaches_log_n():
    n, dim = 64, 3
    mu = torch.arange(n, dtype=torch.float64).unsqueeze(1).repeat(1, dim) * 10.0
    logvar = torch.full((n, dim), -4.0, dtype=torch.float64)  # σ = 0.14 ≪ spacing 10: z identifies x
    assert mutual_information(mu, logvar, _typical_sample(mu, logvar)) == pytest.approx(math.log(n), abs=1e-9)


def test_mutual_information_matches_a_direct_double_loop_and_blocks_do_not_matter():
    generator = torch.Generator().manual_seed(3)
    n, dim = 30, 2
    mu = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    logvar = torch.randn(n, dim, generator=generator, dtype=torch.float64) * 0.3
    z = mu + (0.5 * logvar).exp() * torch.randn(n, dim, generator=generator, dtype=torch.float64)
    posteriors = [
        torch.distributions.Independent(torch.distributions.Normal(mu[m], (0.5 * logvar[m]).exp()), 1)
        for m in range(n)
    ]
    neg_entropy = -sum(p.entropy() for p in posteriors) / n
    log_qz = [
        torch.logsumexp(torch.stack([p.log_prob(z[i]) for p in posteriors]), 0) - math.log(n)
        for i in range(n)
    ]
    expected = float(neg_entropy - sum(log_qz) / n)
    assert mutual_information(mu, logvar, z) == pytest.approx(expected, rel=1e-10)
    assert mutual_information(mu, logvar, z, block_size=7) == pytest.approx(expected, rel=1e-10)


def test_active_units_count_constructed_means():
    generator = torch.Generator().manual_seed(4)
    n = 5000
    means = torch.zeros(n, 5)
    means[:, 0] = torch.randn(n, generator=generator)  # variance 1: active
    means[:, 1] = torch.randn(n, generator=generator) * 0.2  # variance 0.04: active
    means[:, 2] = torch.randn(n, generator=generator) * 0.05  # variance 0.0025: inactive
    means[:, 3] = 7.0  # constant: collapsed
    means[:, 4] = torch.randn(n, generator=generator) * 0.01 + 3.0  # inactive
    count, variance = active_units(means)
    assert count == 2
    assert variance.shape == (5,)
    assert variance[3] == 0.0
    torch.testing.assert_close(variance, means.double().var(dim=0), rtol=1e-12, atol=0.0)
    assert active_units(means, threshold=1e-3)[0] == 3


def test_iw_log_likelihood_is_logsumexp_minus_log_k():
    log_weights = torch.tensor([[0.0, 0.0, 0.0, 0.0], [-1.0, -2.0, -3.0, -1000.0]])
    result = iw_log_likelihood(log_weights)
    assert result[0].item() == pytest.approx(0.0, abs=1e-7)
    expected = math.log(math.exp(-1) + math.exp(-2) + math.exp(-3)) - math.log(4)
    assert result[1].item() == pytest.approx(expected, rel=1e-6)
    # K = 1 is the single-sample ELBO itself.
    torch.testing.assert_close(iw_log_likelihood(log_weights[:, :1]), log_weights[:, 0])


def test_iw_bound_tightens_with_more_samples_on_average():
    # log p(x) = 0 with weights w = p(x,z)/q(z|x) log-normal around it: more samples, tighter bound.
    generator = torch.Generator().manual_seed(5)
    log_weights = torch.randn(2000, 100, generator=generator) - 0.5  # E[w] = 1
    assert iw_log_likelihood(log_weights[:, :1]).mean() < iw_log_likelihood(log_weights).mean() < 0.05


def test_perplexity_is_exp_of_mean_token_nll():
    assert perplexity(0.0, 10) == 1.0
    assert perplexity(10 * math.log(50.0), 10) == pytest.approx(50.0)
    assert perplexity(torch.tensor(20.0), 10) == pytest.approx(math.exp(2.0))


def test_bad_latent_inputs_are_user_errors():
    with pytest.raises(UserError, match="same shape"):
        gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(UserError, match="NaN"):
        mutual_information(torch.full((3, 2), float("nan")), torch.zeros(3, 2))
    with pytest.raises(UserError, match="N >= 2"):
        active_units(torch.zeros(1, 4))
    with pytest.raises(UserError, match="positive token count"):
        perplexity(1.0, 0)
    with pytest.raises(UserError, match=r"\(B, K\)"):
        iw_log_likelihood(torch.zeros(5))


@pytest.mark.slow
def test_mutual_information_of_ten_thousand_768_d_posteriors_stays_under_one_gigabyte():
    # Broadcasting every (sample, posterior, dimension) difference would need ~59 GB here.
    code = (
        "import resource, torch\n"
        "from dgm_core.metrics.latent import mutual_information\n"
        "torch.set_num_threads(2)\n"
        "g = torch.Generator().manual_seed(0)\n"
        "mu = torch.randn(10_000, 768, generator=g)\n"
        "logvar = torch.randn(10_000, 768, generator=g) * 0.1 - 1.0\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "value = mutual_information(mu, logvar, generator=g)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(value, (after - before) / 1024)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    value, extra_mib = map(float, result.stdout.split())
    assert extra_mib < 1024, f"peak memory grew by {extra_mib:.0f} MiB"
    # Far-apart posteriors: I(x; z) = log N; the one-sample estimate has a standard error of
    # sqrt(768 / 2) / sqrt(10 000) ≈ 0.2 nats around it.
    assert abs(value - math.log(10_000)) < 0.8
