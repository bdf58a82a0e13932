"""A fresh VAE to train: its tokenizers, its two halves, and the optimizer's parameter groups.

Each half is either a pretrained checkpoint (``--encoder`` BERT / ``--decoder`` GPT-2: a local
folder or a name already in the local Hugging Face cache; never a network call) or a tiny one
built from scratch, whose tokenizer is then trained on the training corpus.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from transformers import AutoConfig, BertModel, GPT2LMHeadModel

from dgm_core.errors import UserError
from dgm_core.runtime.files import atomic_directory
from optimus.tokenization import (
    SentenceCodec,
    load_tokenizer,
    train_decoder_tokenizer,
    train_encoder_tokenizer,
)
from optimus.vae import OptimusConfig, OptimusVAE, tiny_decoder_config, tiny_encoder_config

SCRATCH_HEAD_WIDTH = 32  # from-scratch halves get one attention head per 32 channels


@dataclass(frozen=True)
class ModelOptions:
    """Everything that shapes a fresh model and its tokenizers (``optimus-train``'s model options)."""

    encoder: str = ""  # pretrained BERT; empty: a tiny one from scratch
    decoder: str = ""  # pretrained GPT-2; empty: a tiny one from scratch
    latent_size: int = 32
    memory_injection: bool = True
    embedding_injection: bool = True
    scratch_hidden: int = 128
    scratch_layers: int = 2
    vocab_size: int = 1000  # of tokenizers trained from scratch
    block_size: int = 64  # longest token sequence

    @classmethod
    def from_config(cls, cfg: Any) -> ModelOptions:
        """The options of the same names on ``cfg`` (a CLI config)."""
        return cls(**{field.name: getattr(cfg, field.name) for field in fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_codec(options: ModelOptions, training_texts: Callable[[], list[str]]) -> SentenceCodec:
    """Tokenizers: the pretrained halves' own, or trained on ``training_texts()`` (called only then)."""
    texts = training_texts() if not (options.encoder and options.decoder) else []
    encoder_tokenizer = (
        load_tokenizer(options.encoder, "encoder")
        if options.encoder
        else train_encoder_tokenizer(texts, options.vocab_size)
    )
    decoder_tokenizer = (
        load_tokenizer(options.decoder, "decoder")
        if options.decoder
        else train_decoder_tokenizer(texts, options.vocab_size)
    )
    return SentenceCodec(encoder_tokenizer, decoder_tokenizer)


def open_or_build_codec(
    folder: str | Path, options: ModelOptions, training_texts: Callable[[], list[str]]
) -> SentenceCodec:
    """The tokenizers saved in ``folder``, built and saved there first when it has none.

    Every caller reads them back from ``folder``, so all processes of a run, and every resume of
    it, use the same token ids. The folder is written atomically: a crash never leaves a half.
    """
    folder = Path(folder)
    if not folder.is_dir():
        with atomic_directory(folder) as tmp:
            build_codec(options, training_texts).save_pretrained(tmp)
    return SentenceCodec.from_pretrained(folder)


def _load_pretrained_half(kind: str, name: str) -> BertModel | GPT2LMHeadModel:
    model_class = BertModel if kind == "encoder" else GPT2LMHeadModel
    expected = "bert" if kind == "encoder" else "gpt2"
    try:
        config = AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"cannot load the {kind} '{name}' offline (a local folder or the local HF cache): {exc}"
        ) from None
    if config.model_type != expected:
        raise UserError(
            f"the {kind} '{name}' is a '{config.model_type}' model; Optimus needs a {expected} {kind}"
        )
    try:
        return model_class.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the {kind} weights from '{name}': {exc}") from None


def _encoder(options: ModelOptions, codec: SentenceCodec) -> BertModel:
    if options.encoder:
        encoder = _load_pretrained_half("encoder", options.encoder)
        if codec.encoder_vocab_size > encoder.config.vocab_size:
            raise UserError(
                f"the encoder tokenizer has {codec.encoder_vocab_size} tokens but '{options.encoder}' "
                f"embeds {encoder.config.vocab_size}; the tokenizer does not match the model"
            )
        return encoder
    width = options.scratch_hidden
    return BertModel(
        tiny_encoder_config(
            codec.encoder_vocab_size,
            codec.encoder_pad_id,
            hidden_size=width,
            num_hidden_layers=options.scratch_layers,
            num_attention_heads=max(1, width // SCRATCH_HEAD_WIDTH),
            intermediate_size=4 * width,
            max_position_embeddings=max(128, options.block_size),
        )
    )


def _decoder(options: ModelOptions, codec: SentenceCodec) -> GPT2LMHeadModel:
    if options.decoder:
        decoder = _load_pretrained_half("decoder", options.decoder)
        if codec.decoder_vocab_size != decoder.config.vocab_size:
            # Optimus's PAD/BOS/EOS were appended to the tokenizer: grow the (tied) embedding to match.
            decoder.resize_token_embeddings(codec.decoder_vocab_size)
        decoder.config.bos_token_id = codec.bos_id
        decoder.config.eos_token_id = codec.eos_id
        decoder.config.pad_token_id = codec.decoder_pad_id
        if options.block_size > decoder.config.n_positions - 1:  # one position is the memory slot
            raise UserError(
                f"block_size {options.block_size} exceeds the decoder's "
                f"{decoder.config.n_positions - 1} positions"
            )
        return decoder
    width = options.scratch_hidden
    return GPT2LMHeadModel(
        tiny_decoder_config(
            codec.decoder_vocab_size,
            codec.bos_id,
            codec.eos_id,
            codec.decoder_pad_id,
            n_embd=width,
            n_layer=options.scratch_layers,
            n_head=max(1, width // SCRATCH_HEAD_WIDTH),
            n_positions=max(128, options.block_size + 1),
        )
    )


def build_model(options: ModelOptions, codec: SentenceCodec) -> OptimusVAE:
    """The VAE: pretrained halves where given, tiny from-scratch ones otherwise."""
    encoder = _encoder(options, codec)
    decoder = _decoder(options, codec)
    config = OptimusConfig(options.latent_size, options.memory_injection, options.embedding_injection)
    return OptimusVAE(config, encoder, decoder)


def parameter_groups(model: OptimusVAE, weight_decay: float, encoder_lr: float) -> list[dict]:
    """AdamW groups: no decay on biases and LayerNorms; the BERT encoder may have its own learning rate."""
    no_decay = ("bias", "LayerNorm.weight", "ln_")
    groups: dict[tuple[bool, bool], list] = {}
    for name, parameter in model.named_parameters():
        key = (name.startswith("encoder."), any(k in name for k in no_decay))
        groups.setdefault(key, []).append(parameter)
    return [
        {
            "params": params,
            "weight_decay": 0.0 if decay_free else weight_decay,
            **({"lr": encoder_lr} if is_encoder else {}),
        }
        for (is_encoder, decay_free), params in sorted(groups.items())
    ]
