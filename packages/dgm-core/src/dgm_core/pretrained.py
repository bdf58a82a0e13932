"""One export format for every saved model: ``config.json`` beside ``model.safetensors``.

A model folder, in the manner of transformers and diffusers::

    <folder>/config.json          everything needed to rebuild the model (the package's own keys)
    <folder>/model.safetensors    the model's ``state_dict`` under its own names; tied tensors stored once
    <folder>/<extra files>        e.g. a tokenizer, beside the weights, so the folder alone is enough

:func:`save_pretrained` builds the folder under a hidden temporary name and renames it into
place only when complete (:func:`dgm_core.runtime.files.atomic_directory`), so an interrupted
export never leaves a half-written model, and an existing export is replaced in one step.
:func:`load_pretrained` reads JSON and safetensors only: loading never runs pickled code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_model

from dgm_core.errors import UserError
from dgm_core.runtime.checkpoint import load_safetensors_into
from dgm_core.runtime.distributed import unwrap_model
from dgm_core.runtime.files import atomic_directory, write_json_atomic

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

# What an extra file may be: text, bytes, or a function that writes it (a file or a folder) at a path.
ExtraFile = str | bytes | Callable[[Path], Any]


class PretrainedError(UserError):
    """A model folder that is missing, incomplete, corrupt or does not fit the model."""


def save_pretrained(
    folder: str | os.PathLike,
    model: torch.nn.Module,
    config: Mapping[str, Any],
    extra_files: Mapping[str, ExtraFile] | None = None,
) -> Path:
    """Export ``model`` with its ``config`` (and ``extra_files``) as a model folder, atomically.

    ``extra_files`` maps a name inside the folder to its text, its bytes, or a function called
    with the destination path (for writers such as ``tokenizer.save(path)``). A non-empty
    ``folder`` that is not a model folder (no ``config.json``) is refused rather than replaced.
    Returns the folder.
    """
    folder = Path(folder)
    if folder.is_file():
        raise PretrainedError(f"cannot export a model to {folder}: it is a file")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / CONFIG_FILE).is_file():
        raise PretrainedError(
            f"{folder} holds other files and is not a saved model ({CONFIG_FILE} missing); "
            "refusing to replace it: choose another folder"
        )
    module = unwrap_model(model)
    with atomic_directory(folder) as tmp:
        write_json_atomic(tmp / CONFIG_FILE, dict(config))
        # save_model (not save_file) drops the duplicates of tied tensors and stores each once.
        save_model(module, str(tmp / WEIGHTS_FILE))
        for name, content in (extra_files or {}).items():
            if name in (CONFIG_FILE, WEIGHTS_FILE) or Path(name).is_absolute() or ".." in Path(name).parts:
                raise ValueError(f"extra file name {name!r} is reserved or leaves the folder")
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str):
                target.write_text(content)
            elif isinstance(content, bytes):
                target.write_bytes(content)
            else:
                content(target)
    return folder


def read_pretrained_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a model folder (a one-line error when the folder or file is missing)."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not folder.exists():
        raise PretrainedError(f"model folder not found: {folder}")
    if not path.is_file():
        raise PretrainedError(f"{folder} is not a saved model: {CONFIG_FILE} missing")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise PretrainedError(f"{path} is corrupt: {error}") from None
    if not isinstance(config, dict):
        raise PretrainedError(f"{path} is not a JSON object")
    return config


def load_pretrained(
    folder: str | os.PathLike,
    model: torch.nn.Module | Callable[[dict[str, Any]], torch.nn.Module],
    *,
    device: str | torch.device = "cpu",
    strict: bool = True,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a model folder written by :func:`save_pretrained`; return ``(model, config)``.

    ``model`` is a module to load into, or a function that builds one from the config (it may
    raise its own :class:`UserError` for a config of another kind). Tied tensors stored once are
    restored to every name that shares them. Keys or shapes that do not fit are a one-line
    :class:`PretrainedError`.
    """
    folder = Path(folder)
    config = read_pretrained_config(folder)
    module = model if isinstance(model, torch.nn.Module) else model(config)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise PretrainedError(f"{folder} is not a complete saved model: {WEIGHTS_FILE} missing")
    load_safetensors_into(module, weights, PretrainedError, strict)
    return module.to(device), config
