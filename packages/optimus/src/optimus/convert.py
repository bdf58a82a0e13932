"""``optimus-convert``: the original Optimus checkpoints as a model folder of this package.

The original training scripts (ChunyuanLI/Optimus, ``run_lm_vae_*.py``) save each half with
``save_pretrained`` of its old ``pytorch_transformers`` fork: ``checkpoint-encoder-N/`` and
``checkpoint-decoder-N/``, each a ``config.json`` and a pickled ``pytorch_model.bin``. Their
layouts, and how they map here:

* encoder, ``BertForLatentConnector``: BERT's own names at the top level (``embeddings.*``,
  ``encoder.layer.*``, ``pooler.dense.*``), the same as ``transformers``' ``BertModel``, plus
  ``linear.weight`` ``[2·latent, hidden]`` — pooled output → linear → ``chunk(2)`` = mean, log-variance,
  i.e. this package's ``latent_head`` unchanged;
* decoder, ``GPT2ForLatentConnector``: GPT-2's names (``transformer.wte``, ``transformer.h.*``,
  ``transformer.ln_f``, ``lm_head`` tied to ``wte``; Conv1D weights ``[in, out]`` as in
  ``transformers``), the causal-mask buffers ``transformer.h.*.attn.bias`` (dropped), and
  ``transformer.linear.weight`` ``[n_layer·hidden, latent]`` (memory: layer *i* attends to slice *i*,
  split into heads, as key **and** value of one extra past position; tokens then take positions
  1..T) and ``transformer.linear_emb.weight`` ``[hidden, latent]`` (added to every token's
  embedding) — ``memory_projection`` and ``embedding_projection`` here, which inject ``z`` the same way.

The checkpoints do not record which injections were trained (``latent_as_gpt_memory`` /
``latent_as_gpt_emb`` are constructor arguments, and both weights always exist); the original
reloads them with both on, the constructor's defaults, and so does this converter unless
``--no-memory-injection`` / ``--no-embedding-injection`` say otherwise.

Tokenizers are not in those folders either: the original used ``bert-base-cased`` and ``gpt2``,
and added ``<PAD>``, ``<BOS>``, ``<EOS>`` to GPT-2's in one ``add_special_tokens`` call (ids
50257-50259), then resized the decoder to 50260. The converter adds them the same way and checks
that the result has exactly the checkpoint's vocabulary; it resizes nothing. The tokenizers come
from ``--encoder-tokenizer`` / ``--decoder-tokenizer``, else from the checkpoint folder when it holds
tokenizer files, else from ``bert-base-cased`` / ``gpt2`` in the local Hugging Face cache (never a
network call).

``.bin`` files are read with ``torch.load(weights_only=True)`` only; the ``training_*_args.bin``
files beside them (pickled ``argparse`` namespaces) are not read at all.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, GPT2Config

from dgm_core import cli
from dgm_core.cli import option
from dgm_core.errors import UserError
from optimus.tokenization import SentenceCodec, load_tokenizer
from optimus.vae import OptimusConfig, OptimusVAE

WEIGHTS_FILE = "pytorch_model.bin"
CONFIG_FILE = "config.json"
ORIGINAL_ENCODER_TOKENIZER = "bert-base-cased"
ORIGINAL_DECODER_TOKENIZER = "gpt2"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")
PROVENANCE_FILE = "converted_from.json"

# Config fields of the old pytorch_transformers BertConfig / GPT2Config that carry over as they are.
_BERT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
    "layer_norm_eps",
)
_GPT2_FIELDS = (
    "vocab_size",
    "n_positions",
    "n_embd",
    "n_layer",
    "n_head",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "layer_norm_epsilon",
    "initializer_range",
)
_BERT_REQUIRED = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
)
_GPT2_REQUIRED = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")


@dataclass
class OriginalCheckpoint:
    """One half as the original saved it: its ``config.json`` and its tensors."""

    folder: Path
    config: dict[str, Any]
    weights: dict[str, torch.Tensor]


def read_original_checkpoint(folder: str | Path, half: str) -> OriginalCheckpoint:
    """``config.json`` and ``pytorch_model.bin`` of a ``checkpoint-{half}-*`` folder (tensors only)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{half} checkpoint folder not found: {folder}")
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    if missing:
        raise UserError(
            f"'{folder}' is not an original Optimus {half} checkpoint (checkpoint-{half}-N): "
            f"{' and '.join(missing)} missing"
        )
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{folder / CONFIG_FILE} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise UserError(f"{folder / CONFIG_FILE} is not a JSON object")
    try:
        weights = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(
            f"cannot read {folder / WEIGHTS_FILE} as tensors (torch.load with weights_only=True): {reason}"
        ) from None
    if not isinstance(weights, dict) or not all(torch.is_tensor(value) for value in weights.values()):
        raise UserError(f"{folder / WEIGHTS_FILE} is not a state dict of tensors")
    return OriginalCheckpoint(folder, config, weights)


