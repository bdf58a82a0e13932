"""The pretrained-encoder bundle: what ``prevalent-pretrain`` and ``prevalent-convert`` write and
``prevalent-finetune`` reads.

A bundle is a dgm-core model folder (:mod:`dgm_core.pretrained`)::

    config.json         {"format": "prevalent-encoder", "version": 1, "encoder": {EncoderConfig}, ...}
    model.safetensors   PrevalentPretrainingModel weights (encoder.*, mlm_head.*, action_head.*)
    tokenizer.json      the WordPiece tokenizer the embeddings were trained with

Everything needed to rebuild the model sits beside the weights, so a bundle alone is enough. An
export is atomic: it is built beside the destination and replaces an earlier bundle there in one
step, so a failed export leaves the earlier bundle as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dgm_core.errors import UserError
from dgm_core.pretrained import CONFIG_FILE, load_pretrained, read_pretrained_config, save_pretrained
from prevalent.model.encoder import EncoderConfig
from prevalent.model.heads import PrevalentPretrainingModel
from prevalent.model.tokenizer import InstructionTokenizer

BUNDLE_FORMAT = "prevalent-encoder"
BUNDLE_VERSION = 1
TOKENIZER_FILE = "tokenizer.json"


def save_bundle(
    directory: str | Path,
    model: PrevalentPretrainingModel,
    tokenizer: InstructionTokenizer | None,
    extra: dict | None = None,
) -> Path:
    """Export ``model`` (and ``tokenizer``) as a bundle, ``extra`` keys added to its config; returns it."""
    config = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "encoder": model.config.to_dict()}
    config.update(extra or {})
    extra_files = {TOKENIZER_FILE: tokenizer.save} if tokenizer is not None else None
    return save_pretrained(directory, model, config, extra_files=extra_files)


def read_bundle_config(directory: str | Path) -> EncoderConfig:
    """The :class:`EncoderConfig` stored in a bundle (clear errors for a missing or foreign one)."""
    directory = Path(directory)
    _require_bundle(directory)
    return _encoder_config(read_pretrained_config(directory), directory)


def load_bundle(
    directory: str | Path, expected: EncoderConfig | None = None
) -> tuple[PrevalentPretrainingModel, InstructionTokenizer]:
    """Rebuild the pretraining model and tokenizer from a bundle.

    With ``expected`` given, a bundle of another encoder size is a one-line :class:`UserError`
    naming the fields that differ.
    """
    directory = Path(directory)
    _require_bundle(directory)

    def build(config: dict[str, Any]) -> PrevalentPretrainingModel:
        encoder_config = _encoder_config(config, directory)
        if expected is not None:
            check_same_size(expected, encoder_config, source=str(directory))
        return PrevalentPretrainingModel(encoder_config)

    model, _ = load_pretrained(directory, build)
    return model, InstructionTokenizer.load(directory / TOKENIZER_FILE)


def _require_bundle(directory: Path) -> None:
    # The usual mistake is fine-tuning before pretraining: say what to do about it.
    if not (directory / CONFIG_FILE).is_file():
        raise UserError(
            f"no pretrained encoder at {directory} ({CONFIG_FILE} missing); run prevalent-pretrain "
            "first or pass --pretrained none"
        )


def _encoder_config(config: dict[str, Any], directory: Path) -> EncoderConfig:
    if config.get("format") != BUNDLE_FORMAT:
        raise UserError(
            f"{directory / CONFIG_FILE} is not a PREVALENT encoder bundle (format {config.get('format')!r})"
        )
    return EncoderConfig.from_dict(config["encoder"])


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
