"""``fqgan-train`` checkpoints: reading one back, and keeping the best one.

Each checkpoint is dgm-core's ``<run_dir>/checkpoints/step_N/`` folder: ``model.safetensors``
holds ``generator``, ``discriminator`` (with its dictionaries) and ``generator_ema``;
``config.json`` the model config, the training options and the step. The inference CLIs
rebuild the models from that folder alone.

With ``--fid-every``, ``<run_dir>/checkpoints/best/`` is the same kind of folder (plus
``training_state.pt``, so ``--resume`` accepts it), holding the step with the lowest FID so far;
its ``config.json`` records that value under ``best``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dgm_core.runtime.checkpoint import (
    CONFIG_FILE,
    CheckpointError,
    CheckpointManager,
)
from fqgan.models import build_models

if TYPE_CHECKING:
    from dgm_core.training import TrainingRun

BEST_CHECKPOINT = "best"


@dataclass
class TrainedModels:
    """The models of one checkpoint (eval mode) and the record they were saved with."""

    generator_ema: nn.Module
    generator: nn.Module
    discriminator: nn.Module
    checkpoint: Path  # the step_N folder they were read from
    step: int
    model_config: dict[str, Any]  # what fqgan.models.build_models needs
    run_config: dict[str, Any]  # the training options (data, data_root, resolution, ...)

    @property
    def run_dir(self) -> Path:
        """The run directory of the checkpoint (``<run_dir>/checkpoints/step_N``)."""
        return self.checkpoint.parent.parent


def load_trained_models(path: str | Path, device: torch.device | str = "cpu") -> TrainedModels:
    """The models of a checkpoint folder, or of a run directory's newest checkpoint, on ``device``."""
    checkpoint = CheckpointManager.resolve(path)
    record = CheckpointManager.read_config(checkpoint)
    if record.get("name") != "fqgan" or "model" not in record:
        raise CheckpointError(f"{checkpoint} is not an fqgan checkpoint (name {record.get('name')!r})")
    generator, discriminator = build_models(record["model"])
    # Only the generator of this second pair is kept; FQ (a discriminator setting) is left off.
    generator_ema, _ = build_models({**record["model"], "fq_mode": "none"})
    CheckpointManager.load_weights(
        checkpoint,
        {"generator": generator, "discriminator": discriminator, "generator_ema": generator_ema},
    )
    for module in (generator_ema, generator, discriminator):
        module.to(device).eval()
    return TrainedModels(
        generator_ema=generator_ema,
        generator=generator,
        discriminator=discriminator,
        checkpoint=checkpoint,
        step=int(record.get("step", 0)),
        model_config=record["model"],
        run_config=record.get("run", {}),
    )


def best_checkpoint_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints" / BEST_CHECKPOINT


def read_best_record(run_dir: str | Path) -> dict[str, Any] | None:
    """``{"metric", "value", "step"}`` of the run's best checkpoint, or None (none, or unreadable)."""
    path = best_checkpoint_path(run_dir) / CONFIG_FILE
    try:
        record = json.loads(path.read_text()).get("best")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(record, dict) or not {"metric", "value", "step"} <= set(record):
        return None
    return record


class BestCheckpoint:
    """``checkpoints/best`` of a training run: replaced whenever a lower metric value is offered.

    BigGAN-PyTorch keeps a copy of the weights (and optimizer state) with the best FID seen so
    far; this is that copy, written atomically. On a resume the best value recorded at or before
    the resumed step counts; a ``best`` written after it (by an abandoned continuation) or before
    a fresh start is stale and is replaced by the first measurement.
    """

    def __init__(self, run: TrainingRun, metric: str, start_step: int):
        self.run, self.metric = run, metric
        self.path = best_checkpoint_path(run.run_dir)
        self.value: float | None = None
        record = read_best_record(run.run_dir)
        if record and record["metric"] == metric and 0 < int(record["step"]) <= start_step:
            self.value = float(record["value"])

    def offer(self, step: int, value: float) -> bool:
        """Save the tracked state as ``best`` if ``value`` beats the best so far (collective).

        Every rank must call it with the same ``value`` (rank 0's, broadcast).
        """
        if not math.isfinite(value) or (self.value is not None and value >= self.value):
            return False
        self.value = value
        self._save(step, {"metric": self.metric, "value": value, "step": step})
        return True

    def _save(self, step: int, best: dict[str, Any]) -> None:
        # A full checkpoint (weights, optimizer and RNG state: resumable), outside the step_N rotation.
        self.run.save_checkpoint(step, folder=self.path, record={"best": best})
