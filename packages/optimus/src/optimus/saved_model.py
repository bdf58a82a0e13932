"""A trained model on disk: the model folder ``optimus-train`` writes and every other CLI opens.

A training run's directory holds the model folder ``<run_dir>/model`` (``config.json``,
``model.safetensors`` and the two tokenizer folders, so it is self-contained) and, beside it,
the JSON results the CLIs write by default (``eval.json``, ``classify.json``). The CLIs accept
either the run directory or the model folder itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from dgm_core.cli import option
from dgm_core.errors import UserError
from dgm_core.inference import InferenceRuntime, RuntimeConfig, open_inference
from optimus.tokenization import SentenceCodec
from optimus.vae import OptimusVAE

DEFAULT_MODEL = "runs/optimus/model"  # where optimus-train saves with its default --run-dir


def save_trained(folder: str | Path, model: OptimusVAE, codec: SentenceCodec) -> Path:
    """The model and its tokenizers as one folder, written atomically."""
    return model.save_pretrained(folder, extra_files=codec.as_extra_files())


def resolve_model_folder(model_dir: str | Path) -> Path:
    """The model folder itself, or the ``model/`` of a run directory; a one-line error when absent."""
    folder = Path(model_dir)
    if (folder / "model" / "config.json").is_file():  # a run directory
        folder = folder / "model"
    if not folder.exists():
        raise UserError(
            f"model folder '{folder}' not found; train one first with optimus-train "
            f"(its default is {DEFAULT_MODEL}) or convert the original's checkpoints with optimus-convert"
        )
    return folder


def load_trained(model_dir: str | Path, device: torch.device) -> tuple[OptimusVAE, SentenceCodec]:
    """A saved model folder (or a run directory holding ``model/``) and its tokenizers; eval mode."""
    folder = resolve_model_folder(model_dir)
    model = OptimusVAE.from_pretrained(folder, map_location=device)
    codec = SentenceCodec.from_pretrained(folder)
    if (
        codec.decoder_vocab_size > model.decoder.config.vocab_size
        or codec.encoder_vocab_size > model.encoder.config.vocab_size
    ):
        raise UserError(f"the tokenizers in '{folder}' do not match the model's vocabulary sizes")
    model.eval()
    return model, codec


@dataclass
class SavedModelConfig(RuntimeConfig):
    """Options of every CLI that runs a trained model: the runtime ones and the model to open."""

    model: str = option(DEFAULT_MODEL, help="Saved model folder (or a run directory holding model/).")


def open_saved_model(cfg: SavedModelConfig) -> tuple[InferenceRuntime, OptimusVAE, SentenceCodec]:
    """Device, seed, determinism and precision set up as the options say, then the model loaded there."""
    runtime = open_inference(cfg)
    model, codec = load_trained(cfg.model, runtime.device)
    return runtime, model, codec


def resolve_block_size(model: OptimusVAE, requested: int) -> int:
    """``requested`` (0: the model's own block size), refused when the model cannot position it."""
    if requested < 0:
        raise UserError(f"block_size must be >= 0 (0: the model's own), got {requested}")
    if requested > model.max_block_size:
        raise UserError(
            f"block_size {requested} exceeds what the model can position ({model.max_block_size} tokens)"
        )
    return requested or model.block_size


def beside_model(model: str | Path, filename: str) -> Path:
    """``filename`` in the run directory: the parent of a folder named ``model``, else ``model`` itself."""
    folder = Path(model)
    return (folder.parent if folder.name == "model" else folder) / filename


def write_result(result: dict, path: str | Path) -> Path:
    """A CLI's result as indented JSON at ``path`` (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return path
