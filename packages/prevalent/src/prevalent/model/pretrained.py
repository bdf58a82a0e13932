"""The pretrained-encoder bundle: what ``prevalent-pretrain`` and ``prevalent-convert`` write and
``prevalent-finetune`` reads.

A bundle is a directory::

    model.safetensors   PrevalentPretrainingModel weights (encoder.*, mlm_head.*, action_head.*)
    config.json         {"format": "prevalent-encoder", "version": 1, "encoder": {EncoderConfig}}
    tokenizer.json      the WordPiece tokenizer the embeddings were trained with

Everything needed to rebuild the model sits beside the weights, so a bundle alone is enough.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dgm_core.errors import UserError
from prevalent.model.encoder import EncoderConfig
from prevalent.model.heads import PrevalentPretrainingModel
from prevalent.model.tokenizer import InstructionTokenizer

BUNDLE_FORMAT = "prevalent-encoder"
BUNDLE_VERSION = 1


def save_bundle(
    directory: str | Path,
    model: PrevalentPretrainingModel,
    tokenizer: InstructionTokenizer | None,
    extra: dict | None = None,
) -> Path:
    """Write ``model`` (and ``tokenizer``) as a bundle; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    meta = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "encoder": model.config.to_dict()}
    if extra:
        meta.update(extra)
    (directory / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save(directory / "tokenizer.json")
    return directory


def read_bundle_config(directory: str | Path) -> EncoderConfig:
    """The :class:`EncoderConfig` stored in a bundle (clear errors for a missing or foreign one)."""
    directory = Path(directory)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise UserError(
            f"no pretrained encoder at {directory} (config.json missing); run prevalent-pretrain "
            "first or pass --pretrained none"
        )
    meta = json.loads(config_file.read_text())
    if meta.get("format") != BUNDLE_FORMAT:
        raise UserError(f"{config_file} is not a PREVALENT encoder bundle (format {meta.get('format')!r})")
    return EncoderConfig.from_dict(meta["encoder"])


def load_bundle(
    directory: str | Path, expected: EncoderConfig | None = None
) -> tuple[PrevalentPretrainingModel, InstructionTokenizer]:
    """Rebuild the pretraining model and tokenizer from a bundle.

    With ``expected`` given, a bundle of another encoder size is a one-line :class:`UserError`
    naming the fields that differ.
    """
    directory = Path(directory)
    config = read_bundle_config(directory)
    if expected is not None:
        check_same_size(expected, config, source=str(directory))
    model = PrevalentPretrainingModel(config)
    load_weights(model, directory / "model.safetensors")
    return model, InstructionTokenizer.load(directory / "tokenizer.json")


SIZE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
    "text_layers",
    "cross_layers",
    "image_feature_size",
    "angle_feature_size",
    "max_text_length",
)


def check_same_size(expected: EncoderConfig, found: EncoderConfig, source: str) -> None:
    """Raise a :class:`UserError` listing the size fields where ``found`` differs from ``expected``."""
    diffs = [
        f"{name} {getattr(found, name)} (expected {getattr(expected, name)})"
        for name in SIZE_FIELDS
        if getattr(found, name) != getattr(expected, name)
    ]
    if diffs:
        raise UserError(f"checkpoint {source} is from another encoder size: " + ", ".join(diffs))


def load_weights(model: torch.nn.Module, weights_file: str | Path) -> None:
    """Strictly load a safetensors file into ``model``; shape mismatches are a :class:`UserError`."""
    weights_file = Path(weights_file)
    if not weights_file.is_file():
        raise UserError(f"weights file not found: {weights_file}")
    state = load_file(str(weights_file))
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if wrong:
        k = wrong[0]
        raise UserError(
            f"{weights_file} is from another encoder size: {k} has shape {tuple(state[k].shape)}, "
            f"this model expects {tuple(own[k].shape)} ({len(wrong)} tensors differ)"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(
            f"{weights_file} does not match this model: {len(missing)} missing tensors "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
