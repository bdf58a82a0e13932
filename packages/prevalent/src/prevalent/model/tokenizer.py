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
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)


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
        """Learn a WordPiece vocabulary (special tokens first, so ``[PAD]`` is id 0).

        The ``tokenizers`` trainer breaks ties between equally frequent merges in a run-dependent
        order, so two trainings on the same texts can differ slightly: the CLIs therefore save the
        tokenizer beside the weights and reuse it rather than retrain.
        """
        tokenizer = cls._bert_pipeline(models.WordPiece(unk_token=UNK))
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            show_progress=False,
        )
        tokenizer.train_from_iterator(list(texts), trainer=trainer)
        return cls(tokenizer)

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

    def token_ids(self, text: str, max_length: int) -> tuple[list[int], bool]:
        """``[CLS] wordpieces [SEP]`` cut to ``max_length`` (``[SEP]`` kept); returns (ids, truncated)."""
        if max_length < 2:
            raise ValueError("max_length must leave room for [CLS] and [SEP]")
        pieces = self.tokenizer.encode(text, add_special_tokens=False).ids
        truncated = len(pieces) > max_length - 2
        return [self.cls_id, *pieces[: max_length - 2], self.sep_id], truncated

    def encode_batch(self, texts: Sequence[str], max_length: int) -> TokenizedBatch:
        """Tokenise and right-pad ``texts`` to the longest one (at most ``max_length``)."""
        rows, truncated = [], 0
        for text in texts:
            ids, cut = self.token_ids(text, max_length)
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

    A new WordPiece vocabulary is learnt on ``texts()`` (called only then) and saved to ``cache``.
    Training breaks ties in a run-dependent order, so whoever finds ``cache`` reuses it instead of
    retraining (a resumed run, the other ranks of a distributed one).
    """
    if bert:
        return InstructionTokenizer.from_bert_vocab(Path(bert) / "vocab.txt")
    if cache is not None and cache.is_file():
        return InstructionTokenizer.load(cache)
    tokenizer = InstructionTokenizer.train(texts(), vocab_size=vocab_size)
    if cache is not None:
        tokenizer.save(cache)
    return tokenizer
