"""What ``fqgan-eval`` measures, for each kind of data the generators are trained on.

- **Procedural shapes**: the Fréchet distance of factor-classifier features
  (:mod:`fqgan.factor_classifier`) between generated and real images, and mode
  coverage over the 96 factor combinations with the KL of their frequencies from uniform,
  counting only high-quality samples (classifier confidence and a Mahalanobis distance to the real
  features, :data:`CONFIDENCE_THRESHOLD`, :data:`PLAUSIBLE_QUANTILE`).
- **2-D mixtures**: modes covered by high-quality samples (VEEGAN/PacGAN) and their KL.
- **Images with real data**: FID, KID and IS on features of dgm-core's FID Inception.

:class:`FrechetYardstick` packs one of the two Fréchet distances (FID, or the factor-classifier
distance for shapes) with its cached real statistics, for ranking checkpoints during training.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dgm_core.errors import UserError
from dgm_core.metrics import (
    FeatureStatistics,
    extract_features,
    frechet_distance,
    inception_score,
    iter_features,
    kernel_inception_distance,
    load_fid_inception,
    load_fid_stats,
)
from dgm_core.runtime.files import make_readable
from fqgan.data import (
    NUM_FACTOR_COMBINATIONS,
    ImageDataset,
    PackedImages,
    factor_combination_index,
    images_in_model_range,
    make_shapes,
)
from fqgan.factor_classifier import (
    ClassifierRecipe,
    FactorClassifier,
    default_cache_dir,
    load_factor_classifier,
)
from fqgan.generation import generate_batches

# Seeds of the real shapes behind the reference statistics and behind the fd_real floor: disjoint
# from fqgan-train's data seed and from the factor classifier's training and held-out images.
REFERENCE_SHAPES_SEED = 9_000_001
FLOOR_SHAPES_SEED = 9_100_001

# KID needs real *features*, not just their moments. A seeded subset of this many real images'
# Inception features is kept (in memory, and in the --fid-stats cache beside mu and sigma: 80 MB
# of float32 instead of 400 MB for all 50k), and every KID uses that subset, cached or not.
REAL_KID_FEATURES = 10_000
_KID_SUBSET_SEED = 0


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


# A generated image counts towards mode coverage only when it is a *high-quality* sample (the
# VEEGAN/PacGAN idea, carried over from the 2-D mixtures): otherwise a blob of colour, which the
# classifier must still map to *some* shape, size and position, would "cover" modes. Two tests:
# the factor classifier is this sure of every one of the four factors, and ...
CONFIDENCE_THRESHOLD = 0.9
# ... the image's classifier features lie where real images' do: its squared Mahalanobis distance
# to the real statistics is within this quantile of a fresh real sample's. Confidence alone is not
# enough: a softmax is confident far from its data (measured: 69 % of smooth colour blobs pass
# p >= 0.9, none passes the distance test, 97 % of real shapes do).
PLAUSIBLE_QUANTILE = 0.99


def mahalanobis_squared(features: torch.Tensor, statistics: FeatureStatistics) -> torch.Tensor:
    """``(f − μ)ᵀ Σ⁻¹ (f − μ)`` of each row of ``features`` (N, D) under ``statistics`` (float64)."""
    mean, covariance = (torch.as_tensor(a, dtype=torch.float64) for a in statistics.to_numpy())
    ridge = 1e-6 * covariance.diagonal().mean() * torch.eye(len(mean), dtype=torch.float64)
    factor = torch.linalg.cholesky(covariance + ridge)
    whitened = torch.linalg.solve_triangular(factor, (features.double().cpu() - mean).T, upper=False)
    return whitened.pow(2).sum(0)


def mode_coverage(
    factors: torch.Tensor,
    confidence: torch.Tensor | None = None,
    plausible: torch.Tensor | None = None,
    threshold: float = CONFIDENCE_THRESHOLD,
) -> dict[str, float]:
    """Share of the 96 factor combinations present in ``factors`` (N, 4), and KL of their frequencies.

    Only high-quality samples count: with ``confidence`` (N,; from
    :meth:`FactorClassifier.predict_with_confidence`) those at or above ``threshold``, with
    ``plausible`` (N, bool) those marked so; ``confident_share``, ``plausible_share`` and
    ``high_quality_share`` say how many passed each and both. With none counted the KL is that of a
    collapse onto one mode (log 96), its largest value.
    """
    counted = torch.ones(factors.shape[0], dtype=torch.bool)
    result: dict[str, float] = {}
    if confidence is not None:
        confident = confidence.cpu() >= threshold
        result["confident_share"] = float(confident.double().mean())
        counted &= confident
    if plausible is not None:
        result["plausible_share"] = float(plausible.cpu().double().mean())
        counted &= plausible.cpu()
    if confidence is not None or plausible is not None:
        result["high_quality_share"] = float(counted.double().mean())
    counts = torch.bincount(factor_combination_index(factors[counted]), minlength=NUM_FACTOR_COMBINATIONS)
    return {
        "mode_coverage": float((counts > 0).double().mean()),
        "combination_kl": kl_from_uniform(counts) if int(counts.sum()) else math.log(NUM_FACTOR_COMBINATIONS),
        **result,
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
    confidence: torch.Tensor | None = None,
    plausible: torch.Tensor | None = None,
) -> dict[str, float]:
    """Factor-classifier Fréchet distance, mode coverage and KL of generated shapes.

    ``features`` (N, 128), ``factors`` (N, 4) and ``confidence`` (N,) are
    :meth:`FactorClassifier.predict_with_confidence`'s outputs for the generated images, ``plausible``
    (N,) which of them lie where real features do (coverage counts only samples that pass both, see
    :func:`mode_coverage`); ``requested_shapes`` (N,), the classes a conditional G was asked for.
    """
    stats = FeatureStatistics(features.shape[1])
    stats.update(features)
    mu_r, sigma_r = real_statistics.to_numpy()
    mu_f, sigma_f = stats.to_numpy()
    result = {
        "factor_fd": frechet_distance(mu_f, sigma_f, mu_r, sigma_r),
        **mode_coverage(factors, confidence, plausible),
    }
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
    """Classifier-feature statistics of ``num_images`` real shapes, cached beside the classifier (.npz).

    The shapes are drawn at ``recipe.resolution``: the classifier's and the generator's resolution.
    """
    cache_dir = cache_dir or default_cache_dir()
    path = Path(cache_dir) / f"shapes_stats-{recipe.key()}-n{num_images}-s{seed}.npz"
    if path.is_file():
        return FeatureStatistics.load_npz(path)
    real = make_shapes(num_images, seed, recipe.resolution)
    features, _ = classifier.predict(images_in_model_range(real.images))
    stats = FeatureStatistics(features.shape[1])
    stats.update(features)
    stats.save_npz(path)
    return stats


@dataclass
class RealImageReference:
    """Real-data side of FID and KID: Inception moments and (when available) a subset of features."""

    mean: np.ndarray
    covariance: np.ndarray
    kid_features: torch.Tensor | None
    kid_absent_reason: str = ""  # why kid_features is None


def _save_reference(path: Path, stats: FeatureStatistics, kid_features: torch.Tensor) -> None:
    """pytorch-fid's ``.npz`` (``mu``, ``sigma``) plus ``num_samples`` and ``kid_features``; atomic."""
    mu, sigma = stats.to_numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(
                file,
                mu=mu,
                sigma=sigma,
                num_samples=np.int64(stats.count),
                kid_features=kid_features.numpy().astype(np.float32),
            )
        make_readable(tmp_name)  # mkstemp's 0600 would hide a shared cache
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _load_reference(path: Path, dim: int) -> RealImageReference:
    mu, sigma = load_fid_stats(path, dim=dim)
    with np.load(path, allow_pickle=False) as data:
        if "kid_features" not in data.files:
            return RealImageReference(
                mu,
                sigma,
                None,
                f"{path} holds only mu and sigma (e.g. written by pytorch-fid); KID needs real "
                "features: delete the file (or pass another --fid-stats) to recompute it with them",
            )
        features = torch.from_numpy(np.asarray(data["kid_features"], dtype=np.float32))
    if features.ndim != 2 or features.shape[1] != dim:
        raise UserError(f"{path}: kid_features has shape {tuple(features.shape)}, expected (N, {dim})")
    return RealImageReference(mu, sigma, features)


