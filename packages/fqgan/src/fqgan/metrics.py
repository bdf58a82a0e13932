"""What ``fqgan-eval`` measures, for each kind of data the generators are trained on.

- **Procedural shapes**: the Fréchet distance of factor-classifier features
  (:mod:`fqgan.factor_classifier`) between generated and real images, and mode
  coverage over the 96 factor combinations with the KL of their frequencies from uniform.
- **2-D mixtures**: modes covered by high-quality samples (VEEGAN/PacGAN) and their KL.
- **Images with real data**: FID, KID and IS on features of dgm-core's FID Inception.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from dgm_core.metrics import (
    FeatureStatistics,
    extract_features,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    load_fid_stats,
)
from fqgan.data import (
    NUM_FACTOR_COMBINATIONS,
    ImageDataset,
    factor_combination_index,
    images_in_model_range,
    make_shapes,
)
from fqgan.factor_classifier import ClassifierRecipe, FactorClassifier, default_cache_dir


def kl_from_uniform(counts: torch.Tensor) -> float:
    """KL(p ‖ u) of the empirical distribution ``p = counts / Σ counts`` from uniform ``u`` (nats).

    0 when every category is equally frequent; log K when all mass is on one
    category. Empty categories contribute nothing (0 log 0 = 0).
    """
    counts = counts.double()
    total = counts.sum()
    if total <= 0:
        return float("nan")
    p = counts / total
    k = counts.numel()
    return float(torch.where(p > 0, p * torch.log((p * k).clamp_min(1e-300)), torch.zeros_like(p)).sum())


def mode_coverage(factors: torch.Tensor) -> dict[str, float]:
    """Share of the 96 factor combinations present in ``factors`` (N, 4), and KL of their frequencies."""
    counts = torch.bincount(factor_combination_index(factors), minlength=NUM_FACTOR_COMBINATIONS)
    return {
        "mode_coverage": float((counts > 0).double().mean()),
        "combination_kl": kl_from_uniform(counts),
    }


def mixture_quality(
    points: torch.Tensor, centers: torch.Tensor, std: float, min_count: int = 1
) -> dict[str, float]:
    """Mode collapse on a 2-D mixture.

    A sample is *high quality* when it lies within 3σ of its nearest component
    mean; a mode is *covered* when at least ``min_count`` high-quality samples
    are nearest to it (VEEGAN's definition with ``min_count = 1``).
    """
    distances = torch.cdist(points.double(), centers.double())
    nearest = distances.min(dim=1)
    high_quality = nearest.values <= 3 * std
    counts = torch.bincount(nearest.indices[high_quality], minlength=centers.shape[0])
    return {
        "modes_covered": int((counts >= min_count).sum()),
        "num_modes": int(centers.shape[0]),
        "high_quality": float(high_quality.double().mean()),
        "mode_kl": kl_from_uniform(counts) if int(counts.sum()) > 0 else math.log(centers.shape[0]),
    }


def shapes_quality(
    features: torch.Tensor,
    factors: torch.Tensor,
    real_statistics: FeatureStatistics,
    requested_shapes: torch.Tensor | None = None,
) -> dict[str, float]:
    """Factor-classifier Fréchet distance, mode coverage and KL of generated shapes.

    ``features`` (N, 128) and ``factors`` (N, 4) are :meth:`FactorClassifier.predict`'s outputs for
    the generated images; ``requested_shapes`` (N,), the classes a conditional G was asked for.
    """
    stats = FeatureStatistics(features.shape[1])
    stats.update(features)
    mu_r, sigma_r = real_statistics.to_numpy()
    mu_f, sigma_f = stats.to_numpy()
    result = {"factor_fd": frechet_distance(mu_f, sigma_f, mu_r, sigma_r), **mode_coverage(factors)}
    if requested_shapes is not None:
        result["label_accuracy"] = float((factors[:, 0] == requested_shapes.cpu()).double().mean())
    return result


def real_shape_statistics(
    classifier: FactorClassifier,
    recipe: ClassifierRecipe,
    num_images: int,
    seed: int,
    cache_dir: Path | None = None,
) -> FeatureStatistics:
    """Classifier-feature statistics of ``num_images`` real shapes, cached beside the classifier (.npz)."""
    cache_dir = cache_dir or default_cache_dir()
    path = Path(cache_dir) / f"shapes_stats-{recipe.key()}-n{num_images}-s{seed}.npz"
    if path.is_file():
        return FeatureStatistics.load_npz(path)
    real = make_shapes(num_images, seed)
    features, _ = classifier.predict(images_in_model_range(real.images))
    stats = FeatureStatistics(features.shape[1])
    stats.update(features)
    stats.save_npz(path)
    return stats


def image_quality(
    fake_features: torch.Tensor,
    fake_logits: torch.Tensor | None,
    *,
    real_source: Callable[[], ImageDataset],
    extractor: torch.nn.Module,
    fid_stats: str = "",
    batch_size: int = 250,
    kid_subset_size: int = 1000,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """FID (and KID, IS when possible) of generated features against real data.

    ``real_source()`` returns the real :class:`ImageDataset`; it is only called
    when real features are needed: when ``fid_stats`` is empty or missing (then
    the statistics are computed and, if ``fid_stats`` names a file, written
    there), or for KID. ``extractor`` maps [0, 1] images to features.
    """
    result: dict[str, float] = {}
    real_features = None
    if fid_stats and Path(fid_stats).is_file():
        mu_r, sigma_r = load_fid_stats(fid_stats, dim=fake_features.shape[1])
    else:
        real = real_source()
        real_features, _ = extract_features(extractor, real.images, batch_size, device)
        stats = FeatureStatistics(real_features.shape[1])
        stats.update(real_features)
        if fid_stats:
            stats.save_npz(fid_stats)
        mu_r, sigma_r = stats.to_numpy()
    fake_stats = FeatureStatistics(fake_features.shape[1])
    fake_stats.update(fake_features)
    mu_f, sigma_f = fake_stats.to_numpy()
    result["fid"] = frechet_distance(mu_f, sigma_f, mu_r, sigma_r)
    if real_features is not None:
        subset = min(kid_subset_size, real_features.shape[0], fake_features.shape[0])
        kid_mean, kid_std = kernel_inception_distance(real_features, fake_features, subset_size=subset)
        result.update({"kid": kid_mean, "kid_std": kid_std})
    if fake_logits is not None:
        is_mean, is_std = inception_score(fake_logits.softmax(dim=-1), splits=10)
        result.update({"inception_score": is_mean, "inception_score_std": is_std})
    return result
