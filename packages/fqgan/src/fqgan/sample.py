"""``fqgan-sample``: draw samples from a checkpoint — a PNG grid and an ``.npz`` of the samples.

Writes ``<out>/sample_step_N.png`` and ``.npz`` (``_classK`` appended with ``--class-id K``).

Images are written as ``uint8`` ``(N, H, W, 3)`` under the key ``images`` (the
layout of pytorch-fid/TF sample archives) with ``labels`` (the class each image
was drawn for; -1 when unconditional). For a class-conditional generator,
``--per-class`` draws the same number of samples for every class and writes one
grid row block per class. 2-D mixtures give ``points`` (N, 2) and a scatter PNG.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dgm_core import cli
from dgm_core.cli import option
from dgm_core.errors import UserError
from dgm_core.inference import RuntimeConfig, open_inference
from fqgan.checkpoints import load_trained_models
from fqgan.generation import generate, render_points, truncated_noise


@dataclass
class SampleConfig(RuntimeConfig):
    """Options of ``fqgan-sample``."""

    checkpoint: str = option(
        "runs/fqgan-demo", help="Run directory (newest checkpoint) or checkpoint folder."
    )
    num_samples: int = option(64, help="Samples to draw (per class with --per-class).")
    per_class: bool = option(True, help="Conditional G: draw --num-samples for every class.")
    class_id: int = option(-1, help="Conditional G: draw only this class (-1: see --per-class).")
    out: str = option("", help="Folder for sample_step_N.png and .npz (default: <run_dir>/samples).")
    use_ema: bool = option(True, help="Sample from the EMA generator (else the raw one).")
    truncation: float = option(0.0, help="Resample |z| entries above this value (0: off; BigGAN's trick).")
    batch_size: int = option(256, help="Samples per generator call.")


def requested_labels(cfg: SampleConfig, num_classes: int) -> torch.Tensor | None:
    """The class of every sample to draw (``None`` for an unconditional generator)."""
    if cfg.class_id >= 0:
        if num_classes == 0:
            raise UserError("--class-id needs a class-conditional checkpoint; this one is unconditional")
        if cfg.class_id >= num_classes:
            raise UserError(
                f"--class-id {cfg.class_id} does not exist: the checkpoint has classes 0..{num_classes - 1}"
            )
        return torch.full((cfg.num_samples,), cfg.class_id, dtype=torch.long)
    if num_classes > 0 and cfg.per_class:
        return torch.arange(num_classes).repeat_interleave(cfg.num_samples)
    if num_classes > 0:
        return torch.randint(num_classes, (cfg.num_samples,))
    return None


def sample(cfg: SampleConfig) -> Path:
    """Write ``<output>.png`` and ``<output>.npz``; return the ``.npz`` path."""
    if cfg.num_samples < 1:
        raise UserError(f"--num-samples must be at least 1, got {cfg.num_samples}")
    runtime = open_inference(cfg)
    trained = load_trained_models(cfg.checkpoint, runtime.device)
    generator = trained.generator_ema if cfg.use_ema else trained.generator
    num_classes = int(trained.model_config.get("num_classes", 0))
    labels = requested_labels(cfg, num_classes)
    n = labels.shape[0] if labels is not None else cfg.num_samples
    z = truncated_noise(n, int(trained.model_config["z_dim"]), cfg.truncation)
    with runtime.precision.autocast():
        samples = generate(
            generator,
            z.to(runtime.device),
            labels.to(runtime.device) if labels is not None else None,
            cfg.batch_size,
        )
    folder = Path(cfg.out) if cfg.out else trained.run_dir / "samples"
    suffix = f"_class{cfg.class_id}" if cfg.class_id >= 0 else ""
    base = folder / f"sample_step_{trained.step:06d}{suffix}"
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    from torchvision.utils import save_image

    label_array = labels.numpy() if labels is not None else np.full(n, -1, dtype=np.int64)
    if int(trained.model_config.get("resolution", 0)) == 0:
        np.savez(base.with_suffix(".npz"), points=samples.numpy(), labels=label_array)
        save_image(render_points(samples), base.with_suffix(".png"))
    else:
        images = samples.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
        np.savez(base.with_suffix(".npz"), images=images.permute(0, 2, 3, 1).numpy(), labels=label_array)
        # One row block per class when drawn per class, else a square grid.
        per_row = cfg.num_samples if (num_classes > 0 and cfg.per_class and cfg.class_id < 0) else 0
        nrow = per_row if 0 < per_row <= 32 else max(1, int(math.ceil(math.sqrt(n))))
        save_image(samples, base.with_suffix(".png"), nrow=nrow, normalize=True, value_range=(-1, 1))
    print(f"wrote {base.with_suffix('.png')} and {base.with_suffix('.npz')} ({n} samples)")
    return base.with_suffix(".npz")


def main(argv: list[str] | None = None) -> int:
    return cli.run(sample, SampleConfig, argv, prog="fqgan-sample", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
