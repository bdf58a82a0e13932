"""``dgm-fid``: FID (and KID, IS) between two image sets or cached statistics, with the FID Inception.

    dgm-fid --real cifar10_train.npy --fake samples.npy --save-stats stats/cifar10_train.npz
    dgm-fid --real stats/cifar10_train.npz --fake samples.npy --inception-weights pt_inception.pth

Each side is either an ``.npz`` of FID statistics (``mu``, ``sigma``: pytorch-fid's format, or
one written by ``--save-stats``) or an image array: ``.npy``, or ``.npz`` holding one array (or
one named ``images``), shaped (N, H, W, C) or (N, C, H, W) with C = 3 (C = 1 is repeated to RGB),
uint8 in [0, 255] or float in [0, 1]. KID needs images on both sides, IS images on the fake side.
The result is printed as one JSON object (and written to ``--output``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dgm_core import cli
from dgm_core.cli import option
from dgm_core.errors import UserError
from dgm_core.metrics.frechet import frechet_distance
from dgm_core.metrics.image import inception_score, kernel_inception_distance
from dgm_core.metrics.inception import POOL_FEATURES_DIM, iter_features, load_fid_inception
from dgm_core.metrics.statistics import FeatureStatistics, load_fid_stats
from dgm_core.runtime.device import resolve_device


@dataclass
class FIDConfig:
    real: str = option(
        "", help="Reference set: FID statistics (.npz with mu, sigma) or an image array (.npy/.npz)."
    )
    fake: str = option("", help="Generated set: FID statistics or an image array, as --real.")
    inception_weights: str = option(
        "",
        help="FID Inception weights (pt_inception-2015-12-05-6726825d.pth); "
        "default: the torch hub cache, $TORCH_HOME/hub/checkpoints/.",
    )
    save_stats: str = option("", help="Write the statistics of --real (when images) to this .npz for reuse.")
    output: str = option("", help="Also write the JSON result to this file.")
    batch_size: int = option(50, help="Images per Inception forward pass.")
    device: str = option("auto", help="auto, cpu, cuda or cuda:N.")
    kid_subsets: int = option(100, help="KID: number of random subsets.")
    kid_subset_size: int = option(
        1000, help="KID: subset size (reduced to the smaller set's size if needed)."
    )
    is_splits: int = option(10, help="Inception Score: number of splits of the fake set.")


def _is_statistics_file(path: Path) -> bool:
    if path.suffix != ".npz":
        return False
    try:
        with np.load(path, allow_pickle=False) as data:
            return "mu" in data.files or "sigma" in data.files
    except (OSError, ValueError) as error:
        raise UserError(f"{path} is not a readable .npz file ({error})") from error


def _load_images(path: Path) -> np.ndarray:
    """A (N, 3, H, W) view of the image array in ``path`` (memory-mapped for .npy)."""
    try:
        if path.suffix == ".npy":
            images = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as data:
                names = data.files
                if "images" in names:
                    name = "images"
                elif len(names) == 1:
                    name = names[0]
                else:
                    raise UserError(f"{path} holds arrays {names}; expected one array or one named 'images'")
                images = data[name]
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read images from {path}: {error}") from error
    if images.ndim != 4:
        raise UserError(
            f"{path}: images must be a 4-d array (N, H, W, C) or (N, C, H, W), got {images.shape}"
        )
    if images.shape[1] not in (1, 3) and images.shape[-1] in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    if images.shape[1] not in (1, 3):
        raise UserError(f"{path}: cannot find a 1- or 3-channel axis in shape {images.shape}")
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise UserError(f"{path}: images must be uint8 or float, got {images.dtype}")
    return images


def _image_batches(images: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, images.shape[0], batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
        if batch.is_floating_point():
            batch = batch.float()
        yield batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch


@dataclass
class _Side:
    mu: np.ndarray
    sigma: np.ndarray
    count: int | None
    features: torch.Tensor | None = None
    logits: torch.Tensor | None = None


def _describe(path_text: str, flag: str, cfg: FIDConfig, model_box: list) -> _Side:
    if not path_text:
        raise UserError(f"{flag} is required: an .npz of FID statistics or an image array")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise UserError(f"{flag} {path} does not exist")
    if _is_statistics_file(path):
        mu, sigma = load_fid_stats(path, dim=POOL_FEATURES_DIM)
        return _Side(mu, sigma, None)
    images = _load_images(path)
    if not model_box:
        device = resolve_device(cfg.device)
        model_box.append(load_fid_inception(cfg.inception_weights or None, device=device))
    stats = FeatureStatistics(POOL_FEATURES_DIM)
    features, logits = [], []
    for pool, batch_logits in iter_features(
        model_box[0], _image_batches(images, cfg.batch_size), cfg.batch_size
    ):
        stats.update(pool)
        features.append(pool)
        logits.append(batch_logits)
    mu, sigma = stats.to_numpy()
    side = _Side(mu, sigma, stats.count, torch.cat(features), torch.cat(logits))
    if flag == "--real" and cfg.save_stats:
        stats.save_npz(cfg.save_stats)
    return side


def evaluate(cfg: FIDConfig) -> dict:
    """Compute FID (always), KID (images on both sides) and IS (images on the fake side)."""
    if cfg.save_stats and not cfg.real:
        raise UserError("--save-stats needs --real images to compute statistics from")
    model_box: list = []  # the Inception is loaded only if some side is images
    real = _describe(cfg.real, "--real", cfg, model_box)
    if cfg.save_stats and real.count is None:
        raise UserError("--save-stats needs --real to be images, not statistics")
    fake = _describe(cfg.fake, "--fake", cfg, model_box)
    result: dict = {"fid": frechet_distance(real.mu, real.sigma, fake.mu, fake.sigma)}
    result["num_real"], result["num_fake"] = real.count, fake.count
    if real.features is not None and fake.features is not None:
        subset_size = min(cfg.kid_subset_size, real.features.shape[0], fake.features.shape[0])
        kid_mean, kid_std = kernel_inception_distance(
            real.features, fake.features, num_subsets=cfg.kid_subsets, subset_size=subset_size
        )
        result.update(kid_mean=kid_mean, kid_std=kid_std, kid_subset_size=subset_size)
    if fake.logits is not None:
        if fake.logits.shape[0] >= cfg.is_splits:
            is_mean, is_std = inception_score(fake.logits.double().softmax(dim=-1), splits=cfg.is_splits)
            result.update(is_mean=is_mean, is_std=is_std)
        else:
            print(
                f"dgm-fid: note: no Inception Score, {fake.logits.shape[0]} fake images < "
                f"--is-splits {cfg.is_splits}",
                file=sys.stderr,
            )
    return result


def _run(cfg: FIDConfig) -> int:
    result = evaluate(cfg)
    text = json.dumps(result)
    print(text)
    if cfg.output:
        Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output).write_text(text + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(_run, FIDConfig, argv, prog="dgm-fid", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
