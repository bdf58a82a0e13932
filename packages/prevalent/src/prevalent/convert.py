"""``prevalent-convert``: turn an original PREVALENT checkpoint into an encoder bundle.

The released pretraining code (``tasks/R2R/nav_dic_pretrain.py`` of PREVALENT_R2R) trains
``DicAddActionPreTrain`` (``pretrain_class.py``), whose ``bert`` is a ``DicModel``
(``vilmodel.py``: ``lalayer`` BERT layers, ``addlayer`` LXMERT-style ``LXRTXLayer`` s and a
``VisionEncoder``). Its weights are named::

    bert.embeddings.*                      -> encoder.embeddings.*
    bert.lalayer.N.*                       -> encoder.text_layers.N.*            (BERT layers)
    bert.addlayer.N.visual_attention.att.* -> encoder.cross_layers.N.cross_attention.self.*
    bert.addlayer.N.visual_attention.output.*       -> ...cross_attention.output.*
    bert.addlayer.N.lang_self_att.* / visn_self_att.* -> ...text_self_attention.* / vision_self_attention.*
    bert.addlayer.N.lang_inter.* / visn_inter.*     -> ...text_intermediate.* / vision_intermediate.*
    bert.addlayer.N.lang_output.* / visn_output.*   -> ...text_output.* / vision_output.*
    bert.vision_encoder.visn_fc.*          -> encoder.vision_projection.proj.*   (angle columns reordered)
    bert.vision_encoder.visn_layer_norm.*  -> encoder.vision_projection.layer_norm.*
    bert.pooler.*                          -> encoder.pooler.*
    mlmhead.predictions.transform.dense.*  -> mlm_head.dense.*
    mlmhead.predictions.transform.LayerNorm.* -> mlm_head.layer_norm.*
    mlmhead.predictions.bias               -> mlm_head.bias
    mlmhead.predictions.decoder.weight     -> (tied to the word embeddings; checked, not stored)
    next_action.*                          -> (skipped: see below)

(The same file's ``HugAddActionPreTrain`` wraps ``BertAddModel``, a single-stream model with
other names — ``bert.encoder.layer``, ``bert.addlayer.layer``, ``img_embedding`` — which this
converter does not read.)

**Orientation columns.** The original pretraining data (``batch_loader.py``) built each view's
128-d orientation feature in a *block* layout, ``32 × sin h | 32 × cos h | 32 × sin e | 32 × cos e``,
while this package feeds the interleaved ``(sin h, cos h, sin e, cos e) × 32``
(:mod:`prevalent.env.angles`). Both hold the same numbers in another order, so reordering the
orientation columns of ``visn_fc.weight`` makes the converted projection compute exactly what the
original computed on its own layout. ``--angle-layout interleaved`` skips the reordering, for a
checkpoint that was trained further on interleaved features (the EnvDrop-style fine-tuning code
``r2r_src`` builds them that way).

The original ``next_action`` head is a fixed-size linear classifier over panorama slots;
this package's action head scores the candidates themselves (STOP at index 0), so there is
no tensor to carry over and it starts fresh. The converter counts and reports it.
TensorFlow-style ``gamma``/``beta`` LayerNorm names and a ``module.`` (DataParallel) prefix
are accepted. Sizes are read from the tensor shapes; only the number of attention heads
(not visible in any shape) and the width of the orientation feature are options.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dgm_core import cli
from dgm_core.cli import option
from dgm_core.errors import UserError
from dgm_core.pretrained import WEIGHTS_FILE
from prevalent.model.encoder import EncoderConfig
from prevalent.model.heads import PrevalentPretrainingModel
from prevalent.model.pretrained import save_bundle
from prevalent.model.tokenizer import InstructionTokenizer

_CROSS_RENAMES = (
    ("visual_attention.att.", "cross_attention.self."),
    ("visual_attention.output.", "cross_attention.output."),
    ("lang_self_att.", "text_self_attention."),
    ("visn_self_att.", "vision_self_attention."),
    ("lang_inter.", "text_intermediate."),
    ("visn_inter.", "vision_intermediate."),
    ("lang_output.", "text_output."),
    ("visn_output.", "vision_output."),
)
_FIXED_RENAMES = {
    "bert.vision_encoder.visn_fc.": "encoder.vision_projection.proj.",
    "bert.vision_encoder.visn_layer_norm.": "encoder.vision_projection.layer_norm.",
    "bert.pooler.": "encoder.pooler.",
    "bert.embeddings.": "encoder.embeddings.",
    "mlmhead.predictions.transform.dense.": "mlm_head.dense.",
    "mlmhead.predictions.transform.LayerNorm.": "mlm_head.layer_norm.",
}

VISION_PROJECTION = "bert.vision_encoder.visn_fc.weight"
#: how the checkpoint's vision projection reads its orientation columns (see the module docstring)
ANGLE_LAYOUTS = ("block", "interleaved")


@dataclass
class ConversionReport:
    """Which original tensors went where and which were left out (with the reason)."""

    mapped: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    #: mapped tensors whose values were rearranged, not copied as they are (name -> how)
    rearranged: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for why in self.skipped.values():
            reasons[why] = reasons.get(why, 0) + 1
        parts = [f"{len(self.mapped)} tensors mapped"] + [
            f"{n} skipped ({why})" for why, n in sorted(reasons.items())
        ]
        parts += [f"{name}: {how}" for name, how in self.rearranged.items()]
        return ", ".join(parts)


def block_to_interleaved_columns(angle_feature_size: int) -> torch.Tensor:
    """For each column of the interleaved orientation feature, the block-layout column with its value.

    Interleaved position ``4k + c`` holds the ``k``-th copy of component ``c`` (sin h, cos h, sin e,
    cos e); the block layout keeps that copy at ``c · (size / 4) + k``.
    """
    copies = angle_feature_size // 4
    return torch.tensor([component * copies + k for k in range(copies) for component in range(4)])


def _normalise(name: str) -> str:
    name = name.removeprefix("module.")
    name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
    return re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)


def rename(name: str) -> str | None:
    """The name in this package of one original tensor name, or ``None`` when it has no counterpart."""
    name = _normalise(name)
    match = re.match(r"bert\.lalayer\.(\d+)\.(.+)$", name)
    if match:
        return f"encoder.text_layers.{match[1]}.{match[2]}"
    match = re.match(r"bert\.addlayer\.(\d+)\.(.+)$", name)
    if match:
        rest = match[2]
        for old, new in _CROSS_RENAMES:
            if rest.startswith(old):
                return f"encoder.cross_layers.{match[1]}.{new}{rest[len(old) :]}"
        return None
    if name == "mlmhead.predictions.bias":
        return "mlm_head.bias"
    for old, new in _FIXED_RENAMES.items():
        if name.startswith(old):
            return new + name[len(old) :]
    return None


def infer_config(
    state: dict[str, torch.Tensor], num_attention_heads: int | None = None, angle_feature_size: int = 128
) -> EncoderConfig:
    """Read the encoder sizes off the original tensors' shapes."""
    state = {_normalise(k): v for k, v in state.items()}

    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise UserError(f"not a PREVALENT checkpoint: tensor '{key}' is missing")
        return state[key]

    words = need("bert.embeddings.word_embeddings.weight")
    hidden = words.shape[1]

    def count(prefix: str) -> int:
        indices = {int(m[1]) for k in state if (m := re.match(rf"{prefix}\.(\d+)\.", k))}
        if indices and indices != set(range(len(indices))):
            raise UserError(f"checkpoint has gaps in its {prefix} layer indices: {sorted(indices)}")
        return len(indices)

    text_layers, cross_layers = count("bert.lalayer"), count("bert.addlayer")
    if cross_layers:
        intermediate = need("bert.addlayer.0.lang_inter.dense.weight").shape[0]
    elif text_layers:
        intermediate = need("bert.lalayer.0.intermediate.dense.weight").shape[0]
    else:
        raise UserError("not a PREVALENT checkpoint: no bert.lalayer.N nor bert.addlayer.N tensors")
    vision_in = need(VISION_PROJECTION).shape[1]
    if angle_feature_size <= 0 or angle_feature_size % 4:
        raise UserError(f"--angle-feature-size must be a positive multiple of 4, got {angle_feature_size}")
    if vision_in <= angle_feature_size:
        raise UserError(
            f"vision projection takes {vision_in} features, not more than "
            f"--angle-feature-size {angle_feature_size}"
        )
    heads = num_attention_heads or max(1, hidden // 64)
    if hidden % heads:
        raise UserError(f"hidden size {hidden} is not a multiple of --num-attention-heads {heads}")
    return EncoderConfig(
        vocab_size=words.shape[0],
        hidden_size=hidden,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        text_layers=text_layers,
        cross_layers=cross_layers,
        image_feature_size=vision_in - angle_feature_size,
        angle_feature_size=angle_feature_size,
        max_text_length=need("bert.embeddings.position_embeddings.weight").shape[0],
        type_vocab_size=need("bert.embeddings.token_type_embeddings.weight").shape[0],
    )


def convert_state_dict(
    original: dict[str, torch.Tensor],
    num_attention_heads: int | None = None,
    angle_feature_size: int = 128,
    angle_layout: str = "block",
) -> tuple[PrevalentPretrainingModel, ConversionReport]:
    """Build a :class:`PrevalentPretrainingModel` holding the original weights.

    ``angle_layout`` is the orientation-feature layout the checkpoint's vision projection was
    trained on: ``block`` (the original pretraining) has its columns reordered to this package's
    interleaved layout; ``interleaved`` is copied as it is.
    """
    if angle_layout not in ANGLE_LAYOUTS:
        raise UserError(f"unknown angle layout {angle_layout!r}; choose one of {', '.join(ANGLE_LAYOUTS)}")
    config = infer_config(original, num_attention_heads, angle_feature_size)
    model = PrevalentPretrainingModel(config)
    own = model.state_dict()
    report = ConversionReport()
    new_state: dict[str, torch.Tensor] = {}
    words = {_normalise(k): v for k, v in original.items()}.get("bert.embeddings.word_embeddings.weight")
    for name, tensor in original.items():
        if not isinstance(tensor, torch.Tensor):
            continue
        plain = _normalise(name)
        if plain.startswith("next_action."):
            report.skipped[name] = (
                "fixed-slot next_action classifier; the candidate-scoring head starts fresh"
            )
            continue
        if plain == "mlmhead.predictions.decoder.weight":
            if words is None or not torch.equal(tensor, words):
                raise UserError(
                    "mlmhead decoder is not tied to the word embeddings; this converter expects tying"
                )
            report.skipped[name] = "tied to the word embeddings"
            continue
        if plain.endswith("position_ids"):
            report.skipped[name] = "buffer rebuilt at load"
            continue
        target = rename(name)
        if target is None:
            report.skipped[name] = "no counterpart in this encoder"
            continue
        if target not in own:
            raise UserError(f"original tensor {name} maps to {target}, which this encoder lacks")
        if own[target].shape != tensor.shape:
            raise UserError(
                f"original tensor {name} has shape {tuple(tensor.shape)}, "
                f"{target} expects {tuple(own[target].shape)}"
            )
        tensor = tensor.float()
        if plain == VISION_PROJECTION and angle_layout == "block":
            image = config.image_feature_size
            order = block_to_interleaved_columns(config.angle_feature_size)
            tensor = torch.cat([tensor[:, :image], tensor[:, image:][:, order]], dim=1)
            report.rearranged[name] = "orientation columns reordered from the block to the interleaved layout"
        new_state[target] = tensor
        report.mapped[name] = target
    missing = [k for k in own if k.startswith(("encoder.", "mlm_head.")) and k not in new_state]
    if missing:
        raise UserError(f"checkpoint lacks {len(missing)} encoder tensors, e.g. {missing[:3]}")
    model.load_state_dict(new_state, strict=False)
    return model, report


def read_original_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``torch.save`` file (bare, or under ``state_dict``/``model``) or safetensors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors come in many types; all mean "not a readable checkpoint"
        raise UserError(f"cannot read {path} as a PyTorch checkpoint: {error}") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} holds no state dict of tensors")
    return obj


