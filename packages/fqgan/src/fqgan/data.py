"""Training data, all offline: CIFAR-10/100 python pickles, image folders, procedural shapes, 2-D mixtures.

Two kinds of image dataset, both indexed by dgm-core's
:class:`~dgm_core.sampler.ShardedBatchSampler` (resume-exact, rank-sharded batches):

- :class:`ImageDataset`, held in memory as one ``uint8`` tensor ``(N, 3, H, W)`` plus
  integer labels, batched by index in the training process (:meth:`ImageDataset.batch`):
  shapes, CIFAR, ``folder:``.
- :class:`~fqgan.packed.PackedImages` (``packed:``), memory-mapped shards read by
  ``run.loader``'s worker processes: the training process never holds the pixels.

Images reach the models as floats in ``[-1, 1]``.

Dataset specs (``--data``):

- ``shapes``: procedural 32×32 colour images with four known factors (shape,
  colour, size, position; 3·4·2·4 = 96 combinations), generated from a seed,
  label = shape. Needs nothing from outside; see :func:`render_shapes`.
- ``cifar10`` / ``cifar100``: the standard python-pickle folders
  (``cifar-10-batches-py`` / ``cifar-100-python``) under ``--data-root``.
- ``folder:DIR``: any folder of images; one class per sub-folder when there are
  sub-folders with images, else a single class. Unreadable files are skipped
  and counted. Decoded into memory in every process: meant for small folders.
- ``packed:DIR``: a folder written once by ``fqgan-prepare folder:SRC --resolution R
  --out DIR`` (:mod:`fqgan.packed`): the same images as ``folder:SRC``, memory-mapped.
- ``ring8`` / ``grid25``: 2-D Gaussian mixtures (8 on a ring of radius 2,
  σ = 0.02; 25 on the grid {-4, -2, 0, 2, 4}², σ = 0.05) for mode-collapse checks.
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dgm_core.errors import UserError
from fqgan.folders import decode_in_order, list_image_folder
from fqgan.packed import PackedImages

log = logging.getLogger(__name__)

MIXTURES = ("ring8", "grid25")
# Above this many bytes of pixels, folder: warns that every process holds them and points to packed:.
LARGE_FOLDER_BYTES = 2**30

# --------------------------------------------------------------------------- containers


def images_in_model_range(images: torch.Tensor) -> torch.Tensor:
    """``uint8`` images in [0, 255] as float32 in [-1, 1]: the range G produces and D reads."""
    return images.float().div(127.5).sub_(1.0)


@dataclass
class ImageDataset:
    """Images as ``uint8 (N, 3, H, W)`` with ``long (N,)`` labels (all zeros when unlabelled)."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str
    class_names: list[str] = field(default_factory=list)
    factors: torch.Tensor | None = None  # (N, F) known generative factors (procedural data only)
    skipped: int = 0  # unreadable files left out (image folders)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def resolution(self) -> int:
        return self.images.shape[-1]

    def batch(
        self, indices: torch.Tensor | list[int], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in ``[-1, 1]`` (float32) and labels for ``indices``, on ``device``."""
        index = torch.as_tensor(indices, dtype=torch.long)
        images = images_in_model_range(self.images[index].to(device, non_blocking=True))
        return images, self.labels[index].to(device)

    def uint8_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Every image in order, ``batch_size`` at a time (as :meth:`PackedImages.uint8_batches`)."""
        yield from self.images.split(batch_size)


@dataclass
class MixtureDataset:
    """Points of a 2-D Gaussian mixture, drawn once from a seed (so batches are resume-exact)."""

    points: torch.Tensor  # (N, 2) float32
    labels: torch.Tensor  # (N,) index of the component each point came from
    centers: torch.Tensor  # (M, 2)
    std: float
    name: str

    def __len__(self) -> int:
        return self.points.shape[0]

    @property
    def num_classes(self) -> int:
        return self.centers.shape[0]

    def batch(
        self, indices: torch.Tensor | list[int], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.points[index].to(device), self.labels[index].to(device)


# --------------------------------------------------------------------------- procedural shapes

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
SIZES = ("small", "large")
POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right")
FACTOR_NAMES = ("shape", "colour", "size", "position")
FACTOR_SIZES = (len(SHAPES), len(COLOURS), len(SIZES), len(POSITIONS))
NUM_FACTOR_COMBINATIONS = math.prod(FACTOR_SIZES)

_RGB = torch.tensor([[0.9, 0.15, 0.15], [0.15, 0.8, 0.2], [0.2, 0.35, 0.95], [0.95, 0.85, 0.15]])
_RADIUS = (4.5, 7.5)  # in pixels of a 32×32 image
_CENTRE = (10.0, 22.0)  # quadrant centres, both axes


def factor_combination_index(factors: torch.Tensor) -> torch.Tensor:
    """Map ``(N, 4)`` factor values to one combination index in ``[0, 96)`` (mixed radix)."""
    index = torch.zeros(factors.shape[0], dtype=torch.long, device=factors.device)
    for column, size in enumerate(FACTOR_SIZES):
        index = index * size + factors[:, column].long()
    return index


def render_shapes(factors: torch.Tensor, generator: torch.Generator, size: int = 32) -> torch.Tensor:
    """Draw one shape per row of ``factors`` (shape, colour, size, position) as ``uint8 (N, 3, size, size)``.

    Shapes are rasterised at 2× and average-pooled (anti-aliasing); the centre
    jitters by ±1.5 px, the colour by ±0.06 per channel and the dark background
    carries mild noise, so the data has continuous variation inside each of the
    96 factor combinations.
    """
    n = factors.shape[0]
    scale = size / 32.0
    shape, colour, size_id, position = factors.long().unbind(1)
    centre = torch.tensor(_CENTRE)
    cx = centre[position % 2] + (torch.rand(n, generator=generator) * 3 - 1.5)
    cy = centre[position // 2] + (torch.rand(n, generator=generator) * 3 - 1.5)
    radius = torch.tensor(_RADIUS)[size_id]
    cx, cy, radius = (t.mul(scale).view(n, 1, 1) for t in (cx, cy, radius))
    fine = 2 * size
    axis = (torch.arange(fine, dtype=torch.float32) + 0.5) / 2  # pixel-unit coordinates of sub-samples
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    dx, dy = x - cx, y - cy
    circle = dx.pow(2) + dy.pow(2) <= radius.pow(2)
    square = torch.maximum(dx.abs(), dy.abs()) <= 0.85 * radius
    # Upward triangle: apex at cy - r, base at cy + 0.8 r, half-width r at the base.
    depth = dy + radius
    triangle = (dy <= 0.8 * radius) & (depth >= 0) & (dx.abs() <= depth * (1.0 / 1.8))
    kind = shape.view(n, 1, 1)
    mask = torch.where(kind == 0, circle, torch.where(kind == 1, square, triangle)).float()
    coverage = F.avg_pool2d(mask.unsqueeze(1), 2)  # (n, 1, size, size)
    rgb = (_RGB[colour] + (torch.rand(n, 3, generator=generator) * 0.12 - 0.06)).clamp(0, 1)
    background = 0.08 + 0.03 * torch.randn(n, 1, size, size, generator=generator)
    image = background * (1 - coverage) + rgb.view(n, 3, 1, 1) * coverage
    return image.clamp(0, 1).mul(255).round().to(torch.uint8)


def sample_factors(n: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform, independent factors ``(n, 4)``: every one of the 96 combinations is equally likely."""
    return torch.stack([torch.randint(k, (n,), generator=generator) for k in FACTOR_SIZES], dim=1)


def make_shapes(num_images: int = 8192, seed: int = 0, resolution: int = 32) -> ImageDataset:
    """The procedural shapes dataset (label = shape), identical for identical ``(num_images, seed)``."""
    if num_images < 1:
        raise UserError(f"--num-images must be at least 1, got {num_images}")
    generator = torch.Generator().manual_seed(seed)
    factors = sample_factors(num_images, generator)
    chunks = [render_shapes(chunk, generator, resolution) for chunk in factors.split(1024)]
    return ImageDataset(
        images=torch.cat(chunks),
        labels=factors[:, 0].clone(),
        num_classes=len(SHAPES),
        name="shapes",
        class_names=list(SHAPES),
        factors=factors,
    )


# --------------------------------------------------------------------------- CIFAR (python pickles)

_CIFAR = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        b"labels",
        10,
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}


def load_cifar(name: str, root: str | Path, split: str = "train") -> ImageDataset:
    """CIFAR-10/100 from the standard python-pickle folder; ``root`` is that folder or its parent."""
    folder_name, train_files, test_files, label_key, num_classes = _CIFAR[name]
    if not root:
        raise UserError(
            f"--data {name} needs --data-root DIR (the folder holding {folder_name}/); nothing is downloaded"
        )
    root = Path(root).expanduser()
    candidates = [root / folder_name, root]
    files = train_files if split == "train" else test_files
    folder = next((c for c in candidates if all((c / f).is_file() for f in files)), None)
    if folder is None:
        raise UserError(
            f"no {name} python-pickle files ({', '.join(files)}) in {root} or {root / folder_name}; "
            f"unpack the official {folder_name} archive there (nothing is downloaded)"
        )
    images, labels = [], []
    for file_name in files:
        path = folder / file_name
        try:
            with path.open("rb") as handle:
                entry = pickle.load(handle, encoding="bytes")
            data = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            target = np.asarray(entry[label_key], dtype=np.int64)
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as error:
            raise UserError(
                f"{path} is not a readable {name} pickle batch ({type(error).__name__}: {error})"
            ) from None
        images.append(torch.from_numpy(data.copy()))
        labels.append(torch.from_numpy(target))
    meta_names: list[str] = []
    return ImageDataset(torch.cat(images), torch.cat(labels), num_classes, name, meta_names)


# --------------------------------------------------------------------------- image folders


def load_image_folder(directory: str | Path, resolution: int) -> ImageDataset:
    """Every image under ``directory`` (centre-cropped and resized to ``resolution``), kept in memory.

    Sub-folders holding images become classes (sorted by name); otherwise the
    folder is one class (:func:`fqgan.folders.list_image_folder`). Files that PIL
    cannot decode are skipped, counted in ``skipped`` and logged; a folder without a
    single usable image is an error. Every process decodes and holds all the pixels:
    for large folders, ``fqgan-prepare`` packs them once for ``packed:`` instead.
    """
    listing = list_image_folder(directory)
    pixel_bytes = len(listing.files) * 3 * resolution * resolution
    if pixel_bytes > LARGE_FOLDER_BYTES:
        log.warning(
            "folder:%s holds %d images: about %.1f GiB of pixels, decoded and held by every process; "
            "pack them once with `fqgan-prepare folder:%s --resolution %d --out PACKED` and train on "
            "packed:PACKED (memory-mapped, shared)",
            listing.root,
            len(listing.files),
            pixel_bytes / 2**30,
            listing.root,
            resolution,
        )
    images, labels, skipped = [], [], 0
    decoded = decode_in_order(listing.files, resolution)
    for path, label, (pixels, reason) in zip(listing.files, listing.labels, decoded):
        if pixels is None:
            skipped += 1
            log.warning("skipping unreadable image %s (%s)", path, reason)
            continue
        images.append(torch.from_numpy(pixels).permute(2, 0, 1))
        labels.append(label)
    if not images:
        raise UserError(f"none of the {skipped} image file(s) in {listing.root} could be read")
    if skipped:
        log.warning("skipped %d unreadable image(s) in %s", skipped, listing.root)
    return ImageDataset(
        images=torch.stack(images),
        labels=torch.tensor(labels, dtype=torch.long),
        num_classes=len(listing.class_names),
        name=f"folder:{listing.root}",
        class_names=listing.class_names,
        skipped=skipped,
    )


def load_packed_images(directory: str | Path, resolution: int) -> PackedImages:
    """A ``fqgan-prepare`` folder, opened lazily, after checking it was packed at ``resolution``."""
    packed = PackedImages(directory)
    if packed.resolution != resolution:
        raise UserError(
            f"{directory} holds {packed.resolution}×{packed.resolution} images; use --resolution "
            f"{packed.resolution}, or pack the source again with --resolution {resolution}"
        )
    return packed


# --------------------------------------------------------------------------- 2-D mixtures


def mixture_centers(name: str) -> tuple[torch.Tensor, float]:
    """Component means and the shared standard deviation of ``ring8`` or ``grid25``."""
    if name == "ring8":
        angles = torch.arange(8, dtype=torch.float32) * (2 * math.pi / 8)
        return torch.stack([2.0 * torch.cos(angles), 2.0 * torch.sin(angles)], dim=1), 0.02
    if name == "grid25":
        values = torch.arange(-4.0, 5.0, 2.0)
        gx, gy = torch.meshgrid(values, values, indexing="ij")
        return torch.stack([gx.flatten(), gy.flatten()], dim=1), 0.05
    raise UserError(f"unknown mixture '{name}': expected one of {', '.join(MIXTURES)}")


def make_mixture(name: str, num_points: int = 65536, seed: int = 0) -> MixtureDataset:
    """``num_points`` draws from the mixture (equal weights), fixed by ``seed``."""
    centers, std = mixture_centers(name)
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(centers.shape[0], (num_points,), generator=generator)
    points = centers[labels] + std * torch.randn(num_points, 2, generator=generator)
    return MixtureDataset(points, labels, centers, std, name)


# --------------------------------------------------------------------------- entry point


def load_dataset(
    spec: str, *, data_root: str = "", resolution: int = 32, num_images: int = 8192, seed: int = 0
) -> ImageDataset | PackedImages | MixtureDataset:
    """Build the dataset named by ``spec`` (see the module docstring)."""
    if spec == "shapes":
        return make_shapes(num_images, seed, resolution)
    if spec in _CIFAR:
        if resolution != 32:
            raise UserError(f"{spec} images are 32×32; use --resolution 32 (got {resolution})")
        return load_cifar(spec, data_root)
    if spec.startswith("folder:"):
        return load_image_folder(spec[len("folder:") :], resolution)
    if spec.startswith("packed:"):
        return load_packed_images(spec[len("packed:") :], resolution)
    if spec in MIXTURES:
        return make_mixture(spec, num_points=max(num_images, 1), seed=seed)
    raise UserError(
        f"unknown --data '{spec}': expected shapes, cifar10, cifar100, folder:DIR, packed:DIR, "
        f"{', '.join(MIXTURES)}"
    )


def is_mixture(spec: str) -> bool:
    return spec in MIXTURES
