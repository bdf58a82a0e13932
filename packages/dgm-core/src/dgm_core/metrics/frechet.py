"""The Fréchet distance between two Gaussians, in float64, through symmetric eigenvalues.

For N(mu1, S1) and N(mu2, S2) the squared Fréchet (2-Wasserstein) distance is

    d² = ||mu1 - mu2||² + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}).

pytorch-fid evaluates the last term with ``scipy.linalg.sqrtm`` of the non-symmetric
product S1 S2 (a Schur decomposition in complex arithmetic, ~10 s for 2048 dims). The
trace only needs the eigenvalues of S1 S2, and those equal the eigenvalues of the
*symmetric* matrix A S2 A for any factor A of S1 (S1 = A Aᵀ): with a Cholesky factor L,
``eig(S1 S2) = eig(L (Lᵀ S2 L) L⁻¹) = eig(Lᵀ S2 L)``. So

    tr((S1 S2)^{1/2}) = Σ_i sqrt(λ_i(Lᵀ S2 L)),

one Cholesky and one symmetric eigenvalue problem, both backward stable.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import scipy.linalg.blas
import torch

from dgm_core.errors import UserError


def _as_float64(name: str, value: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to(device="cpu", dtype=torch.float64)
    else:
        tensor = torch.as_tensor(np.asarray(value, dtype=np.float64))
    if not torch.isfinite(tensor).all():
        raise UserError(f"{name} contains NaN or infinite values; the feature statistics are corrupt")
    return tensor


def _cholesky_factor(sigma: torch.Tensor) -> torch.Tensor | None:
    """Lower Cholesky factor of a positive definite sigma, None when it is (numerically) singular."""
    factor, info = torch.linalg.cholesky_ex(sigma)
    return factor if int(info) == 0 else None


def _eigen_square_root(name: str, sigma: torch.Tensor, eps: float) -> torch.Tensor:
    """U diag(sqrt(max(λ, 0))) Uᵀ: a factor of any positive semi-definite sigma (A Aᵀ = sigma)."""
    eigenvalues, eigenvectors = torch.linalg.eigh(sigma)
    scale = max(float(eigenvalues.abs().max()), 1.0)
    if float(eigenvalues.min()) < -eps * scale:
        raise UserError(
            f"{name} is not positive semi-definite (smallest eigenvalue {float(eigenvalues.min()):.3g}, "
            f"largest {float(eigenvalues.max()):.3g}); it is not a covariance matrix"
        )
    root = eigenvectors * eigenvalues.clamp_min(0.0).sqrt()
    return root @ eigenvectors.T


def _whitened_eigenvalues(factor: torch.Tensor, other: torch.Tensor, triangular: bool) -> torch.Tensor:
    """Eigenvalues of ``Aᵀ S A`` (symmetric), where ``A = factor`` and ``S = other``.

    With a Cholesky factor the two products go through BLAS ``trmm``, which exploits the
    triangle and does half the work of general matrix products; the eigenvalues come from
    LAPACK's symmetric solver without eigenvectors. Together that is about 1.5x faster at 2048-d
    than two GEMMs and torch's eigvalsh on the 2-core development machine.
    """
    a, s = factor.numpy(), other.numpy()
    if triangular:
        product = scipy.linalg.blas.dtrmm(1.0, a, s, side=1, lower=1)  # S A
        product = scipy.linalg.blas.dtrmm(1.0, a, product, side=0, lower=1, trans_a=1)  # Aᵀ (S A)
    else:
        product = a.T @ s @ a
    product = 0.5 * (product + product.T)
    return torch.from_numpy(scipy.linalg.eigvalsh(product, overwrite_a=True, check_finite=False))


def frechet_distance(
    mu1: np.ndarray | torch.Tensor,
    sigma1: np.ndarray | torch.Tensor,
    mu2: np.ndarray | torch.Tensor,
    sigma2: np.ndarray | torch.Tensor,
    eps: float = 1e-6,
) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (the FID of two feature sets).

    Computed in float64 on the CPU as ``||mu1-mu2||² + tr(S1) + tr(S2) - 2 Σ sqrt(λ_i(Lᵀ S2 L))``
    where ``S1 = L Lᵀ`` (module docstring). Inputs may be numpy arrays or tensors of any float dtype.

    Epsilon handling. Both covariances are symmetrised first ((S + Sᵀ)/2, removing storage
    asymmetry). The trace term is symmetric in S1 and S2, so whichever is positive definite
    is factored by Cholesky (sigma1 first). Singular or near-singular covariances (fewer
    samples than dimensions, dead features) need no offset: if neither is positive definite,
    sigma1 is factored by its symmetric square root with eigenvalues clamped at zero, which
    gives the exact trace term for every positive semi-definite pair; a ``RuntimeWarning``
    says so. Eigenvalues below ``-eps * max(1, |λ|max)`` (of the matrix square-rooted, or of
    the whitened product ``Aᵀ S A``) are not rounding error and raise ``UserError`` (not a
    covariance); smaller negative ones are clamped to zero before the square root. Unlike
    pytorch-fid no ``eps * I`` is ever added, so the value never depends on ``eps`` for valid
    covariances.

    Raises:
        UserError: mismatched shapes, NaN/inf entries, or a matrix that is not a covariance.
    """
    mu1_t, mu2_t = _as_float64("mu1", mu1).reshape(-1), _as_float64("mu2", mu2).reshape(-1)
    sigma1_t, sigma2_t = _as_float64("sigma1", sigma1), _as_float64("sigma2", sigma2)
    dim = mu1_t.numel()
    if dim == 0:
        raise UserError("mu1 is empty; feature statistics need at least one dimension")
    if mu2_t.numel() != dim:
        raise UserError(f"mean vectors have different feature dimensions: {dim} vs {mu2_t.numel()}")
    for name, sigma in (("sigma1", sigma1_t), ("sigma2", sigma2_t)):
        if sigma.shape != (dim, dim):
            raise UserError(
                f"{name} has shape {tuple(sigma.shape)}, expected ({dim}, {dim}) to match the mean"
            )
    sigma1_t = 0.5 * (sigma1_t + sigma1_t.T)
    sigma2_t = 0.5 * (sigma2_t + sigma2_t.T)

    # tr((S1 S2)^{1/2}) is symmetric in the two matrices (eig(S1 S2) = eig(S2 S1)), so either may
    # be factored: a singular generated-sample covariance against full-rank reference statistics
    # still takes the Cholesky route through the reference.
    other, other_name = sigma2_t, "sigma2"
    factor = _cholesky_factor(sigma1_t)
    if factor is None:
        other, other_name = sigma1_t, "sigma1"
        factor = _cholesky_factor(sigma2_t)
    singular = factor is None
    if singular:
        warnings.warn(
            "both covariances are singular (not positive definite; fewer samples than dimensions?); "
            "the Fréchet distance factors sigma1 by its eigenvalue square root",
            RuntimeWarning,
            stacklevel=2,
        )
        other, other_name = sigma2_t, "sigma2"
        factor = _eigen_square_root("sigma1", sigma1_t, eps)
    eigenvalues = _whitened_eigenvalues(factor, other, triangular=not singular)
    scale = max(float(eigenvalues.abs().max()), 1.0)
    if float(eigenvalues.min()) < -eps * scale:
        # Aᵀ S A is PSD whenever S is; a clearly negative eigenvalue means S is not a covariance.
        raise UserError(
            f"{other_name} is not positive semi-definite (eigenvalue {float(eigenvalues.min()):.3g} of "
            "the whitened product); it is not a covariance matrix"
        )
    trace_sqrt_product = eigenvalues.clamp_min(0.0).sqrt().sum()
    difference = mu1_t - mu2_t
    distance = difference.dot(difference) + sigma1_t.trace() + sigma2_t.trace() - 2.0 * trace_sqrt_product
    return float(distance)