def _require(checkpoint: OriginalCheckpoint, half: str, keys: tuple[str, ...], what: str, other: str) -> None:
    """One-line error naming the tensors a half lacks (and saying so when it is the other half)."""
    absent = [key for key in keys if key not in checkpoint.weights]
    if absent:
        other_half = "decoder" if half == "encoder" else "encoder"
        hint = f"; it looks like a {other_half} checkpoint" if other in checkpoint.weights else ""
        raise UserError(
            f"{checkpoint.folder / WEIGHTS_FILE} has no {', '.join(repr(k) for k in absent)} ({what}){hint}"
        )


def _config_values(
    checkpoint: OriginalCheckpoint, fields: tuple[str, ...], required: tuple[str, ...]
) -> dict:
    absent = [name for name in required if name not in checkpoint.config]
    if absent:
        raise UserError(f"{checkpoint.folder / CONFIG_FILE} lacks {', '.join(absent)}")
    return {name: checkpoint.config[name] for name in fields if name in checkpoint.config}


def latent_size_of(
    encoder: OriginalCheckpoint, decoder: OriginalCheckpoint, memory: bool, embedding: bool
) -> int:
    """The latent size, read from the shapes of the projections (and checked against each other)."""
    head = encoder.weights["linear.weight"]
    if head.dim() != 2 or head.shape[0] % 2:
        raise UserError(
            f"{encoder.folder}: 'linear.weight' has shape {tuple(head.shape)}, not [2·latent, hidden]"
        )
    latent = head.shape[0] // 2
    sizes = {"encoder 'linear.weight'": latent}
    if memory:
        sizes["decoder 'transformer.linear.weight'"] = decoder.weights["transformer.linear.weight"].shape[1]
    if embedding:
        sizes["decoder 'transformer.linear_emb.weight'"] = decoder.weights[
            "transformer.linear_emb.weight"
        ].shape[1]
    if "latent_size" in decoder.config:
        sizes["decoder config latent_size"] = decoder.config["latent_size"]
    if len(set(sizes.values())) != 1:
        described = ", ".join(f"{name} {size}" for name, size in sizes.items())
        raise UserError(f"the checkpoints disagree on the latent size ({described}): not one Optimus model")
    return latent


def _default_tokenizer(folder: Path, fallback: str) -> str:
    """The checkpoint folder when it holds tokenizer files (some runs saved them there), else ``fallback``."""
    return str(folder) if any((folder / name).is_file() for name in TOKENIZER_FILES) else fallback