@dataclass
class ConvertConfig:
    checkpoint: str = option(
        "", help="Original PREVALENT checkpoint (torch.save state dict or .safetensors)."
    )
    output: str = option(
        "runs/prevalent-converted",
        help="Bundle directory to write (an existing bundle there is never overwritten).",
    )
    vocab: str = option(
        "",
        help="BERT vocab.txt the original was trained with (bert-base-uncased); written as tokenizer.json.",
    )
    num_attention_heads: int = option(0, help="Attention heads (0: hidden_size / 64, as in BERT).")
    angle_feature_size: int = option(128, help="Width of the orientation feature inside the vision input.")
    angle_layout: str = option(
        "block",
        help="Orientation layout the checkpoint was trained on: block (the original pretraining: "
        "32 sin h | 32 cos h | 32 sin e | 32 cos e; reordered here) or interleaved (copied as is).",
        choices=ANGLE_LAYOUTS,
    )


def convert(cfg: ConvertConfig) -> int:
    if not cfg.checkpoint:
        raise UserError("--checkpoint is required")
    output = Path(cfg.output)
    if (output / WEIGHTS_FILE).exists():
        raise UserError(f"{output} already holds a bundle; choose another --output (nothing was overwritten)")
    original = read_original_checkpoint(cfg.checkpoint)
    model, report = convert_state_dict(
        original, cfg.num_attention_heads or None, cfg.angle_feature_size, cfg.angle_layout
    )
    tokenizer = InstructionTokenizer.from_bert_vocab(cfg.vocab) if cfg.vocab else None
    if tokenizer is not None and tokenizer.vocab_size != model.config.vocab_size:
        raise UserError(
            f"--vocab has {tokenizer.vocab_size} tokens, "
            f"the checkpoint's embeddings {model.config.vocab_size}"
        )
    extra = {"converted_from": str(cfg.checkpoint), "converted_angle_layout": cfg.angle_layout}
    save_bundle(output, model, tokenizer, extra=extra)
    print(f"prevalent-convert: {report.summary()}; wrote {output}")
    if tokenizer is None:
        print(
            "prevalent-convert: no --vocab given, so the bundle has no tokenizer.json; "
            "add one before fine-tuning"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``prevalent-convert --checkpoint FILE --output DIR [--vocab vocab.txt]``."""
    return cli.run(
        convert,
        ConvertConfig,
        argv,
        prog="prevalent-convert",
        description="Map an original PREVALENT checkpoint onto this package's encoder bundle.",
    )


if __name__ == "__main__":
    sys.exit(main())