def real_image_reference(
    fid_stats: str | os.PathLike,
    real_source: Callable[[], ImageDataset | PackedImages],
    extractor: nn.Module,
    dim: int,
    batch_size: int = 250,
    device: torch.device | str = "cpu",
) -> RealImageReference:
    """The real-data reference for FID/KID, read from ``fid_stats`` or computed (and cached there).

    ``real_source()`` is called only when the file is absent (or ``fid_stats`` is empty: then
    nothing is cached). Features are extracted in the caller's precision context; call it outside
    autocast for a cache that does not depend on the evaluation's precision.
    """
    path = Path(fid_stats) if fid_stats else None
    if path is not None and path.is_file():
        return _load_reference(path, dim)
    real = real_source()
    count = len(real)
    keep = torch.zeros(count, dtype=torch.bool)
    chosen = torch.randperm(count, generator=torch.Generator().manual_seed(_KID_SUBSET_SEED))
    keep[chosen[:REAL_KID_FEATURES]] = True
    stats = FeatureStatistics(dim)
    kept, offset = [], 0
    # Streamed in order (a packed folder is read sequentially from its memory-mapped shards).
    for features, _ in iter_features(extractor, real.uint8_batches(batch_size), batch_size, device):
        stats.update(features)
        kept.append(features[keep[offset : offset + features.shape[0]]])
        offset += features.shape[0]
    kid_features = torch.cat(kept)
    if path is not None:
        _save_reference(path, stats, kid_features)
    mu, sigma = stats.to_numpy()
    return RealImageReference(mu, sigma, kid_features)


