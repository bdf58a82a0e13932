"""A BERT-style WordPiece tokenizer for instructions and dialogs.

The embedded default trains one from scratch on the training instructions with the
``tokenizers`` library (BERT normalisation: lower-case, accents stripped; BERT
pre-tokenisation; ``[CLS] text [SEP]``). With ``--bert PATH`` the vocabulary of a local BERT
checkpoint (``vocab.txt``) is used instead, so its embeddings line up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from dgm_core.errors import UserError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
#: WordPiece's mark of a piece that continues a word (BERT's)
CONTINUATION = "##"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
#: which end of a too-long text loses word pieces (the names of Hugging Face's ``truncation_side``)
TRUNCATION_SIDES = ("right", "left")


@dataclass
class TokenizedBatch:
    """Padded token ids (B, L), their validity mask (B, L) and how many texts were truncated."""

    input_ids: torch.Tensor
    text_mask: torch.Tensor
    truncated: int


class InstructionTokenizer:
    """WordPiece tokenizer with the ids the encoder and the masking rule need."""

    def __init__(self, tokenizer: Tokenizer):
        for token in SPECIAL_TOKENS:
            if tokenizer.token_to_id(token) is None:
                raise UserError(f"tokenizer vocabulary lacks the special token {token}")
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.token_to_id(PAD)
        self.unk_id = tokenizer.token_to_id(UNK)
        self.cls_id = tokenizer.token_to_id(CLS)
        self.sep_id = tokenizer.token_to_id(SEP)
        self.mask_id = tokenizer.token_to_id(MASK)

    # ------------------------------------------------------------------ construction

    @staticmethod
    def _bert_pipeline(model: models.Model) -> Tokenizer:
        tokenizer = Tokenizer(model)
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        return tokenizer

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int = 1000, min_frequency: int = 1
    ) -> InstructionTokenizer:
        """Learn a WordPiece vocabulary (special tokens first, so ``[PAD]`` is id 0), deterministically.

        The same texts always give the same ``tokenizer.json``, byte for byte. The ``tokenizers``
        trainer on its own does not: it numbers the word-continuation pieces (``##a``, ``##b``, …)
        in the iteration order of a Rust hash map, which changes from run to run, and it breaks
        ties between equally frequent merges by those numbers, so both the ids and the learnt
        pieces varied. Here those pieces are numbered in sorted order before training (handed to
        the trainer as leading tokens, which fixes their ids), so every tie is broken the same
        way; the trained vocabulary is then rebuilt with only the real special tokens.
        """
        texts = list(texts)
        tokenizer = cls._bert_pipeline(models.WordPiece(unk_token=UNK))
        # Every character that occurs inside a word becomes a continuation piece (what the trainer
        # would add itself, in hash order).
        inner_characters = {
            char
            for text in texts
            for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(tokenizer.normalizer.normalize_str(text))
            for char in word[1:]
        }
        continuations = [CONTINUATION + char for char in sorted(inner_characters)]
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[*SPECIAL_TOKENS, *continuations],
            continuing_subword_prefix=CONTINUATION,
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        # The continuation pieces were only numbered as special tokens: as such they would be matched
        # verbatim in raw text and dropped by decode. Rebuild the same vocabulary as plain WordPiece.
        vocabulary = tokenizer.get_vocab(with_added_tokens=False)
        trained = cls._bert_pipeline(
            models.WordPiece(vocabulary, unk_token=UNK, continuing_subword_prefix=CONTINUATION)
        )
        trained.add_special_tokens(list(SPECIAL_TOKENS))
        return cls(trained)

    @classmethod
    def from_bert_vocab(cls, vocab_file: str | Path) -> InstructionTokenizer:
        """The vocabulary of a local BERT checkpoint (its ``vocab.txt``)."""
        vocab_file = Path(vocab_file)
        if not vocab_file.is_file():
            raise UserError(f"BERT vocabulary not found: {vocab_file}")
        tokenizer = cls._bert_pipeline(models.WordPiece.from_file(str(vocab_file), unk_token=UNK))
        tokenizer.add_special_tokens(list(SPECIAL_TOKENS))  # "[SEP]" inside a text stays one token
        return cls(tokenizer)

    @classmethod
    def load(cls, path: str | Path) -> InstructionTokenizer:
        """Read a ``tokenizer.json`` written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"tokenizer file not found: {path}")
        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(path))

    # ------------------------------------------------------------------ use

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Ids that masking must never choose nor draw: [PAD] [CLS] [SEP] [MASK]."""
        return (self.pad_id, self.cls_id, self.sep_id, self.mask_id)

    def token_ids(self, text: str, max_length: int, truncation_side: str = "right") -> tuple[list[int], bool]:
        """``[CLS] wordpieces [SEP]`` of at most ``max_length`` ids; returns (ids, truncated).

        A text too long loses word pieces at its end (``truncation_side="right"``: an instruction
        keeps its beginning) or at its start (``"left"``: a dialog history keeps its latest turns
        and the target at its end). ``[CLS]`` and ``[SEP]`` are always kept.
        """
        if max_length < 2:
            raise ValueError("max_length must leave room for [CLS] and [SEP]")
        if truncation_side not in TRUNCATION_SIDES:
            raise ValueError(f"truncation_side must be one of {TRUNCATION_SIDES}, got {truncation_side!r}")
        pieces = self.tokenizer.encode(text, add_special_tokens=False).ids
        room = max_length - 2
        truncated = len(pieces) > room
        if truncated:
            pieces = pieces[:room] if truncation_side == "right" else pieces[len(pieces) - room :]
        return [self.cls_id, *pieces, self.sep_id], truncated

    def encode_batch(
        self, texts: Sequence[str], max_length: int, truncation_side: str = "right"
    ) -> TokenizedBatch:
        """Tokenise (see :meth:`token_ids`) and right-pad ``texts`` to the longest one."""
        rows, truncated = [], 0
        for text in texts:
            ids, cut = self.token_ids(text, max_length, truncation_side)
            rows.append(ids)
            truncated += int(cut)
        return self.pad(rows, truncated)

    def pad(self, rows: Sequence[Sequence[int]], truncated: int = 0) -> TokenizedBatch:
        """Right-pad lists of ids into a :class:`TokenizedBatch`."""
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        text_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        for i, row in enumerate(rows):
            text_mask[i, : len(row)] = True
        return TokenizedBatch(input_ids=input_ids, text_mask=text_mask, truncated=truncated)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


def build_tokenizer(
    texts: Callable[[], Iterable[str]], vocab_size: int, bert: str = "", cache: Path | None = None
) -> InstructionTokenizer:
    """A fresh model's tokenizer: a local BERT's vocab (``bert``), the one in ``cache``, or a new WordPiece.

    A new WordPiece vocabulary is learnt on ``texts()`` (called only then) and saved to ``cache``;
    whoever finds ``cache`` reuses it instead of retraining (a resumed run, the other ranks of a
    distributed one). Training is deterministic, so a retraining would give the same file.
    """
    if bert:
        return InstructionTokenizer.from_bert_vocab(Path(bert) / "vocab.txt")
    if cache is not None and cache.is_file():
        return InstructionTokenizer.load(cache)
    tokenizer = InstructionTokenizer.train(texts(), vocab_size=vocab_size)
    if cache is not None:
        tokenizer.save(cache)
    return tokenizer
