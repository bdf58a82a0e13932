"""The VAE a run trains: its tokenizers, its two halves, and the optimizer's parameter groups.

Each half is either a pretrained checkpoint (``--encoder`` BERT / ``--decoder`` GPT-2: a local
folder or a name already in the local Hugging Face cache; never a network call) or a tiny one
built from scratch, whose tokenizer is then trained on the training corpus. Or the whole VAE
comes from a saved or converted Optimus (``--init-from``): encoder, decoder, latent head,
injections and tokenizers as they are there.

A run keeps its tokenizers in ``<run_dir>/tokenizers`` with a record of what they were built
from (``source.json``). Another source — a different corpus for from-scratch tokenizers, other
pretrained halves — rebuilds them when the run starts fresh and is refused when it resumes (its
checkpoints need the old token ids); tokenizers are never saved from an empty read.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from transformers import AutoConfig, BertModel, GPT2LMHeadModel

from dgm_core.errors import UserError
from dgm_core.pretrained import read_pretrained_config
from dgm_core.runtime.files import atomic_directory, write_json_atomic
from optimus.saved_model import resolve_model_folder
from optimus.tokenization import (
    SentenceCodec,
    load_tokenizer,
    train_decoder_tokenizer,
    train_encoder_tokenizer,
)
from optimus.vae import OptimusConfig, OptimusVAE, tiny_decoder_config, tiny_encoder_config

log = logging.getLogger("optimus.building")

SCRATCH_HEAD_WIDTH = 32  # from-scratch halves get one attention head per 32 channels
TOKENIZER_SOURCE_FILE = "source.json"


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
    encoder_pooling: str = "pooler"  # what the latent head reads (OptimusConfig.encoder_pooling)
    unit_variance: bool = False  # the original's deterministic connect (OptimusConfig.unit_variance)
    init_from: str = ""  # a saved or converted Optimus model folder to start from; empty: build one

    @classmethod
    def from_config(cls, cfg: Any) -> ModelOptions:
        """The options of the same names on ``cfg`` (a CLI config); with ``init_from``, the model's own.

        A saved model fixes its encoder, decoder, latent size, injections and tokenizers. Options
        that would change them are refused when set to something else than the model has; left
        at their defaults they take the model's values, so the run records what it trains.
        """
        options = cls(**{field.name: getattr(cfg, field.name) for field in fields(cls)})
        return options.resolved_init_from() if options.init_from else options

    def resolved_init_from(self) -> ModelOptions:
        folder = resolve_model_folder(self.init_from)
        config = read_pretrained_config(folder)
        if config.get("model_type") != "optimus":
            raise UserError(
                f"--init-from '{folder}' is not an Optimus model folder (model_type is not optimus)"
            )
        defaults = ModelOptions()
        for name in ("encoder", "decoder", "scratch_hidden", "scratch_layers", "vocab_size"):
            if getattr(self, name) != getattr(defaults, name):
                flag = "--" + name.replace("_", "-")
                raise UserError(
                    f"--init-from takes the encoder, decoder and tokenizers of '{folder}': drop {flag}"
                )
        taken = {
            "latent_size": config.get("latent_size", defaults.latent_size),
            "memory_injection": config.get("memory_injection", defaults.memory_injection),
            "embedding_injection": config.get("embedding_injection", defaults.embedding_injection),
            "encoder_pooling": config.get("encoder_pooling", defaults.encoder_pooling),
            "unit_variance": config.get("unit_variance", defaults.unit_variance),
        }
        for name, model_value in taken.items():
            value = getattr(self, name)
            if value != getattr(defaults, name) and value != model_value:
                raise UserError(
                    f"--{name.replace('_', '-')} {value} conflicts with --init-from '{folder}', "
                    f"whose model has {model_value}"
                )
        return replace(self, init_from=str(folder), **taken)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_codec(options: ModelOptions, training_texts: Callable[[], list[str]]) -> SentenceCodec:
    """Tokenizers: an ``init_from`` model's, the pretrained halves' own, or trained on ``training_texts()``.

    ``training_texts`` is called only when a half is built from scratch; an empty result is a
    one-line error (tokenizers trained on nothing would be saved and then reused).
    """
    if options.init_from:
        return SentenceCodec.from_pretrained(options.init_from)
    return _build_from(options, _tokenizer_texts(options, training_texts))


def _build_from(options: ModelOptions, texts: list[str]) -> SentenceCodec:
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


def _needs_training_texts(options: ModelOptions) -> bool:
    return not options.init_from and not (options.encoder and options.decoder)


def _tokenizer_texts(options: ModelOptions, training_texts: Callable[[], list[str]]) -> list[str]:
    if not _needs_training_texts(options):
        return []
    texts = training_texts()
    if not texts:
        raise UserError("no sentences to train the tokenizers on (the training data is empty)")
    return texts


def _texts_digest(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8", errors="replace") + b"\n")
    return digest.hexdigest()[:16]


def _models_behind(options: ModelOptions) -> dict[str, Any]:
    """What a tokenizer source is besides data: a model folder, pretrained names, a vocabulary size."""
    if options.init_from:
        return {"init_from": options.init_from}
    behind: dict[str, Any] = {"encoder": options.encoder, "decoder": options.decoder}
    if _needs_training_texts(options):
        behind["vocab_size"] = options.vocab_size
    return behind


def open_or_build_codec(
    folder: str | Path,
    options: ModelOptions,
    training_texts: Callable[[], list[str]],
    allow_rebuild: bool = True,
    corpus_key: str = "",
) -> SentenceCodec:
    """The tokenizers saved in ``folder``, built and saved there first when it has none (or others).

    Every caller reads them back from ``folder``, so all processes of a run, and every resume of
    it, use the same token ids. ``folder/source.json`` records what they were built from: the
    models or names behind them and, for tokenizers trained from scratch, the corpus
    (``corpus_key``, cheap: file names, sizes and times) and a hash of the sentences they were
    trained on. A different corpus key makes it read ``training_texts()`` and compare the hash
    (a copied or touched file with the same sentences keeps its tokenizers). When the source
    differs the tokenizers are rebuilt if ``allow_rebuild`` (a fresh run), else refused (the
    checkpoints of a resumed run need the old ids). A folder from before the record existed is
    reused with a warning. The folder is written atomically: a crash, or a read that fails or
    finds nothing, never leaves a half or an empty one.
    """
    folder = Path(folder)
    behind = _models_behind(options)
    record_path = folder / TOKENIZER_SOURCE_FILE
    texts: list[str] | None = None
    if folder.is_dir():
        if not record_path.is_file():
            log.warning(
                "%s has no %s (an older run): reusing its tokenizers unchecked", folder, record_path.name
            )
            return SentenceCodec.from_pretrained(folder)
        record = json.loads(record_path.read_text())
        same = record.get("models") == behind
        if same and _needs_training_texts(options) and record.get("corpus") != corpus_key:
            texts = _tokenizer_texts(options, training_texts)
            same = record.get("texts_sha256") == _texts_digest(texts)
            if same:  # the same sentences under another key (a copied or touched file): remember it
                write_json_atomic(record_path, {**record, "corpus": corpus_key})
        if same:
            return SentenceCodec.from_pretrained(folder)
        if not allow_rebuild:
            raise UserError(
                f"the tokenizers in {folder} were built from other data or models than this run's "
                f"(see {record_path}); the checkpoints being resumed need them: "
                "use a new --run-dir, or the original data"
            )
        log.warning("the tokenizers in %s were built from other data or models: rebuilding them", folder)
    if texts is None:
        texts = _tokenizer_texts(options, training_texts)
    record = {"models": behind}
    if _needs_training_texts(options):
        record.update(corpus=corpus_key, texts=len(texts), texts_sha256=_texts_digest(texts))
    with atomic_directory(folder) as tmp:
        build_codec(options, lambda: texts).save_pretrained(tmp)
        (tmp / TOKENIZER_SOURCE_FILE).write_text(json.dumps(record, indent=2))
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
    """The VAE: the ``init_from`` model, else pretrained halves where given and tiny new ones elsewhere."""
    if options.init_from:
        model = OptimusVAE.from_pretrained(options.init_from)
        if options.block_size > model.max_block_size:
            raise UserError(
                f"block_size {options.block_size} exceeds what '{options.init_from}' can position "
                f"({model.max_block_size} tokens)"
            )
        model.config.block_size = options.block_size
        return model
    encoder = _encoder(options, codec)
    decoder = _decoder(options, codec)
    config = OptimusConfig(
        options.latent_size,
        options.memory_injection,
        options.embedding_injection,
        block_size=options.block_size,
        encoder_pooling=options.encoder_pooling,
        unit_variance=options.unit_variance,
    )
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
