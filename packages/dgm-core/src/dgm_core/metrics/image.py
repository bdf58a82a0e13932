"""Sample-quality scores computed from features: KID, Inception Score, improved precision/recall.

FID itself is :func:`dgm_core.metrics.frechet_distance` applied to two sets of
:class:`~dgm_core.metrics.FeatureStatistics`. Every function here takes features already
extracted (by :func:`~dgm_core.metrics.extract_features` or any extractor) and works in float64.
"""

from __future__ import annotations

import numpy as np
import torch

from dgm_core.errors import UserError


def _feature_matrix(name: str, features: torch.Tensor | np.ndarray) -> torch.Tensor:
    tensor = torch.as_tensor(features).detach()
    if tensor.ndim != 2:
        raise UserError(f"{name} must be a (N, D) matrix, got shape {tuple(tensor.shape)}")
    tensor = tensor.to(dtype=torch.float64)
    if not torch.isfinite(tensor).all():
        raise UserError(f"{name} contains NaN or infinite values")
    return tensor


def _polynomial_kernel(
    x: torch.Tensor, y: torch.Tensor, degree: int, gamma: float, coef0: float
) -> torch.Tensor:
    return (x @ y.T * gamma + coef0) ** degree


def kernel_inception_distance(
    features_a: torch.Tensor | np.ndarray,
    features_b: torch.Tensor | np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    *,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (Bińkowski et al., 2018): unbiased MMD² with the cubic polynomial kernel, over random subsets.

    ``k(x, y) = (xᵀy / D + 1)³``. For each of ``num_subsets`` subsets of ``subset_size`` rows drawn
    without replacement from each set (new draw per subset), the unbiased estimate is

        MMD²_u = Σ_{i≠j} k(a_i, a_j) / (m(m-1)) + Σ_{i≠j} k(b_i, b_j) / (m(m-1)) - 2 Σ_{i,j} k(a_i, b_j) / m²,

    and the result is the mean and the (population, ddof=0) standard deviation over subsets —
    the defaults and estimator of the KID paper and torch-fidelity (100 subsets of 1000).
    Values are often reported ×1000. Subset draws come from ``torch.Generator`` seeded with
    ``seed``, so results are reproducible but not bit-identical to numpy-based tools.

    Raises:
        UserError: mismatched feature dimensions, NaN features, or a set smaller than ``subset_size``.
    """
    a = _feature_matrix("features_a", features_a)
    b = _feature_matrix("features_b", features_b)
    if a.shape[1] != b.shape[1]:
        raise UserError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if subset_size < 2 or num_subsets < 1:
        raise UserError(
            f"KID needs subset_size >= 2 and num_subsets >= 1, got {subset_size} and {num_subsets}"
        )
    if min(a.shape[0], b.shape[0]) < subset_size:
        raise UserError(
            f"KID subset_size={subset_size} exceeds the samples available ({a.shape[0]} and {b.shape[0]}); "
            f"pass subset_size <= {min(a.shape[0], b.shape[0])}"
        )
    gamma = 1.0 / a.shape[1] if gamma is None else gamma
    generator = torch.Generator().manual_seed(seed)
    m = subset_size
    estimates = torch.empty(num_subsets, dtype=torch.float64)
    for index in range(num_subsets):
        x = a[torch.randperm(a.shape[0], generator=generator)[:m]]
        y = b[torch.randperm(b.shape[0], generator=generator)[:m]]
        k_xx = _polynomial_kernel(x, x, degree, gamma, coef0)
        k_yy = _polynomial_kernel(y, y, degree, gamma, coef0)
        k_xy = _polynomial_kernel(x, y, degree, gamma, coef0)
        within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
        estimates[index] = within - 2.0 * k_xy.sum() / (m * m)
    return float(estimates.mean()), float(estimates.std(unbiased=False))


def inception_score(probabilities: torch.Tensor | np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Inception Score (Salimans et al., 2016): exp E_x KL(p(y|x) || p(y)), mean and std over splits.

    Args:
        probabilities: (N, classes) class probabilities p(y|x), rows summing to 1. For the FID
            Inception use ``logits.softmax(-1)`` of the 1008-way logits from
            :func:`extract_features` (computed without the fc bias, as the original IS code).
        splits: the samples are cut, in the given order, into ``splits`` consecutive chunks
            (sizes differ by at most one); p(y) is the mean prediction within a chunk. The
            result is the mean and population (ddof=0) std of the per-chunk scores, as the
            original code and torch-fidelity report (``splits=10`` is standard).

    Bounds: 1 when every prediction equals p(y); k when predictions are one-hot and spread
    evenly over k classes within each chunk.
    """
    p = _feature_matrix("probabilities", probabilities)
    if (p < 0).any() or not torch.allclose(p.sum(dim=1), torch.ones(p.shape[0], dtype=p.dtype), atol=1e-3):
        raise UserError(
            "probabilities must be non-negative with rows summing to 1; pass logits.softmax(-1), not logits"
        )
    if splits < 1 or p.shape[0] < splits:
        raise UserError(
            f"inception score with splits={splits} needs at least that many samples, got {p.shape[0]}"
        )
    n = p.shape[0]
    scores = torch.empty(splits, dtype=torch.float64)
    for index in range(splits):
        chunk = p[index * n // splits : (index + 1) * n // splits]
        marginal = chunk.mean(dim=0, keepdim=True)
        # xlogy makes 0·log 0 = 0 for classes a sample (or the whole chunk) never predicts.
        kl = (torch.special.xlogy(chunk, chunk) - torch.special.xlogy(chunk, marginal)).sum(dim=1)
        scores[index] = kl.mean().exp()
    return float(scores.mean()), float(scores.std(unbiased=False))


def _kth_neighbour_radii(features: torch.Tensor, k: int, block_size: int) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row (the row itself is at distance 0)."""
    radii = []
    for start in range(0, features.shape[0], block_size):
        distances = torch.cdist(features[start : start + block_size], features)
        radii.append(distances.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def _fraction_in_manifold(
    queries: torch.Tensor, reference: torch.Tensor, radii: torch.Tensor, block_size: int
) -> float:
    inside = 0
    for start in range(0, queries.shape[0], block_size):
        distances = torch.cdist(queries[start : start + block_size], reference)
        inside += int((distances <= radii.unsqueeze(0)).any(dim=1).sum())
    return inside / queries.shape[0]


def precision_recall(
    real_features: torch.Tensor | np.ndarray,
    fake_features: torch.Tensor | np.ndarray,
    k: int = 3,
    block_size: int = 1024,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) with k-NN manifold estimates.

    The real manifold is the union of balls around each real feature with radius its distance to
    its k-th nearest real neighbour (k=3 in the paper); precision is the fraction of fake features
    inside it. Recall swaps the roles. Euclidean distances in float64, computed in row blocks of
    ``block_size`` so memory stays O(block_size · N).
    """
    real = _feature_matrix("real_features", real_features)
    fake = _feature_matrix("fake_features", fake_features)
    if real.shape[1] != fake.shape[1]:
        raise UserError(f"feature dimensions differ: {real.shape[1]} vs {fake.shape[1]}")
    if min(real.shape[0], fake.shape[0]) <= k:
        raise UserError(f"precision/recall with k={k} needs more than {k} samples in each set")
    real_radii = _kth_neighbour_radii(real, k, block_size)
    fake_radii = _kth_neighbour_radii(fake, k, block_size)
    precision = _fraction_in_manifold(fake, real, real_radii, block_size)
    recall = _fraction_in_manifold(real, fake, fake_radii, block_size)
    return precision, recall


__all__ = ["inception_score", "kernel_inception_distance", "precision_recall"]
