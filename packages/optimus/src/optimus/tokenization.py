"""Tokenizers for the two halves of the VAE and the sentence layouts they feed.

The encoder reads ``[CLS] sentence [SEP]`` (BERT's layout); the decoder reads and predicts
``<BOS> sentence <EOS>`` with a space prefixed to the sentence, as the reference does for GPT-2's
byte-level BPE. For pretrained GPT-2 tokenizers the PAD/BOS/EOS tokens are added as new special
tokens (GPT-2 ships only ``<|endoftext|>``); for models built from scratch both tokenizers are
trained on the training corpus with the ``tokenizers`` library (byte-level BPE for GPT-2,
WordPiece for BERT).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from dgm_core.errors import UserError

DECODER_SPECIAL_TOKENS = {"pad_token": "<PAD>", "bos_token": "<BOS>", "eos_token": "<EOS>"}
ENCODER_SUBFOLDER = "encoder_tokenizer"
DECODER_SUBFOLDER = "decoder_tokenizer"


def train_decoder_tokenizer(texts: Iterable[str], vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2's scheme) with ``<PAD> <BOS> <EOS>`` trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(DECODER_SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((" " + t for t in texts), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **DECODER_SPECIAL_TOKENS)


BERT_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CONTINUATION_PREFIX = "##"  # WordPiece's mark of a piece that continues a word


def wordpiece_alphabet(texts: Iterable[str]) -> list[str]:
    """The characters a WordPiece vocabulary needs, in a fixed order: word-initial ones, then ``##`` ones.

    Both lists are sorted by code point, so the order depends on the characters alone.
    """
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    initial: set[str] = set()
    continuing: set[str] = set()
    for text in texts:
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)):
            initial.add(word[0])
            continuing.update(word[1:])
    return sorted(initial) + [CONTINUATION_PREFIX + c for c in sorted(continuing)]


def train_encoder_tokenizer(texts: Iterable[str], vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    """A lower-casing WordPiece tokenizer (BERT's scheme) trained on ``texts``; deterministic.

    The ``tokenizers`` WordPiece trainer gives the ``##`` continuation characters their ids in
    hash-map order, which changes from one training to the next, and its merges break ties by
    those ids, so even the vocabulary itself varied. Here the whole alphabet is placed in the
    vocabulary first, in code-point order (passed to the trainer as leading tokens), so every id
    and every tie-break is fixed by the data. The trained vocabulary is then loaded into a fresh
    WordPiece model, so those leading characters are ordinary vocabulary entries, not special tokens.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    texts = list(texts)

    def bert_pipeline(model) -> Tokenizer:
        tokenizer = Tokenizer(model)
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix=CONTINUATION_PREFIX)
        return tokenizer

    scratch = bert_pipeline(models.WordPiece(unk_token="[UNK]"))
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        special_tokens=BERT_SPECIAL_TOKENS + wordpiece_alphabet(texts),
        continuing_subword_prefix=CONTINUATION_PREFIX,
        show_progress=False,
    )
    scratch.train_from_iterator(texts, trainer=trainer)
    vocab = scratch.get_vocab(with_added_tokens=False)
    tokenizer = bert_pipeline(
        models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix=CONTINUATION_PREFIX)
    )
    tokenizer.add_special_tokens(BERT_SPECIAL_TOKENS)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def load_tokenizer(name_or_path: str | Path, what: str) -> PreTrainedTokenizerBase:
    """A tokenizer from a local folder or the local HF cache; never a network call."""
    try:
        return AutoTokenizer.from_pretrained(str(name_or_path), local_files_only=True)
    except (OSError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]  # one line on the terminal
        raise UserError(
            f"cannot load the {what} tokenizer from '{name_or_path}' offline "
            f"(a folder with tokenizer files or a model in the local Hugging Face cache): {reason}"
        ) from None