def convert(
    encoder_dir: str | Path,
    decoder_dir: str | Path,
    encoder_tokenizer: str = "",
    decoder_tokenizer: str = "",
    memory_injection: bool = True,
    embedding_injection: bool = True,
    block_size: int = 0,
) -> tuple[OptimusVAE, SentenceCodec, dict]:
    """The :class:`OptimusVAE` and tokenizers of an original checkpoint pair, and a provenance record.

    Both injections are on by default, as the original reloads every checkpoint.
    """
    encoder = read_original_checkpoint(encoder_dir, "encoder")
    decoder = read_original_checkpoint(decoder_dir, "decoder")
    _require(
        encoder,
        "encoder",
        ("linear.weight", "embeddings.word_embeddings.weight", "pooler.dense.weight"),
        "BertForLatentConnector's latent projection, embeddings and pooler",
        other="transformer.wte.weight",
    )
    needed = ["transformer.wte.weight", "transformer.wpe.weight"]
    needed += ["transformer.linear.weight"] if memory_injection else []
    needed += ["transformer.linear_emb.weight"] if embedding_injection else []
    _require(
        decoder,
        "decoder",
        tuple(needed),
        "GPT2ForLatentConnector's embeddings and latent projections",
        other="linear.weight",
    )
    latent = latent_size_of(encoder, decoder, memory_injection, embedding_injection)

    enc_tok_name = encoder_tokenizer or _default_tokenizer(encoder.folder, ORIGINAL_ENCODER_TOKENIZER)
    dec_tok_name = decoder_tokenizer or _default_tokenizer(decoder.folder, ORIGINAL_DECODER_TOKENIZER)
    # SentenceCodec adds <PAD> <BOS> <EOS> to GPT-2's tokenizer in the original's order.
    codec = SentenceCodec(load_tokenizer(enc_tok_name, "encoder"), load_tokenizer(dec_tok_name, "decoder"))
    bert = _config_values(encoder, _BERT_FIELDS, _BERT_REQUIRED)
    gpt2 = _config_values(decoder, _GPT2_FIELDS, _GPT2_REQUIRED)
    if codec.decoder_vocab_size != gpt2["vocab_size"]:
        raise UserError(
            f"the decoder tokenizer '{dec_tok_name}' has {codec.decoder_vocab_size} tokens with "
            f"<PAD> <BOS> <EOS>, the checkpoint embeds {gpt2['vocab_size']}: pass the tokenizer it was "
            "trained with (--decoder-tokenizer; the original's is gpt2)"
        )
    if codec.encoder_vocab_size > bert["vocab_size"]:
        raise UserError(
            f"the encoder tokenizer '{enc_tok_name}' has {codec.encoder_vocab_size} tokens, the "
            f"checkpoint embeds {bert['vocab_size']}: pass the tokenizer it was trained with "
            "(--encoder-tokenizer; the original's is bert-base-cased)"
        )
    encoder_config = BertConfig(**bert, pad_token_id=codec.encoder_pad_id)
    decoder_config = GPT2Config(
        **gpt2,
        # The original's GPT-2 uses the tanh approximation of GELU, transformers' "gelu_new".
        activation_function="gelu_new",
        bos_token_id=codec.bos_id,
        eos_token_id=codec.eos_id,
        pad_token_id=codec.decoder_pad_id,
        tie_word_embeddings=True,
    )
    config = OptimusConfig(
        latent,
        memory_injection,
        embedding_injection,
        encoder_config.to_dict(),
        decoder_config.to_dict(),
        block_size=block_size,
    )
    model = OptimusVAE(config)
    _load_weights(model, encoder, decoder, memory_injection, embedding_injection)
    model.eval()
    provenance = {
        "encoder": str(encoder.folder.resolve()),
        "decoder": str(decoder.folder.resolve()),
        "encoder_tokenizer": enc_tok_name,
        "decoder_tokenizer": dec_tok_name,
        "latent_size": latent,
        "memory_injection": memory_injection,
        "embedding_injection": embedding_injection,
    }
    return model, codec, provenance


