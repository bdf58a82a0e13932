"""``fqgan-eval``: sample quality of a trained generator, measured the way its data allows.

- **Procedural shapes** (offline, nothing to download): Fréchet distance in the
  feature space of the cached factor classifier (:mod:`fqgan.factor_classifier`),
  mode coverage (share of the 96 factor combinations generated), the KL
  divergence of generated vs true combination frequencies, and, for a
  class-conditional G, how often the generated shape matches the requested one.
  ``fd_real`` is the same distance for a fresh set of *real* images: the floor
  that a perfect generator would reach with this many samples.
- **2-D mixtures**: modes covered (components nearest to at least one
  high-quality sample, as in VEEGAN/PacGAN), the share of high-quality samples
  (within 3σ of their nearest mode) and the KL of the high-quality samples' mode
  frequencies from uniform.
- **CIFAR-10/100 and image folders**: FID, KID and IS with the standard FID
  Inception weights (``--inception-weights PATH`` or the torch hub cache; a
  clear error without them); real statistics are read from ``--fid-stats``
  (pytorch-fid ``.npz``) or computed from the dataset once and cached there.

Results go to ``<run_dir>/eval.json`` (and stdout).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dgm_core import cli
from dgm_core.cli import option
from dgm_core.metrics import (
    FeatureStatistics,
    extract_features,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    load_fid_inception,
    load_fid_stats,
)
from dgm_core.runtime.checkpoint import write_json_atomic
from dgm_core.runtime.device import resolve_device, seed_everything
from dgm_core.training import RuntimeConfig
from fqgan.data import (
    NUM_FACTOR_COMBINATIONS,
    ImageDataset,
    factor_combination_index,
    is_mixture,
    load_dataset,
    make_shapes,
    mixture_centers,
)
from fqgan.factor_classifier import (
    ClassifierRecipe,
    FactorClassifier,
    default_cache_dir,
    load_factor_classifier,
)
from fqgan.sampling import generate, load_checkpoint_models

# --------------------------------------------------------------------------- metric maths


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
    fake_images: torch.Tensor,
    classifier: FactorClassifier,
    real_statistics: FeatureStatistics,
    requested_shapes: torch.Tensor | None = None,
) -> dict[str, float]:
    """Factor-classifier Fréchet distance, mode coverage and KL for images in [-1, 1]."""
    features, factors = classifier.predict(fake_images)
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
    features, _ = classifier.predict(real.images.float().div(127.5).sub(1.0))
    stats = FeatureStatistics(features.shape[1])
    stats.update(features)
    stats.save_npz(path)
    return stats


# --------------------------------------------------------------------------- CLI


@dataclass
class EvalConfig(RuntimeConfig):
    """Options of ``fqgan-eval``."""

    checkpoint: str = option(
        "runs/fqgan-demo", help="Run directory (newest checkpoint) or checkpoint folder."
    )
    num_samples: int = option(0, help="Generated samples (0: 5000 for images, 2500 for 2-D mixtures).")
    batch_size: int = option(250, help="Samples per generator/feature-extractor batch.")
    use_ema: bool = option(True, help="Evaluate the EMA generator (else the raw one).")
    output: str = option("", help="Where to write the JSON result (default: <run_dir>/eval.json).")
    classifier_cache: str = option(
        "", help="shapes: factor-classifier cache folder (default ~/.cache/fqgan)."
    )
    real_images: int = option(10000, help="shapes: real images behind the reference statistics.")
    classifier_steps: int = option(
        600, help="shapes: training steps of the factor classifier (part of its cache key)."
    )
    classifier_images: int = option(16384, help="shapes: images the factor classifier trains on (cache key).")
    inception_weights: str = option(
        "", help="cifar/folder: pytorch-fid Inception weights file (pt_inception-*.pth)."
    )
    fid_stats: str = option(
        "", help="cifar/folder: real-data .npz (mu, sigma); computed and written when absent."
    )
    data_root: str = option("", help="cifar: override the data root recorded in the checkpoint.")
    kid_subset_size: int = option(1000, help="KID subset size (capped by the sample counts).")


def _default_samples(data: str, requested: int) -> int:
    if requested > 0:
        return requested
    return 2500 if is_mixture(data) else 5000


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Generate samples from a checkpoint and measure them; writes eval.json and returns the result."""
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    ema, raw, _, record = load_checkpoint_models(cfg.checkpoint, device)
    generator = ema if cfg.use_ema else raw
    model_config, run_config = record["model"], record.get("run", {})
    data = run_config.get("data", "shapes")
    n = _default_samples(data, cfg.num_samples)
    z = torch.randn(n, int(model_config["z_dim"]), device=device)
    num_classes = int(model_config.get("num_classes", 0))
    labels = torch.randint(num_classes, (n,), device=device) if num_classes > 0 else None
    samples = generate(generator, z, labels, batch_size=cfg.batch_size)
    result: dict[str, Any] = {
        "checkpoint": record["checkpoint"],
        "step": record.get("step"),
        "data": data,
        "num_samples": n,
        "generator": "ema" if cfg.use_ema else "raw",
    }
    if is_mixture(data):
        centers, std = mixture_centers(data)
        result.update(mixture_quality(samples, centers, std))
    elif data == "shapes":
        cache = Path(cfg.classifier_cache) if cfg.classifier_cache else None
        recipe = ClassifierRecipe(num_images=cfg.classifier_images, steps=cfg.classifier_steps)
        classifier, classifier_record = load_factor_classifier(cache, recipe, device=device)
        real_stats = real_shape_statistics(
            classifier, recipe, cfg.real_images, seed=9_000_001, cache_dir=cache
        )
        requested = labels.cpu() if labels is not None else None
        result.update(shapes_quality(samples, classifier, real_stats, requested))
        # The floor: a fresh real sample of the same size, measured the same way.
        floor = make_shapes(n, seed=9_100_001)
        floor_images = floor.images.float().div(127.5).sub(1.0)
        result["fd_real"] = shapes_quality(floor_images, classifier, real_stats)["factor_fd"]
        result["classifier_accuracy"] = classifier_record["held_out_accuracy"]
    else:
        result.update(_inception_metrics(cfg, samples, data, run_config, device))
    output = Path(cfg.output) if cfg.output else Path(record["checkpoint"]).parent.parent / "eval.json"
    write_json_atomic(output, result)
    print(json.dumps(result, indent=2))
    return result


def _inception_metrics(
    cfg: EvalConfig, samples: torch.Tensor, data: str, run_config: dict, device: torch.device
) -> dict[str, float]:
    inception = load_fid_inception(cfg.inception_weights or None, device=device)
    fake_features, fake_logits = extract_features(
        inception, samples.add(1).div(2).clamp(0, 1), cfg.batch_size, device
    )
    return image_quality(
        fake_features,
        fake_logits,
        real_source=lambda: _real_images(data, cfg.data_root or run_config.get("data_root", ""), run_config),
        extractor=inception,
        fid_stats=cfg.fid_stats,
        batch_size=cfg.batch_size,
        kid_subset_size=cfg.kid_subset_size,
        device=device,
    )


def _real_images(data: str, data_root: str, run_config: dict) -> ImageDataset:
    dataset = load_dataset(data, data_root=data_root, resolution=int(run_config.get("resolution", 32)))
    assert isinstance(dataset, ImageDataset)
    return dataset


def image_quality(
    fake_features: torch.Tensor,
    fake_logits: torch.Tensor | None,
    *,
    real_source,
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


def main(argv: list[str] | None = None) -> int:
    return cli.run(evaluate, EvalConfig, argv, prog="fqgan-eval", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
