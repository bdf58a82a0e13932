"""Checkpoints that survive crashes: atomic directories, safetensors weights, no pickled code.

Layout of one checkpoint::

    <run_dir>/checkpoints/step_000500/
        model.safetensors     every tracked module's weights, keys prefixed "<name>."
        config.json           {"name": ..., "step": ..., "model": <model config>, "run": <full config>}
        training_state.pt     optimizers, schedulers, grad scaler, step, RNG states of every rank, extras

A checkpoint is written into a hidden temporary directory and renamed into place
only when complete, so a crash mid-save leaves the previous checkpoints intact and
never a half-written ``step_N``. Only the newest ``keep_last`` are kept.
``training_state.pt`` is read with ``torch.load(weights_only=True)``: loading never
runs pickled code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from dgm_core.errors import UserError
from dgm_core.runtime.distributed import unwrap_model
from dgm_core.runtime.files import TMP_PREFIX, atomic_directory, write_json_atomic

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "training_state.pt"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(UserError):
    """A checkpoint that is missing, half-written, corrupt or does not fit the model."""


def _bundle(modules: Mapping[str, torch.nn.Module]) -> torch.nn.ModuleDict:
    return torch.nn.ModuleDict({name: unwrap_model(module) for name, module in modules.items()})


def save_weights(path: str | os.PathLike, modules: Mapping[str, torch.nn.Module]) -> None:
    """Save modules into one safetensors file; shared (tied) tensors are stored once."""
    save_model(_bundle(modules), str(path))


def load_weights(
    path: str | os.PathLike, modules: Mapping[str, torch.nn.Module], strict: bool = True
) -> None:
    """Load weights saved by :func:`save_weights` into ``modules`` (tied weights restored)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file missing: {path}")
    load_safetensors_into(_bundle(modules), path, CheckpointError, strict)


def load_safetensors_into(
    module: torch.nn.Module, path: Path, error: type[UserError], strict: bool = True
) -> None:
    """Load a safetensors file into ``module`` (tied tensors stored once are restored to every name).

    Unreadable files, shapes that do not fit and (with ``strict``) missing or unexpected tensors
    are one-line ``error``s naming the file and the first offending tensor.
    """
    try:
        missing, unexpected = load_model(module, str(path), strict=False)
    except (SafetensorError, OSError) as failure:
        raise error(f"{path} is corrupt or unreadable: {failure}") from None
    except (RuntimeError, ValueError) as failure:  # size mismatch
        lines = str(failure).strip().splitlines()
        detail = next((line.strip() for line in lines if "size mismatch" in line), lines[0] if lines else "")
        raise error(f"weights in {path} do not fit the model: {detail}") from None
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s), e.g. {sorted(missing)[0]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensor(s), e.g. {sorted(unexpected)[0]}")
        raise error(f"weights in {path} do not fit the model: {'; '.join(parts)}")


class CheckpointManager:
    """The ``checkpoints/`` folder of a run: save, list, find the latest, prune, load."""

    def __init__(self, directory: str | os.PathLike, keep_last: int = 3):
        if keep_last < 1:
            raise UserError(f"keep_checkpoints must be at least 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last

    # ----------------------------------------------------------------- listing
    def list(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for child in self.directory.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and child.is_dir():
                found.append((int(match.group(1)), child))
        return [path for _, path in sorted(found)]

    def latest(self) -> Path | None:
        checkpoints = self.list()
        return checkpoints[-1] if checkpoints else None

    def path_for(self, step: int) -> Path:
        return self.directory / f"step_{step:06d}"

    # ----------------------------------------------------------------- saving
    def save(
        self,
        step: int,
        modules: Mapping[str, torch.nn.Module],
        config: Mapping[str, Any],
        training_state: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write checkpoint ``step`` atomically, then prune to the newest ``keep_last``."""
        final = self.write(self.path_for(step), modules, config, training_state)
        self._prune()
        return final

    @staticmethod
    def write(
        folder: str | os.PathLike,
        modules: Mapping[str, torch.nn.Module],
        config: Mapping[str, Any],
        training_state: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write one checkpoint folder atomically (any name: ``step_N``, or e.g. ``best``).

        An existing folder of that name is replaced without a moment lacking a complete one.
        """
        folder = Path(folder)
        with atomic_directory(folder) as tmp:
            save_weights(tmp / WEIGHTS_FILE, modules)
            write_json_atomic(tmp / CONFIG_FILE, dict(config))
            if training_state is not None:
                with open(tmp / STATE_FILE, "wb") as handle:
                    torch.save(dict(training_state), handle)
        return folder

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete hidden folders left by saves that a crash interrupted; return what was removed."""
        if not self.directory.is_dir():
            return []
        stale = [
            child
            for child in self.directory.iterdir()
            if child.is_dir() and child.name.startswith((TMP_PREFIX, ".old-"))
        ]
        for child in stale:
            shutil.rmtree(child, ignore_errors=True)
        return stale

    def set_aside_after(self, step: int) -> list[Path]:
        """Move checkpoints newer than ``step`` into ``superseded-<n>/`` (kept, never deleted)."""
        newer = [path for path in self.list() if int(_STEP_DIR.match(path.name).group(1)) > step]
        if not newer:
            return []
        number = 1
        while (self.directory / f"superseded-{number}").exists():
            number += 1
        target = self.directory / f"superseded-{number}"
        target.mkdir()
        moved = []
        for path in newer:
            os.replace(path, target / path.name)
            moved.append(target / path.name)
        return moved

    def _prune(self) -> None:
        for old in self.list()[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    # ----------------------------------------------------------------- loading
    @staticmethod
    def resolve(path: str | os.PathLike) -> Path:
        """Accept a checkpoint dir, a run dir (its latest checkpoint) or a checkpoints/ dir."""
        path = Path(path)
        if (path / WEIGHTS_FILE).exists() or _STEP_DIR.match(path.name):
            if not path.is_dir():
                raise CheckpointError(f"checkpoint not found: {path}")
            return path
        for candidate in (path / "checkpoints", path):
            latest = CheckpointManager(candidate).latest()
            if latest is not None:
                return latest
        if not path.exists():
            raise CheckpointError(f"checkpoint not found: {path}")
        raise CheckpointError(f"no checkpoint in {path} (expected step_N/ folders holding {WEIGHTS_FILE})")

    @staticmethod
    def read_config(checkpoint: str | os.PathLike) -> dict[str, Any]:
        path = Path(checkpoint) / CONFIG_FILE
        if not path.is_file():
            raise CheckpointError(f"checkpoint {checkpoint} is incomplete: {CONFIG_FILE} missing")
        try:
            return json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{path} is corrupt: {error}") from None

    @staticmethod
    def load_weights(
        checkpoint: str | os.PathLike, modules: Mapping[str, torch.nn.Module], strict: bool = True
    ):
        load_weights(Path(checkpoint) / WEIGHTS_FILE, modules, strict=strict)

    @staticmethod
    def load_training_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
        path = Path(checkpoint) / STATE_FILE
        if not path.is_file():
            raise CheckpointError(f"checkpoint {checkpoint} has no {STATE_FILE}; it cannot be resumed from")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for truncated/garbled files
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointError(f"{path} is corrupt or unreadable: {message}") from None
