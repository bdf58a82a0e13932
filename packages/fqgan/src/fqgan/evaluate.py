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
- **CIFAR-10/100 and image folders** (``folder:``, ``packed:``): FID, KID and IS with the standard FID
  Inception weights (``--inception-weights PATH`` or the torch hub cache; a
  clear error without them), from 50 000 samples by default as in the paper;
  real statistics are read from ``--fid-stats`` (pytorch-fid ``.npz``) or
  computed from the dataset once and cached there, with the real features KID
  needs (a file without them gives FID and IS, and ``kid_absent_reason``).

Sample counts by default: 50 000 for FID/KID/IS (the paper's protocol), 5000 for the shapes
(kept small so the offline demo stays fast; not a published protocol), 2500 for the mixtures.
``--truncation T`` draws z as ``fqgan-sample`` does (BigGAN's truncation trick).
Generator, classifier and Inception forward passes run in ``--precision`` (their outputs cast
back to float32 before any statistics); cached reference statistics are always computed in fp32.
The measures themselves are :mod:`fqgan.metrics`. Results go to ``<run_dir>/eval.json`` (and stdout).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dgm_core import cli
from dgm_core.cli import option
from dgm_core.errors import UserError
from dgm_core.inference import InferenceRuntime, RuntimeConfig, open_inference
from dgm_core.metrics import FeatureStatistics, extract_features, load_fid_inception
from dgm_core.runtime.files import write_json_atomic
from fqgan.checkpoints import load_trained_models
from fqgan.data import (
    ImageDataset,
    PackedImages,
    images_in_model_range,
    is_mixture,
    load_dataset,
    make_shapes,
    mixture_centers,
)
from fqgan.factor_classifier import ClassifierRecipe, FactorClassifier, load_factor_classifier
from fqgan.generation import generate, generate_batches, truncated_noise
from fqgan.metrics import (
    FLOOR_SHAPES_SEED,
    PLAUSIBLE_QUANTILE,
    REFERENCE_SHAPES_SEED,
    default_sample_count,
    image_quality,
    mahalanobis_squared,
    mixture_quality,
    real_shape_statistics,
    shapes_quality,
)


@dataclass
class EvalConfig(RuntimeConfig):
    """Options of ``fqgan-eval``."""

    checkpoint: str = option(
        "runs/fqgan-demo", help="Run directory (newest checkpoint) or checkpoint folder."
    )
    num_samples: int = option(
        0,
        help="Generated samples. 0: 50000 for FID/KID/IS on cifar/folder data (the paper's count); "
        "5000 for shapes (a smaller count that keeps the offline demo fast, not the paper's "
        "protocol); 2500 points for 2-D mixtures.",
    )
    batch_size: int = option(250, help="Samples per generator/feature-extractor batch.")
    truncation: float = option(
        0.0,
        help="Resample |z| entries above this value (0: off; BigGAN's truncation trick, as fqgan-sample).",
    )
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


def _check(cfg: EvalConfig) -> None:
    if cfg.num_samples < 0:
        raise UserError(f"--num-samples must be 0 (the default count) or positive, got {cfg.num_samples}")
    if cfg.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    if cfg.truncation < 0:
        raise UserError(f"--truncation must be 0 (off) or positive, got {cfg.truncation}")


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Generate samples from a checkpoint and measure them; writes eval.json and returns the result."""
    _check(cfg)
    runtime = open_inference(cfg)
    device = runtime.device
    trained = load_trained_models(cfg.checkpoint, device)
    generator = trained.generator_ema if cfg.use_ema else trained.generator
    data = trained.run_config.get("data", "shapes")
    n = default_sample_count(data, cfg.num_samples, mixture=is_mixture(data))
    z = truncated_noise(n, int(trained.model_config["z_dim"]), cfg.truncation).to(device)
    num_classes = int(trained.model_config.get("num_classes", 0))
    labels = torch.randint(num_classes, (n,), device=device) if num_classes > 0 else None
    result: dict[str, Any] = {
        "checkpoint": str(trained.checkpoint),
        "step": trained.step,
        "data": data,
        "num_samples": n,
        "truncation": cfg.truncation,
        "generator": "ema" if cfg.use_ema else "raw",
        "precision": runtime.precision.name,
    }
    if is_mixture(data) or data == "shapes":
        with runtime.precision.autocast():
            samples = generate(generator, z, labels, batch_size=cfg.batch_size)
        if is_mixture(data):
            centers, std = mixture_centers(data)
            result.update(mixture_quality(samples, centers, std))
        else:
            requested = labels.cpu() if labels is not None else None
            result.update(_shapes_metrics(cfg, runtime, samples, requested))
    else:
        # 50 000 images are streamed from G into the Inception; only their features are kept.
        result.update(_inception_metrics(cfg, runtime, generator, z, labels, data, trained.run_config))
    output = Path(cfg.output) if cfg.output else trained.run_dir / "eval.json"
    write_json_atomic(output, result)
    print(json.dumps(result, indent=2))
    return result


def shapes_reference(
    cfg: EvalConfig, resolution: int, device: torch.device | str = "cpu"
) -> tuple[FactorClassifier, dict[str, Any], FeatureStatistics]:
    """The factor classifier (its config) and the real-shape statistics that ``cfg`` measures
    ``resolution``-pixel samples with, each trained or computed once and then read from the cache.

    Classifier, real statistics and floor are all at the generator's resolution: a 16-pixel G is
    measured against 16-pixel shapes, not blamed for lacking the detail of 32-pixel ones. The
    reference statistics are computed in fp32 whatever ``--precision`` is.
    """
    cache = Path(cfg.classifier_cache) if cfg.classifier_cache else None
    recipe = ClassifierRecipe(
        num_images=cfg.classifier_images, steps=cfg.classifier_steps, resolution=resolution
    )
    classifier, classifier_config = load_factor_classifier(cache, recipe, device=device)
    real_stats = real_shape_statistics(
        classifier, recipe, cfg.real_images, seed=REFERENCE_SHAPES_SEED, cache_dir=cache
    )
    return classifier, classifier_config, real_stats


def _shapes_metrics(
    cfg: EvalConfig, runtime: InferenceRuntime, samples: torch.Tensor, requested: torch.Tensor | None
) -> dict[str, Any]:
    resolution = samples.shape[-1]
    classifier, classifier_config, real_stats = shapes_reference(cfg, resolution, runtime.device)
    # The floor: a fresh real sample of the same size, measured the same way as the generated one.
    floor = images_in_model_range(
        make_shapes(samples.shape[0], seed=FLOOR_SHAPES_SEED, resolution=resolution).images
    )
    with runtime.precision.autocast():
        fake_features, fake_factors, fake_confidence = classifier.predict_with_confidence(samples)
        floor_features, floor_factors, floor_confidence = classifier.predict_with_confidence(floor)
    # Plausible: no farther from the real statistics than all but 1 % of a fresh real sample.
    floor_distances = mahalanobis_squared(floor_features, real_stats)
    limit = torch.quantile(floor_distances, PLAUSIBLE_QUANTILE)
    fake_plausible = mahalanobis_squared(fake_features, real_stats) <= limit
    floor_plausible = floor_distances <= limit
    floor_quality = shapes_quality(
        floor_features, floor_factors, real_stats, confidence=floor_confidence, plausible=floor_plausible
    )
    return {
        **shapes_quality(fake_features, fake_factors, real_stats, requested, fake_confidence, fake_plausible),
        "fd_real": floor_quality["factor_fd"],
        # The same measures on real images: what a perfect generator would score.
        "high_quality_share_real": floor_quality["high_quality_share"],
        "mode_coverage_real": floor_quality["mode_coverage"],
        "classifier_accuracy": classifier_config["held_out_accuracy"],
    }


def _inception_metrics(
    cfg: EvalConfig,
    runtime: InferenceRuntime,
    generator: torch.nn.Module,
    z: torch.Tensor,
    labels: torch.Tensor | None,
    data: str,
    run_config: dict,
) -> dict[str, float | str]:
    inception = load_fid_inception(cfg.inception_weights or None, device=runtime.device)
    with runtime.precision.autocast():
        in_unit_range = (
            images.add(1).div(2).clamp(0, 1)
            for images in generate_batches(generator, z, labels, cfg.batch_size)
        )
        fake_features, fake_logits = extract_features(
            inception, in_unit_range, cfg.batch_size, runtime.device
        )
    # Real features (for --fid-stats, cached, and KID) are extracted in fp32, outside autocast.
    return image_quality(
        fake_features,
        fake_logits,
        real_source=lambda: _real_images(data, cfg.data_root or run_config.get("data_root", ""), run_config),
        extractor=inception,
        fid_stats=cfg.fid_stats,
        batch_size=cfg.batch_size,
        kid_subset_size=cfg.kid_subset_size,
        device=runtime.device,
    )


def _real_images(data: str, data_root: str, run_config: dict) -> ImageDataset | PackedImages:
    dataset = load_dataset(data, data_root=data_root, resolution=int(run_config.get("resolution", 32)))
    assert isinstance(dataset, (ImageDataset, PackedImages))
    return dataset


def main(argv: list[str] | None = None) -> int:
    return cli.run(evaluate, EvalConfig, argv, prog="fqgan-eval", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