def image_quality(
    fake_features: torch.Tensor,
    fake_logits: torch.Tensor | None,
    *,
    real_source: Callable[[], ImageDataset | PackedImages],
    extractor: torch.nn.Module,
    fid_stats: str = "",
    batch_size: int = 250,
    kid_subset_size: int = 1000,
    device: torch.device | str = "cpu",
) -> dict[str, float | str]:
    """FID, KID and IS of generated features against real data.

    Real statistics come from :func:`real_image_reference` (read from ``fid_stats`` or computed
    with ``extractor``, which maps [0, 1] images to features, and cached there). KID is computed
    whenever real features are at hand — freshly computed or cached beside mu and sigma; when
    they are not (a pytorch-fid statistics file), ``kid_absent_reason`` says so instead.
    """
    reference = real_image_reference(
        fid_stats, real_source, extractor, fake_features.shape[1], batch_size, device
    )
    fake_stats = FeatureStatistics(fake_features.shape[1])
    fake_stats.update(fake_features)
    mu_f, sigma_f = fake_stats.to_numpy()
    result: dict[str, float | str] = {
        "fid": frechet_distance(mu_f, sigma_f, reference.mean, reference.covariance)
    }
    if reference.kid_features is not None:
        subset = min(kid_subset_size, reference.kid_features.shape[0], fake_features.shape[0])
        kid_mean, kid_std = kernel_inception_distance(
            reference.kid_features, fake_features, subset_size=subset
        )
        result.update({"kid": kid_mean, "kid_std": kid_std})
    else:
        result["kid_absent_reason"] = reference.kid_absent_reason
    if fake_logits is not None:
        is_mean, is_std = inception_score(fake_logits.softmax(dim=-1), splits=10)
        result.update({"inception_score": is_mean, "inception_score_std": is_std})
    return result


# --------------------------------------------------------------------------- during training


@dataclass
class FrechetYardstick:
    """A Fréchet distance of a generator's samples to real data, for ranking checkpoints in training.

    ``metric`` is the name it is logged under (``fid`` with the FID Inception, ``factor_fd`` with
    the shapes factor classifier); ``features`` maps a batch of G's images in [-1, 1] to (N, D)
    float32 features; the real moments were computed once (fp32) and cached.
    """

    metric: str
    features: Callable[[torch.Tensor], torch.Tensor]
    real_mean: np.ndarray
    real_covariance: np.ndarray

    def measure(
        self, generator: nn.Module, z: torch.Tensor, y: torch.Tensor | None, batch_size: int = 250
    ) -> float:
        """The distance for ``generator(z, y)`` (eval mode, batched, nothing kept but moments)."""
        stats = FeatureStatistics(self.real_mean.shape[0])
        for images in generate_batches(generator, z, y, batch_size):
            stats.update(self.features(images))
        mu, sigma = stats.to_numpy()
        return frechet_distance(mu, sigma, self.real_mean, self.real_covariance)


def shapes_yardstick(
    recipe: ClassifierRecipe,
    real_images: int,
    cache_dir: str | os.PathLike | None,
    device: torch.device | str,
) -> FrechetYardstick:
    """``factor_fd`` as ``fqgan-eval`` reports it: the cached classifier, the same real statistics."""
    cache = Path(cache_dir) if cache_dir else None
    classifier, _ = load_factor_classifier(cache, recipe, device=device)
    real = real_shape_statistics(classifier, recipe, real_images, seed=REFERENCE_SHAPES_SEED, cache_dir=cache)
    mean, covariance = real.to_numpy()
    return FrechetYardstick("factor_fd", lambda images: classifier.predict(images)[0], mean, covariance)


def inception_yardstick(
    inception_weights: str,
    fid_stats: str | os.PathLike,
    real_source: Callable[[], ImageDataset | PackedImages],
    batch_size: int,
    device: torch.device | str,
) -> FrechetYardstick:
    """FID with dgm-core's FID Inception against real statistics read from, or written to, ``fid_stats``."""
    inception = load_fid_inception(inception_weights or None, device=device)
    reference = real_image_reference(fid_stats, real_source, inception, 2048, batch_size, device)

    def features(images: torch.Tensor) -> torch.Tensor:
        pool, _ = extract_features(inception, images.add(1).div(2).clamp(0, 1), batch_size, device)
        return pool

    return FrechetYardstick("fid", features, reference.mean, reference.covariance)


def default_sample_count(data: str, requested: int, *, mixture: bool) -> int:
    """Samples behind a quality number: ``requested``, or the default for this kind of data.

    50 000 for FID/KID/IS on real image data (the paper's and BigGAN-PyTorch's protocol); 5000
    for the procedural shapes (the offline demo's factor-classifier metrics, kept fast; not a
    published protocol); 2500 points for the 2-D mixtures (VEEGAN/PacGAN's protocol).
    """
    if requested > 0:
        return requested
    if mixture:
        return 2500
    return 5000 if data == "shapes" else 50_000
