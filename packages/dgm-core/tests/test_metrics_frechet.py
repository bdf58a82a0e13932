"""Fréchet distance: closed forms, agreement with scipy's sqrtm route, singular and bad inputs."""

import warnings

import numpy as np
import pytest
import scipy.linalg

from dgm_core.errors import UserError
from dgm_core.metrics import frechet_distance


def _random_covariance(rng: np.random.Generator, dim: int, samples: int) -> np.ndarray:
    features = rng.standard_normal((samples, dim)) @ rng.standard_normal((dim, dim)) * 0.3
    return np.cov(features, rowvar=False)


def _scipy_frechet(mu1, sigma1, mu2, sigma2) -> float:
    """pytorch-fid's formula: sqrtm of the non-symmetric product, real part of its trace."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def test_identical_gaussians_have_zero_distance():
    rng = np.random.default_rng(0)
    mu, sigma = rng.standard_normal(16), _random_covariance(rng, 16, 200)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9


def test_shifted_standard_normals_distance_is_squared_mean_shift():
    dim = 32
    shift = np.linspace(-1.0, 2.0, dim)
    distance = frechet_distance(np.zeros(dim), np.eye(dim), shift, np.eye(dim))
    assert distance == pytest.approx(float(shift @ shift), rel=1e-12)


def test_scaled_isotropic_covariances_match_closed_form():
    # N(0, a I) vs N(0, b I): d² = D (sqrt(a) - sqrt(b))².
    dim, a, b = 10, 4.0, 0.25
    distance = frechet_distance(np.zeros(dim), a * np.eye(dim), np.zeros(dim), b * np.eye(dim))
    assert distance == pytest.approx(dim * (2.0 - 0.5) ** 2, rel=1e-12)


@pytest.mark.parametrize("dim", [8, 64, 256])
def test_agrees_with_scipy_sqrtm_on_random_covariances(dim):
    rng = np.random.default_rng(dim)
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    sigma1 = _random_covariance(rng, dim, 4 * dim)
    sigma2 = _random_covariance(rng, dim, 4 * dim)
    expected = _scipy_frechet(mu1, sigma1, mu2, sigma2)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-6)


def test_accepts_torch_float32_inputs():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(12), rng.standard_normal(12)
    sigma1, sigma2 = _random_covariance(rng, 12, 100), _random_covariance(rng, 12, 100)
    expected = frechet_distance(mu1, sigma1, mu2, sigma2)
    got = frechet_distance(*(torch.tensor(x, dtype=torch.float32) for x in (mu1, sigma1, mu2, sigma2)))
    assert got == pytest.approx(expected, rel=1e-4)


def _eigenvalue_reference(mu1, sigma1, mu2, sigma2) -> float:
    """The trace term from the eigenvalues of sigma1 sigma2 (real, non-negative up to rounding)."""
    eigenvalues = np.linalg.eigvals(sigma1 @ sigma2).real.clip(min=0)
    return float(
        np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(eigenvalues).sum()
    )


def test_one_singular_covariance_takes_the_cholesky_route_through_the_other():
    # Fewer samples than dimensions: rank 5 in 20 dims, against a full-rank reference, either order.
    rng = np.random.default_rng(2)
    dim = 20
    low_rank = rng.standard_normal((dim, 5))
    singular, full = low_rank @ low_rank.T, _random_covariance(rng, dim, 100)
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        forward = frechet_distance(mu1, singular, mu2, full)
        backward = frechet_distance(mu2, full, mu1, singular)
    expected = _eigenvalue_reference(mu1, singular, mu2, full)
    assert forward == pytest.approx(expected, rel=1e-6)
    assert backward == pytest.approx(expected, rel=1e-6)


def test_two_singular_covariances_use_the_eigen_route_and_stay_exact():
    rng = np.random.default_rng(5)
    dim = 20
    factor1, factor2 = rng.standard_normal((dim, 5)), rng.standard_normal((dim, 8))
    sigma1, sigma2 = factor1 @ factor1.T, factor2 @ factor2.T
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    with pytest.warns(RuntimeWarning, match="both covariances are singular"):
        distance = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert distance == pytest.approx(_eigenvalue_reference(mu1, sigma1, mu2, sigma2), rel=1e-6)


def test_positive_definite_input_does_not_warn():
    rng = np.random.default_rng(3)
    sigma = _random_covariance(rng, 6, 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frechet_distance(np.zeros(6), sigma, np.ones(6), sigma)


def test_mismatched_dimensions_are_user_errors():
    with pytest.raises(UserError, match="different feature dimensions"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(UserError, match="sigma2 has shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))


def test_nan_statistics_are_user_errors():
    sigma = np.eye(3)
    sigma[0, 1] = np.nan
    with pytest.raises(UserError, match="NaN"):
        frechet_distance(np.zeros(3), sigma, np.zeros(3), np.eye(3))


def test_indefinite_matrix_is_rejected():
    not_covariance = np.diag([1.0, -0.5, 1.0])
    with pytest.raises(UserError, match="not positive semi-definite"):
        frechet_distance(np.zeros(3), not_covariance, np.zeros(3), np.eye(3))
    with pytest.raises(UserError, match="sigma2 is not positive semi-definite"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), not_covariance)


def test_agrees_with_pytorch_fid_when_installed():
    fid_score = pytest.importorskip("pytorch_fid.fid_score")
    rng = np.random.default_rng(9)
    mu1, mu2 = rng.standard_normal(128), rng.standard_normal(128)
    sigma1, sigma2 = _random_covariance(rng, 128, 400), _random_covariance(rng, 128, 400)
    expected = fid_score.calculate_frechet_distance(mu1, sigma1, mu2, sigma2)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-6)