def _renamed_weights(
    encoder: OriginalCheckpoint, decoder: OriginalCheckpoint, memory: bool, embedding: bool
) -> dict[str, torch.Tensor]:
    """The original's tensors under this package's names (see the module docstring)."""
    state: dict[str, torch.Tensor] = {}
    for key, tensor in encoder.weights.items():
        state["latent_head.weight" if key == "linear.weight" else f"encoder.{key}"] = tensor
    for key, tensor in decoder.weights.items():
        if key == "transformer.linear.weight":
            if memory:
                state["memory_projection.weight"] = tensor
        elif key == "transformer.linear_emb.weight":
            if embedding:
                state["embedding_projection.weight"] = tensor
        elif key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # GPT-2's causal-mask buffers, rebuilt by transformers
        elif key != "lm_head.weight":
            state[f"decoder.{key}"] = tensor
    # The head is tied to the input embedding (the original re-ties it when it loads).
    state["decoder.lm_head.weight"] = decoder.weights["transformer.wte.weight"]
    return state


def _load_weights(
    model: OptimusVAE, encoder: OriginalCheckpoint, decoder: OriginalCheckpoint, memory: bool, embedding: bool
) -> None:
    state = _renamed_weights(encoder, decoder, memory, embedding)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shapes that do not fit the configs
        reason = " ".join(str(error).split())
        raise UserError(f"the checkpoint's tensors do not fit its config: {reason[:300]}") from None
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:4])}{' …' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:4])}{' …' if len(unexpected) > 4 else ''}")
        raise UserError(f"the checkpoints do not match an Optimus model: {'; '.join(parts)}")
    model.decoder.tie_weights()


@dataclass
class ConvertConfig:
    """Options of ``optimus-convert``."""

    encoder: str = option(
        "", help="The original's checkpoint-encoder-N folder (config.json, pytorch_model.bin)."
    )
    decoder: str = option(
        "", help="The original's checkpoint-decoder-N folder (config.json, pytorch_model.bin)."
    )
    out: str = option(
        "", help="Model folder to write (read by from_pretrained, optimus-eval/-generate/-classify)."
    )
    encoder_tokenizer: str = option(
        "",
        help="BERT tokenizer folder or cached name; empty: the encoder folder if it has tokenizer files, "
        "else bert-base-cased.",
    )
    decoder_tokenizer: str = option(
        "",
        help="GPT-2 tokenizer folder or cached name (<PAD> <BOS> <EOS> are added as the original did); "
        "empty: the decoder folder if it has tokenizer files, else gpt2.",
    )
    memory_injection: bool = option(
        True, help="z as an extra attended key/value (the original's latent_as_gpt_memory)."
    )
    embedding_injection: bool = option(
        True, help="z added to the token embeddings (the original's latent_as_gpt_emb)."
    )
    block_size: int = option(
        0, help="Block size recorded in the model (0: the most its positions allow, 512 for BERT-base)."
    )


def run_convert(cfg: ConvertConfig) -> Path:
    for name in ("encoder", "decoder", "out"):
        if not getattr(cfg, name):
            raise UserError(f"--{name} is required")
    model, codec, provenance = convert(
        cfg.encoder,
        cfg.decoder,
        cfg.encoder_tokenizer,
        cfg.decoder_tokenizer,
        cfg.memory_injection,
        cfg.embedding_injection,
        cfg.block_size,
    )
    extra = {**codec.as_extra_files(), PROVENANCE_FILE: json.dumps(provenance, indent=2)}
    folder = model.save_pretrained(cfg.out, extra_files=extra)
    print(
        f"wrote {folder}: latent {model.latent_size}, memory injection {model.config.memory_injection}, "
        f"embedding injection {model.config.embedding_injection}, block size {model.block_size}, "
        f"vocabularies {codec.encoder_vocab_size} / {codec.decoder_vocab_size}"
    )
    return folder


def main(argv: list[str] | None = None) -> int:
    return cli.run(
        run_convert,
        ConvertConfig,
        argv,
        prog="optimus-convert",
        description="Convert the original Optimus checkpoint-encoder-N / checkpoint-decoder-N folders "
        "into a model folder.",
    )


if __name__ == "__main__":
    sys.exit(main())
