"""Which checkpoint a run continues from, and whether it fits the model being trained."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dgm_core.errors import UserError
from dgm_core.runtime.checkpoint import CheckpointManager


def choose_resume_checkpoint(
    choice: str, checkpoints: CheckpointManager, run_dir: Path, model_config: Mapping[str, Any]
) -> Path | None:
    """The checkpoint ``--resume choice`` names (``auto``, ``none`` or a path), checked against the model.

    ``none`` refuses a run directory that already holds checkpoints (it would be overwritten);
    a checkpoint of another model configuration is refused with the fields that differ.
    """
    if choice == "none":
        latest = checkpoints.latest()
        if latest is not None:
            raise UserError(
                f"run directory {run_dir} already holds checkpoints (newest {latest.name}); "
                "use --resume auto to continue it or choose another --run-dir"
            )
        return None
    checkpoint = checkpoints.latest() if choice == "auto" else CheckpointManager.resolve(choice)
    if checkpoint is None:
        return None
    saved_model = CheckpointManager.read_config(checkpoint).get("model") or {}
    if saved_model != dict(model_config):
        keys = sorted(set(saved_model) | set(model_config))
        diffs = [
            f"{k}: {saved_model.get(k)!r} in checkpoint vs {model_config.get(k)!r} now"
            for k in keys
            if saved_model.get(k) != model_config.get(k)
        ]
        raise UserError(
            f"cannot resume from {checkpoint}: its model config differs ({'; '.join(diffs[:3])}); "
            "train it in another --run-dir"
        )
    return checkpoint


def last_good_checkpoint_note(checkpoints: CheckpointManager) -> str:
    """'; the last good checkpoint is …' — appended to every message that stops a run early."""
    latest = checkpoints.latest()
    return f"; the last good checkpoint is {latest}" if latest else "; no checkpoint was written yet"
