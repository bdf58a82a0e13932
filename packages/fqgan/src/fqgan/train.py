"""``fqgan-train``: train a GAN with (or without) feature quantization in the discriminator.

With no arguments it trains the small conditional DCGAN/SNGAN pair with FQ on
the procedural shapes for a few minutes on a CPU, and writes, under
``runs/fqgan-demo/``: ``config.json``, ``metrics.jsonl`` (D/G loss, FQ loss,
per-layer dictionary perplexity and dead codes), ``samples/step_*.png`` (G EMA
on fixed noise) and ``checkpoints/step_*/``. ``--preset cifar10|cifar100|
imagenet64`` carries the paper's settings; ``--preset ring8|grid25`` the 2-D
mode-collapse setting.

One step is one generator update preceded by ``d_steps`` discriminator updates
(BigGAN's counting); each D update uses a fresh real batch. ``--grad-accum N`` makes
every update accumulate N micro-batches of ``--batch-size`` (see :class:`GANSteps`).
``--data packed:DIR`` (a folder written by ``fqgan-prepare``) is read by ``--num-workers``
loader processes from memory-mapped shards; other data is held in memory.

``--fid-every N`` measures G EMA's FID every N steps (rank 0; real statistics computed
once and cached), logs it, and keeps the lowest-FID checkpoint as ``checkpoints/best``, as
BigGAN-PyTorch does. On the shapes, with no Inception weights offline, the factor-classifier
Fréchet distance (``factor_fd``, as ``fqgan-eval`` reports it) plays FID's role.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dgm_core import cli
from dgm_core.cli import option
from dgm_core.errors import UserError
from dgm_core.quantization import QuantizationInputError
from dgm_core.runtime import broadcast_object
from dgm_core.training import TrainingConfig, TrainingRun
from fqgan.checkpoints import BestCheckpoint
from fqgan.data import ImageDataset, MixtureDataset, PackedImages, images_in_model_range, load_dataset
from fqgan.diffaug import diff_augment, parse_policy
from fqgan.factor_classifier import ClassifierRecipe
from fqgan.fq import FQ_MODES, QuantizedDiscriminator, fq_statistics
from fqgan.generation import fixed_noise, save_sample_grid
from fqgan.losses import LOSSES, discriminator_loss, generator_loss
from fqgan.metrics import FrechetYardstick, default_sample_count, inception_yardstick, shapes_yardstick
from fqgan.models import ARCHITECTURES, build_models

FID_BATCH_SIZE = 250
# The FID noise is fixed for the whole run (so successive values differ by the model only) and
# drawn apart from the sample-grid noise, from its own generator (the training RNG is untouched).
FID_NOISE_SEED_OFFSET = 1


@dataclass
class TrainConfig(TrainingConfig):
    """Options of ``fqgan-train`` (defaults: the CPU demo on procedural shapes)."""

    run_dir: str = option(
        "runs/fqgan-demo", help="Directory for config, logs, metrics, samples and checkpoints."
    )
    steps: int = option(300, help="Generator updates to train for (each preceded by --d-steps D updates).")
    log_every: int = option(20, help="Log metrics every N steps.")
    checkpoint_every: int = option(100, help="Save a checkpoint every N steps (0: only at the end).")
    data: str = option(
        "shapes",
        help="shapes | cifar10 | cifar100 | folder:DIR | packed:DIR (written by fqgan-prepare) | ring8 | "
        "grid25 (see fqgan.data).",
    )
    data_root: str = option("", help="cifar10/cifar100: the folder holding the python-pickle batches.")
    num_images: int = option(8192, help="shapes: images generated; ring8/grid25: points drawn.")
    data_seed: int = option(0, help="Seed of the generated datasets (shapes, mixtures).")
    resolution: int = option(32, help="Image size in pixels (biggan: 32 or 64; dcgan: 16, 32 or 64).")
    arch: str = option("dcgan", help="Generator/discriminator pair.", choices=ARCHITECTURES)
    g_ch: int = option(16, help="Generator width (channels per unit; hidden units for mlp).")
    d_ch: int = option(16, help="Discriminator width (channels per unit; hidden units for mlp).")
    z_dim: int = option(128, help="Latent size.")
    conditional: bool = option(
        True, help="Class-conditional G (cBN) and D (projection) when the data has labels."
    )
    attention: int = option(0, help="biggan: add self-attention at this feature resolution (0: none).")
    loss: str = option("hinge", help="GAN objective.", choices=LOSSES)
    fq_mode: str = option(
        "loss_only",
        help="none: no FQ; loss_only: commitment loss only (reference code); "
        "quantize: feed quantized features forward (straight-through, as the paper's figure).",
        choices=FQ_MODES,
    )
    fq_layers: str = option("0,1,2,3", help="Comma-separated D block indices that get a dictionary.")
    fq_codebook_size: int = option(256, help="K, prototypes per dictionary.")
    fq_decay: float = option(0.8, help="EMA decay of the dictionaries.")
    fq_commitment: float = option(1.0, help="β, weight of the commitment loss ||sg(q) - x||².")
    fq_kmeans_init: bool = option(
        False, help="Start each dictionary from k-means of its first batch (reference: N(0, 1) init)."
    )
    fq_dead_code_threshold: int = option(
        0,
        help="Revive a codeword unused for this many steps from current features (0: never, as reference).",
    )
    batch_size: int = option(
        32, help="Images per D/G micro-batch per process (an update takes --grad-accum of them)."
    )
    d_steps: int = option(2, help="Discriminator updates per generator update.")
    lr_g: float = option(2e-4, help="Generator Adam learning rate.")
    lr_d: float = option(2e-4, help="Discriminator Adam learning rate.")
    adam_beta1: float = option(0.0, help="Adam β1 for both networks.")
    adam_beta2: float = option(0.999, help="Adam β2 for both networks.")
    ema_decay: float = option(0.99, help="Decay of the generator's EMA copy (used for samples).")
    ema_start: int = option(100, help="Step from which G EMA averages (before: plain copy).")
    diffaug: str = option("", help="DiffAugment policy for real and fake, e.g. translation,cutout,color.")
    sample_every: int = option(
        100, help="Write a sample grid from fixed noise every N steps and at the end (0: only at the end)."
    )
    num_grid_samples: int = option(64, help="Images per sample grid.")
    fid_every: int = option(
        0,
        help="Every N steps and at the end, measure G EMA's FID, log it to metrics.jsonl and keep the "
        "lowest-FID checkpoint as checkpoints/best (0: off). shapes: the factor-classifier Fréchet "
        "distance (factor_fd) stands in for FID; cifar/folder: the FID Inception (--inception-weights).",
    )
    fid_samples: int = option(
        0,
        help="Generated samples per --fid-every measurement (0: 50000 for cifar/folder, as "
        "BigGAN-PyTorch; 5000 for shapes, as fqgan-eval).",
    )
    fid_stats: str = option(
        "",
        help="cifar/folder with --fid-every: real-data statistics .npz, computed once when absent "
        "(default: <run_dir>/fid_stats.npz).",
    )
    inception_weights: str = option(
        "", help="cifar/folder with --fid-every: FID Inception weights file (pt_inception-*.pth)."
    )
    classifier_cache: str = option(
        "", help="shapes with --fid-every: factor-classifier cache folder (default ~/.cache/fqgan)."
    )
    classifier_steps: int = option(
        600, help="shapes with --fid-every: factor-classifier training steps (part of its cache key)."
    )
    classifier_images: int = option(
        16384, help="shapes with --fid-every: images the factor classifier trains on (cache key)."
    )
    fid_real_images: int = option(
        10000, help="shapes with --fid-every: real images behind the reference statistics."
    )


_CIFAR_COMMON: dict[str, Any] = {
    "arch": "biggan",
    "resolution": 32,
    "g_ch": 64,
    "d_ch": 64,
    "z_dim": 128,
    "conditional": True,
    "loss": "hinge",
    "fq_mode": "loss_only",
    "fq_layers": "0,1,2,3",
    "batch_size": 64,
    "d_steps": 4,
    "lr_g": 2e-4,
    "lr_d": 2e-4,
    "adam_beta1": 0.0,
    "adam_beta2": 0.999,
    "ema_decay": 0.9999,
    "ema_start": 1000,
    "steps": 100_000,
    "log_every": 100,
    "checkpoint_every": 5000,
    "sample_every": 2000,
}

PRESETS: dict[str, dict[str, Any]] = {
    "demo": {},
    "cifar10": {
        **_CIFAR_COMMON,
        "data": "cifar10",
        "run_dir": "runs/fqgan-cifar10",
        "fq_codebook_size": 2**10,
        "fq_decay": 0.8,
        "fq_commitment": 1.0,
    },
    "cifar100": {
        **_CIFAR_COMMON,
        "data": "cifar100",
        "run_dir": "runs/fqgan-cifar100",
        "fq_codebook_size": 2**6,
        "fq_decay": 0.9,
        "fq_commitment": 10.0,
    },
    "imagenet64": {
        **_CIFAR_COMMON,
        # Packed once by `fqgan-prepare folder:imagenet64/train --resolution 64 --out imagenet64/train-64`:
        # 1.28 M images decoded into RAM would be ~16 GB per process and a long single-threaded start.
        "data": "packed:imagenet64/train-64",
        "run_dir": "runs/fqgan-imagenet64",
        "resolution": 64,
        "fq_layers": "2",
        "fq_codebook_size": 2**10,
        "fq_decay": 0.7,
        "fq_commitment": 0.5,
        # FQ-BigGAN's I64 script: 1 D step, lr G 1e-4 / D 4e-4, attention at 32, dim_z 120, EMA from 20k.
        # It accumulates --batch_size 128 × --num_D_accumulations 4 (and num_G_accumulations 4) = 512
        # images per D and per G update: here 128 × --grad-accum 4 on one process (with
        # --nproc-per-node 4, pass --grad-accum 1 for the same 512).
        "d_steps": 1,
        "lr_g": 1e-4,
        "lr_d": 4e-4,
        "attention": 32,
        "z_dim": 120,
        "batch_size": 128,
        "grad_accum": 4,
        "ema_start": 20_000,
        "steps": 200_000,
    },
    "ring8": {
        "data": "ring8",
        "run_dir": "runs/fqgan-ring8",
        "arch": "mlp",
        "z_dim": 16,
        "g_ch": 128,
        "d_ch": 128,
        "conditional": False,
        "fq_layers": "0,1,2",
        "fq_codebook_size": 64,
        "batch_size": 256,
        "d_steps": 1,
        "lr_g": 1e-3,
        "lr_d": 1e-3,
        "adam_beta1": 0.5,
        "steps": 5000,
        "ema_start": 0,
        "ema_decay": 0.99,
        "num_images": 65536,
        "sample_every": 500,
        "checkpoint_every": 1000,
        "log_every": 100,
    },
}
PRESETS["grid25"] = {**PRESETS["ring8"], "data": "grid25", "run_dir": "runs/fqgan-grid25"}


def model_config_for(
    cfg: TrainConfig, dataset: ImageDataset | PackedImages | MixtureDataset
) -> dict[str, Any]:
    """What a checkpoint needs to rebuild G and D (see :func:`fqgan.models.build_models`)."""
    mixture = isinstance(dataset, MixtureDataset)
    if mixture and cfg.arch != "mlp":
        raise UserError(f"--data {cfg.data} is 2-D points: use --arch mlp (or --preset {cfg.data})")
    if not mixture and cfg.arch == "mlp":
        raise UserError(f"--arch mlp is for the 2-D mixtures (ring8, grid25), not --data {cfg.data}")
    num_classes = dataset.num_classes if (cfg.conditional and not mixture and dataset.num_classes > 1) else 0
    return {
        "arch": cfg.arch,
        "resolution": 0 if mixture else cfg.resolution,
        "g_ch": cfg.g_ch,
        "d_ch": cfg.d_ch,
        "z_dim": cfg.z_dim,
        "num_classes": num_classes,
        "attention": cfg.attention,
        "fq_mode": cfg.fq_mode,
        "fq_layers": cfg.fq_layers,
        "fq_codebook_size": cfg.fq_codebook_size,
        "fq_decay": cfg.fq_decay,
        "fq_commitment": cfg.fq_commitment,
        "fq_kmeans_init": cfg.fq_kmeans_init,
        "fq_dead_code_threshold": cfg.fq_dead_code_threshold,
    }


class GeneratorEMA:
    """An exponential moving average of G's parameters and float buffers (BigGAN's ``G_ema``)."""

    def __init__(self, generator: nn.Module, decay: float, start_step: int):
        self.model = copy.deepcopy(generator).eval().requires_grad_(False)
        self.decay, self.start_step = decay, start_step

    @torch.no_grad()
    def update(self, generator: nn.Module, step: int) -> None:
        decay = self.decay if step >= self.start_step else 0.0
        source = generator.state_dict()
        for name, target in self.model.state_dict().items():
            value = source[name]
            if target.is_floating_point():
                target.lerp_(value, 1.0 - decay)
            else:
                target.copy_(value)


def _sample_labels(n: int, num_classes: int, device: torch.device) -> torch.Tensor | None:
    return torch.randint(num_classes, (n,), device=device) if num_classes > 0 else None


class GANSteps:
    """The two updates of one training step, written out: ``d_steps`` D updates, then one G update.

    ``d_train``/``g_train`` are the (possibly DDP-wrapped) modules used for the
    update of that network; the other network runs bare (G under ``no_grad`` in
    D updates, D frozen in G updates), so DDP only synchronises what is updated.

    Each update runs over ``--grad-accum`` micro-batches (``run.micro_batches``): every
    micro-batch's loss is divided by their number and back-propagated, DDP all-reduces on
    the last one only, and the optimizer steps once, so the gradient is that of the whole
    batch (BigGAN-PyTorch's ``num_D_accumulations`` / ``num_G_accumulations``). What a
    forward pass changes as it goes — the dictionaries' EMA, spectral norm's power
    iteration, G's BatchNorm batch statistics — happens per micro-batch, as in the reference.
    The noise of an update is drawn at once for the whole batch and then split, so the
    random stream does not depend on how the batch is cut.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        run: TrainingRun,
        generator: nn.Module,
        discriminator: QuantizedDiscriminator,
        opt_g: torch.optim.Optimizer,
        opt_d: torch.optim.Optimizer,
    ):
        self.cfg, self.run = cfg, run
        self.generator, self.discriminator = generator, discriminator
        self.g_train, self.d_train = run.wrap(generator), run.wrap(discriminator)
        self.opt_g, self.opt_d = opt_g, opt_d
        self.policy = parse_policy(cfg.diffaug)
        self.z_dim = generator.z_dim
        self.num_classes = generator.num_classes
        self.grad_accum = cfg.grad_accum

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, self.policy) if self.policy else x

    def _noise(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        device = self.run.device
        return torch.randn(n, self.z_dim, device=device), _sample_labels(n, self.num_classes, device)

    def _fakes(self, n: int) -> dict[str, torch.Tensor]:
        """Noise (and class labels, for a conditional G) of ``n`` fakes, to be split with the batch."""
        z, y_fake = self._noise(n)
        return {"z": z} if y_fake is None else {"z": z, "y_fake": y_fake}

    def discriminator_update(
        self, step: int, real: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """One D update on ``real`` (all its micro-batches) and as many fakes."""
        run, parts = self.run, self.grad_accum
        batch = {"real": real, "labels": labels, **self._fakes(real.shape[0])}
        totals: dict[str, torch.Tensor] = {}
        self.opt_d.zero_grad(set_to_none=True)
        for chunk, sync in run.micro_batches(self.d_train, batch):
            with sync:
                losses = self._discriminator_losses(chunk)
                run.check_finite(step, {"d_loss": losses["d_loss"]})
                run.precision.backward(losses["d_loss"] / parts)
            for name, value in losses.items():  # the update's values: means over the micro-batches
                totals[name] = totals.get(name, 0.0) + value.detach() / parts
        run.precision.step(self.opt_d)
        # Dictionary usage on the last micro-batch's [real; fake] (the G update's forward sees fakes only).
        return {**totals, **fq_statistics(self.discriminator.quantizers)}

    def _discriminator_losses(self, chunk: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        run, real, n = self.run, chunk["real"], chunk["real"].shape[0]
        y_fake = chunk.get("y_fake")
        with torch.no_grad(), run.precision.autocast():
            fake = self.generator(chunk["z"], y_fake).float()
        # One D call on [real; fake], as BigGAN does: each dictionary sees both in one EMA update.
        inputs = torch.cat([self.augment(real), self.augment(fake)])
        y_all = torch.cat([chunk["labels"], y_fake]) if y_fake is not None else None
        with run.precision.autocast():
            scores = self.d_train(inputs, y_all).float()
            gan_loss = discriminator_loss(self.cfg.loss, scores[:n], scores[n:])
            # FQ-GAN adds the mean commitment loss of the real samples plus that of the fake
            # ones (not the mean over both, which would halve it).
            fq_loss = self.discriminator.pop_fq_loss(batch_parts=(n, n))
        return {
            "d_loss": gan_loss + fq_loss,
            "d_gan_loss": gan_loss,
            "fq_loss_d": fq_loss,
            "d_real": scores[:n].mean(),
            "d_fake": scores[n:].mean(),
        }

    def generator_update(self, step: int, n: int) -> dict[str, torch.Tensor]:
        """One G update on ``n`` fakes (all its micro-batches)."""
        run, parts = self.run, self.grad_accum
        totals: dict[str, torch.Tensor] = {}
        self.discriminator.requires_grad_(False)
        try:
            self.opt_g.zero_grad(set_to_none=True)
            for chunk, sync in run.micro_batches(self.g_train, self._fakes(n)):
                with sync:  # DDP's no_sync covers forward and backward (and can be entered once)
                    with run.precision.autocast():
                        y_fake = chunk.get("y_fake")
                        fake = self.g_train(chunk["z"], y_fake)
                        scores = self.discriminator(self.augment(fake), y_fake).float()
                        gan_loss = generator_loss(self.cfg.loss, scores)
                        fq_loss = self.discriminator.pop_fq_loss()  # fake features' commitment, into G's loss
                        loss = gan_loss + fq_loss
                    run.check_finite(step, {"g_loss": loss})
                    run.precision.backward(loss / parts)
                losses = {"g_loss": loss, "g_gan_loss": gan_loss, "fq_loss_g": fq_loss}
                for name, value in losses.items():
                    totals[name] = totals.get(name, 0.0) + value.detach() / parts
            run.precision.step(self.opt_g)
        finally:
            self.discriminator.requires_grad_(True)
        return totals


def real_batch_stream(
    run: TrainingRun,
    dataset: ImageDataset | PackedImages | MixtureDataset,
    batch_size: int,
    start_step: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The real batches of sampler steps ``start_step + 1, start_step + 2, …`` on the run's device.

    Images come in ``[-1, 1]``. A packed folder is read by ``run.loader``'s worker processes
    (``--num-workers``), which map its shards; in-memory data is indexed here. The sampler is
    built now, so a batch larger than the dataset is refused before the first step.
    """
    if isinstance(dataset, PackedImages):
        return _loaded_batches(run.loader(dataset, batch_size, start_step=start_step), run.device)
    sampler = run.sampler(len(dataset), batch_size, start_step=start_step)
    return (dataset.batch(indices, run.device) for indices in sampler)


def _loaded_batches(loader: Iterable, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for images, labels in loader:
        yield images_in_model_range(images.to(device, non_blocking=True)), labels.to(device)


@contextlib.contextmanager
def _training_rng_untouched(device: torch.device) -> Iterator[None]:
    """Run a measurement without moving the training's RNG streams (resumes stay bit-identical)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield


class TrainingFID:
    """``--fid-every``: G EMA's Fréchet distance to the real data, measured on rank 0, and ``best``.

    The yardstick (classifier or Inception, and the real statistics) is prepared once, by rank 0
    while the other ranks wait; at each measurement rank 0 computes and broadcasts the value, so
    every rank agrees on whether ``checkpoints/best`` is replaced.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        run: TrainingRun,
        dataset: ImageDataset | PackedImages,
        model_config: dict[str, Any],
        start_step: int,
    ):
        self.cfg, self.run = cfg, run
        self.metric = "factor_fd" if cfg.data == "shapes" else "fid"
        self.yardstick: FrechetYardstick | None = None  # rank 0's; None on the others
        with run.main_process_first():
            if run.dist.is_main:
                count = default_sample_count(cfg.data, cfg.fid_samples, mixture=False)
                self.z, self.y = fixed_noise(
                    count, model_config, seed=cfg.seed + FID_NOISE_SEED_OFFSET, device=run.device
                )
                with _training_rng_untouched(run.device):
                    self.yardstick = self._prepare(dataset)
        self.best = BestCheckpoint(run, self.metric, start_step)

    def _prepare(self, dataset: ImageDataset | PackedImages) -> FrechetYardstick:
        cfg, run = self.cfg, self.run
        if cfg.data == "shapes":
            recipe = ClassifierRecipe(
                num_images=cfg.classifier_images, steps=cfg.classifier_steps, resolution=cfg.resolution
            )
            return shapes_yardstick(recipe, cfg.fid_real_images, cfg.classifier_cache, run.device)
        stats = cfg.fid_stats or str(run.run_dir / "fid_stats.npz")
        return inception_yardstick(cfg.inception_weights, stats, lambda: dataset, FID_BATCH_SIZE, run.device)

    def due(self, step: int) -> bool:
        return step % self.cfg.fid_every == 0 or step == self.cfg.steps

    def measure(self, generator: nn.Module) -> float:
        """Rank 0 measures, every rank returns its value (NaN when G's samples gave no valid features)."""
        value = None
        if self.yardstick is not None:  # rank 0
            try:
                with _training_rng_untouched(self.run.device), self.run.precision.autocast():
                    value = self.yardstick.measure(generator, self.z, self.y, FID_BATCH_SIZE)
            except UserError as error:  # e.g. NaN images: no value, but the other ranks must not hang
                self.run.logger.warning("%s not measured: %s", self.metric, error)
                value = float("nan")
        return float(broadcast_object(value))


def _check_fid_options(cfg: TrainConfig, mixture: bool) -> None:
    if cfg.fid_every < 0:
        raise UserError(f"--fid-every must be 0 (off) or positive, got {cfg.fid_every}")
    if cfg.fid_samples < 0 or cfg.fid_samples == 1:
        raise UserError(f"--fid-samples must be 0 (the default count) or at least 2, got {cfg.fid_samples}")
    if cfg.fid_every and mixture:
        raise UserError(
            f"--fid-every needs images; --data {cfg.data} is 2-D points (fqgan-eval counts their modes)"
        )


@dataclass
class TrainResult:
    """What :func:`train` leaves behind in memory (everything is also on disk under ``run_dir``)."""

    metrics: dict[str, float]
    generator: nn.Module
    discriminator: nn.Module
    generator_ema: nn.Module


def train(cfg: TrainConfig) -> TrainResult:
    """Run one training (fresh or resumed); returns the last logged metrics and the models."""
    if cfg.d_steps < 1:
        raise UserError(f"--d-steps must be at least 1, got {cfg.d_steps}")
    policy = parse_policy(cfg.diffaug)
    dataset = load_dataset(
        cfg.data,
        data_root=cfg.data_root,
        resolution=cfg.resolution,
        num_images=cfg.num_images,
        seed=cfg.data_seed,
    )
    mixture = isinstance(dataset, MixtureDataset)
    if mixture and policy:
        raise UserError("--diffaug applies to images, not to the 2-D mixtures")
    _check_fid_options(cfg, mixture)
    model_config = model_config_for(cfg, dataset)
    with torch.device("meta"):  # validate sizes and FQ layers before a run directory is touched
        build_models(model_config)
    with TrainingRun(cfg, model_config=model_config, name="fqgan") as run:
        if getattr(dataset, "skipped", 0):
            run.logger.warning("skipped %d unreadable image(s) in %s", dataset.skipped, cfg.data)
        run.logger.info("data %s: %d items, %d classes", cfg.data, len(dataset), dataset.num_classes)
        generator, discriminator = build_models(model_config)
        generator.to(run.device)
        discriminator.to(run.device)
        ema = GeneratorEMA(generator, cfg.ema_decay, cfg.ema_start)
        betas = (cfg.adam_beta1, cfg.adam_beta2)
        opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr_g, betas=betas)
        opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.lr_d, betas=betas)
        run.track(
            models={"generator": generator, "discriminator": discriminator, "generator_ema": ema.model},
            optimizers={"generator": opt_g, "discriminator": opt_d},
        )
        start = run.resume()
        gan = GANSteps(cfg, run, generator, discriminator, opt_g, opt_d)
        grid_z, grid_y = fixed_noise(cfg.num_grid_samples, model_config, seed=cfg.seed, device=run.device)
        fid = TrainingFID(cfg, run, dataset, model_config, start) if cfg.fid_every else None
        last: dict[str, float] = {}
        update_size = cfg.batch_size * cfg.grad_accum
        images_seen, clock = 0, time.perf_counter()
        # Every D update takes the next sampler step's batch (batch size × grad accum), so D
        # update k of step s reads sampler step (s - 1) · d_steps + k + 1: a pure function of
        # (seed, s, k), and a resume at step s continues exactly. Closing the stream stops its
        # loader workers.
        stream = real_batch_stream(run, dataset, cfg.batch_size, start_step=start * cfg.d_steps)
        with contextlib.closing(stream) as real_batches:
            for step in run.steps(start):
                generator.train()
                discriminator.train()
                try:
                    for _ in range(cfg.d_steps):
                        real, labels = next(real_batches)
                        d_metrics = gan.discriminator_update(step, real, labels)
                    g_metrics = gan.generator_update(step, update_size)
                except QuantizationInputError as error:
                    # The quantizer refuses NaN/inf features before touching its dictionary: report it
                    # like a non-finite loss; checkpoints on disk all predate this step.
                    raise run.diverged(f"discriminator features became non-finite at step {step}") from error
                ema.update(generator, step)
                images_seen += update_size * (cfg.d_steps + 1) * run.dist.world_size
                quality: dict[str, float] = {}
                if fid is not None and fid.due(step):
                    measuring = time.perf_counter()
                    quality[fid.metric] = fid.measure(ema.model)
                    if fid.best.offer(step, quality[fid.metric]):
                        run.logger.info(
                            "step %d: %s %.4f is the best so far, saved as %s",
                            step,
                            fid.metric,
                            quality[fid.metric],
                            fid.best.path,
                        )
                    clock += time.perf_counter() - measuring  # images_per_s stays a training throughput
                if run.should_log(step) or quality:
                    elapsed = time.perf_counter() - clock
                    metrics = {**d_metrics, **g_metrics, "images_per_s": images_seen / max(elapsed, 1e-9)}
                    last = run.log(step, {**metrics, **quality})
                    images_seen, clock = 0, time.perf_counter()
                grid_due = cfg.sample_every > 0 and step % cfg.sample_every == 0
                if run.dist.is_main and (grid_due or step == cfg.steps):
                    grid_file = run.samples_dir / f"step_{step:06d}.png"
                    save_sample_grid(ema.model, grid_z, grid_y, grid_file, mixture)
        run.logger.info("done: %s", run.run_dir)
    return TrainResult(last, generator, discriminator, ema.model)


def main(argv: list[str] | None = None) -> int:
    return cli.run(
        train,
        TrainConfig,
        argv,
        prog="fqgan-train",
        description=__doc__,
        presets=PRESETS,
        module="fqgan.train",
    )


if __name__ == "__main__":
    sys.exit(main())