def prepare_decoder_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Add Optimus's PAD/BOS/EOS special tokens where a (GPT-2) tokenizer lacks them.

    They are added in the original's order — one ``add_special_tokens`` call with ``<PAD>``,
    ``<BOS>``, ``<EOS>`` — so GPT-2's 50257 tokens are followed by ``<PAD>`` 50257, ``<BOS>``
    50258 and ``<EOS>`` 50259, the ids of the original's checkpoints and pre-tokenized shards.
    """
    missing = {
        key: token
        for key, token in DECODER_SPECIAL_TOKENS.items()
        if getattr(tokenizer, key, None) in (None, "<|endoftext|>")
    }
    if missing:
        tokenizer.add_special_tokens(missing)
    return tokenizer


def _batch_ids(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids of each text without special tokens: ``tokenizer(texts)["input_ids"]``, faster.

    A fast tokenizer's Rust backend is called directly when it has no truncation or padding of
    its own (then the ids are the same): the Python ``BatchEncoding`` around it doubles the cost.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None) if tokenizer.is_fast else None
    if backend is not None and backend.truncation is None and backend.padding is None:
        return [encoding.ids for encoding in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


@dataclass
class EncodedSentence:
    """Token ids of one sentence for both halves; ``truncated`` when either hit its block size."""

    encoder_ids: list[int]
    decoder_ids: list[int]
    truncated: bool


class SentenceCodec:
    """Turns sentences into encoder/decoder token ids and decoder ids back into text."""

    def __init__(
        self, encoder_tokenizer: PreTrainedTokenizerBase, decoder_tokenizer: PreTrainedTokenizerBase
    ):
        self.encoder_tokenizer = encoder_tokenizer
        self.decoder_tokenizer = prepare_decoder_tokenizer(decoder_tokenizer)
        for key in ("cls_token_id", "sep_token_id", "pad_token_id"):
            if getattr(encoder_tokenizer, key, None) is None:
                raise UserError(
                    f"the encoder tokenizer has no {key.removesuffix('_id')} token; is it a BERT tokenizer?"
                )

    # -- special ids -------------------------------------------------------------------------
    @property
    def bos_id(self) -> int:
        return self.decoder_tokenizer.bos_token_id

    @property
    def eos_id(self) -> int:
        return self.decoder_tokenizer.eos_token_id

    @property
    def decoder_pad_id(self) -> int:
        return self.decoder_tokenizer.pad_token_id

    @property
    def encoder_pad_id(self) -> int:
        return self.encoder_tokenizer.pad_token_id

    @property
    def encoder_vocab_size(self) -> int:
        return len(self.encoder_tokenizer)

    @property
    def decoder_vocab_size(self) -> int:
        return len(self.decoder_tokenizer)

    # -- encoding ----------------------------------------------------------------------------
    def encode(self, text: str, block_size: int) -> EncodedSentence:
        """``[CLS] text [SEP]`` and ``<BOS> text <EOS>``, each cut to ``block_size`` tokens.

        A cut decoder sequence loses its ``<EOS>`` (the sentence did not end there) and a cut
        encoder sequence keeps its ``[SEP]``.
        """
        enc_body = self.encoder_tokenizer.encode(text, add_special_tokens=False)
        dec_body = self.decoder_tokenizer.encode(" " + text.strip(), add_special_tokens=False)
        return self._framed(enc_body, dec_body, block_size, *self._special_ids())

    def encode_many(self, texts: Sequence[str], block_size: int) -> list[EncodedSentence]:
        """:meth:`encode` of each text, tokenized as one batch.

        Same ids as one :meth:`encode` per text; a fast tokenizer encodes a batch on all cores,
        which is what makes tokenizing a gigabyte corpus take minutes rather than an hour.
        """
        if not texts:
            return []
        enc_bodies = _batch_ids(self.encoder_tokenizer, list(texts))
        dec_bodies = _batch_ids(self.decoder_tokenizer, [" " + text.strip() for text in texts])
        # The special ids once per batch: each lookup goes through the tokenizer's __getattr__.
        specials = self._special_ids()
        return [
            self._framed(enc_body, dec_body, block_size, *specials)
            for enc_body, dec_body in zip(enc_bodies, dec_bodies, strict=True)
        ]

    def _special_ids(self) -> tuple[int, int, int, int]:
        """``[CLS]``, ``[SEP]``, ``<BOS>``, ``<EOS>``."""
        return (
            self.encoder_tokenizer.cls_token_id,
            self.encoder_tokenizer.sep_token_id,
            self.bos_id,
            self.eos_id,
        )

    @staticmethod
    def _framed(
        enc_body: list[int], dec_body: list[int], block_size: int, cls: int, sep: int, bos: int, eos: int
    ) -> EncodedSentence:
        truncated = len(enc_body) + 2 > block_size or len(dec_body) + 2 > block_size
        enc = [cls, *enc_body[: block_size - 2], sep]
        if len(dec_body) + 2 > block_size:
            dec = [bos, *dec_body[: block_size - 1]]
        else:
            dec = [bos, *dec_body, eos]
        return EncodedSentence(enc, dec, truncated)

    def decode(self, decoder_ids: Iterable[int]) -> str:
        """Text of a decoder sequence, stopping at ``<EOS>`` and dropping special tokens."""
        ids = []
        for token in decoder_ids:
            token = int(token)
            if token == self.eos_id:
                break
            if token in (self.bos_id, self.decoder_pad_id):
                continue
            ids.append(token)
        return self.decoder_tokenizer.decode(ids, skip_special_tokens=True).strip()

    # -- persistence -------------------------------------------------------------------------
    def as_extra_files(self) -> dict[str, Callable[[Path], object]]:
        """The two tokenizer folders as writers, for saving inside a model folder in one atomic step."""
        return {
            ENCODER_SUBFOLDER: lambda path: self.encoder_tokenizer.save_pretrained(str(path)),
            DECODER_SUBFOLDER: lambda path: self.decoder_tokenizer.save_pretrained(str(path)),
        }

    def save_pretrained(self, folder: str | Path) -> None:
        for name, write in self.as_extra_files().items():
            write(Path(folder) / name)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> SentenceCodec:
        folder = Path(folder)
        return cls(
            load_tokenizer(folder / ENCODER_SUBFOLDER, "encoder"),
            load_tokenizer(folder / DECODER_SUBFOLDER, "decoder"),
        )

    @classmethod
    def train(
        cls, texts: list[str], encoder_vocab_size: int = 1000, decoder_vocab_size: int = 1000
    ) -> SentenceCodec:
        """Both tokenizers trained on ``texts`` (the from-scratch path)."""
        return cls(
            train_encoder_tokenizer(texts, encoder_vocab_size),
            train_decoder_tokenizer(texts, decoder_vocab_size),
        )
