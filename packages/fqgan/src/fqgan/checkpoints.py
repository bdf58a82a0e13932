"""Reading an ``fqgan-train`` checkpoint back: the trained models and what the run recorded.

Each checkpoint is dgm-core's ``<run_dir>/checkpoints/step_N/`` folder: ``model.safetensors``
holds ``generator``, ``discriminator`` (with its dictionaries) and ``generator_ema``;
``config.json`` the model config, the training options and the step. The inference CLIs
rebuild the models from that folder alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgm_core.runtime.checkpoint import CheckpointError, CheckpointManager
from fqgan.models import build_models


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
