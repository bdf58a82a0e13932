"""Text in, token batches out: file formats, memory-mapped token shards and padded batches.

Accepted inputs (``read_sentences`` / ``iter_sentences``):

* plain text, one sentence per line (``.txt`` and anything else);
* labelled text, ``label<TAB>text`` per line (``.tsv``, or any file whose first line has a tab);
* JSON lines, ``{"text": ..., "label": ...}`` per line (``.jsonl``; ``label`` optional);
* a folder of such files (Wikipedia-scale pre-training shards), read in sorted order.

Blank lines are skipped; undecodable bytes are replaced with U+FFFD and the lines counted.

Corpora are tokenized once (:func:`build_token_cache`) into flat ``int32`` arrays on disk —
``encoder_tokens.bin`` / ``decoder_tokens.bin`` plus ``*_offsets.npy`` — which
:class:`TokenizedCorpus` opens with ``np.memmap``, so a corpus larger than RAM streams from the
page cache. Sentences longer than the block size are truncated and counted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dgm_core.errors import UserError
from optimus.tokenization import SentenceCodec

log = logging.getLogger("optimus.data")

FORMATS = ("auto", "text", "labeled", "jsonl")
_TEXT_SUFFIXES = {".txt", ".tsv", ".jsonl", ".text", ""}


@dataclass
class ReadStats:
    """What reading skipped or repaired (reported, never silent)."""

    sentences: int = 0
    blank_lines: int = 0
    undecodable_lines: int = 0
    truncated: int = 0

    def describe(self) -> str:
        return (
            f"{self.sentences} sentences ({self.blank_lines} blank lines skipped, "
            f"{self.undecodable_lines} lines with undecodable bytes replaced, {self.truncated} truncated)"
        )


@dataclass
class SentenceRecords:
    """Sentences, their labels (``None`` for unlabelled input) and reading statistics."""

    texts: list[str]
    labels: list[str] | None
    stats: ReadStats = field(default_factory=ReadStats)


def _files_of(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _TEXT_SUFFIXES)
        files = [p for p in files if not p.name.startswith(".")]
        if not files:
            raise UserError(f"folder '{path}' holds no .txt/.tsv/.jsonl files")
        return files
    if not path.exists():
        raise UserError(f"data file not found: {path}")
    return [path]


def _detect_format(path: Path, first_line: str) -> str:
    if path.suffix.lower() in (".jsonl", ".json"):
        return "jsonl"
    if path.suffix.lower() == ".tsv" or "\t" in first_line:
        return "labeled"
    return "text"


def iter_sentences(
    path: str | Path, fmt: str = "auto", stats: ReadStats | None = None
) -> Iterator[tuple[str, str | None]]:
    """Yield ``(text, label)`` pairs from a file or folder, streaming (constant memory)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown data format '{fmt}': expected one of {', '.join(FORMATS)}")
    stats = stats if stats is not None else ReadStats()
    for file in _files_of(Path(path)):
        file_format = fmt
        with open(file, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    line = raw.decode("utf-8", errors="replace")
                    stats.undecodable_lines += 1
                line = line.rstrip("\r\n")
                if not line.strip():
                    stats.blank_lines += 1
                    continue
                if file_format == "auto":
                    file_format = _detect_format(file, line)
                text, label = _parse_line(line, file_format, file, number)
                if not text:
                    stats.blank_lines += 1
                    continue
                stats.sentences += 1
                yield text, label
    if stats.undecodable_lines:
        log.warning(
            "%s: %d line(s) had undecodable bytes (replaced with U+FFFD)", path, stats.undecodable_lines
        )


def _parse_line(line: str, fmt: str, file: Path, number: int) -> tuple[str, str | None]:
    if fmt == "text":
        return line.strip(), None
    if fmt == "labeled":
        label, tab, text = line.partition("\t")
        if not tab or not label.strip():
            raise UserError(f"{file}:{number}: missing label (expected 'label<TAB>text')")
        return text.strip(), label.strip()
    try:
        record = json.loads(line)
    except ValueError:
        raise UserError(f'{file}:{number}: not valid JSON (expected {{"text": ..., "label": ...}})') from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise UserError(f"{file}:{number}: a JSON line needs a string field 'text'")
    label = record.get("label")
    return record["text"].strip(), None if label is None else str(label)


def read_sentences(path: str | Path, fmt: str = "auto", require_labels: bool = False) -> SentenceRecords:
    """All sentences (and labels) of a file or folder in memory; for evaluation-sized data."""
    stats = ReadStats()
    pairs = list(iter_sentences(path, fmt, stats))
    if not pairs:
        raise UserError(f"'{path}' holds no sentences (empty file or only blank lines)")
    texts = [text for text, _ in pairs]
    labels = [label for _, label in pairs]
    missing = sum(label is None for label in labels)
    if require_labels and missing:
        raise UserError(
            f"'{path}': {missing} of {len(labels)} sentence(s) have no label "
            "(use 'label<TAB>text' lines or JSONL with a 'label' field)"
        )
    if missing == len(labels):
        return SentenceRecords(texts, None, stats)
    if missing:
        raise UserError(f"'{path}': {missing} of {len(labels)} sentence(s) have no label while others do")
    return SentenceRecords(texts, labels, stats)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- token cache


def _codec_fingerprint(codec: SentenceCodec) -> str:
    digest = hashlib.sha256()
    for tokenizer in (codec.encoder_tokenizer, codec.decoder_tokenizer):
        vocab = tokenizer.get_vocab()
        digest.update(json.dumps(sorted(vocab.items())).encode())
    return digest.hexdigest()[:16]


def build_token_cache(
    texts: Sequence[str] | Iterator[str], codec: SentenceCodec, block_size: int, out_dir: str | Path
) -> TokenizedCorpus:
    """Tokenize ``texts`` once into memory-mappable arrays under ``out_dir``; return the opened corpus.

    Streams: at most one sentence's tokens are held besides file buffers.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if block_size < 4:
        raise UserError(f"block_size must be at least 4, got {block_size}")
    # meta.json is what marks a cache usable: drop a stale one before the arrays are rewritten, so
    # an interrupted build is rebuilt next time instead of being opened half-written.
    (out_dir / "meta.json").unlink(missing_ok=True)
    enc_offsets, dec_offsets = [0], [0]
    truncated = 0
    with (
        open(out_dir / "encoder_tokens.bin", "wb") as enc_file,
        open(out_dir / "decoder_tokens.bin", "wb") as dec_file,
    ):
        for text in texts:
            encoded = codec.encode(text, block_size)
            truncated += encoded.truncated
            enc_file.write(np.asarray(encoded.encoder_ids, dtype=np.int32).tobytes())
            dec_file.write(np.asarray(encoded.decoder_ids, dtype=np.int32).tobytes())
            enc_offsets.append(enc_offsets[-1] + len(encoded.encoder_ids))
            dec_offsets.append(dec_offsets[-1] + len(encoded.decoder_ids))
    if len(enc_offsets) == 1:
        raise UserError("no sentences to tokenize (the data is empty)")
    np.save(out_dir / "encoder_offsets.npy", np.asarray(enc_offsets, dtype=np.int64))
    np.save(out_dir / "decoder_offsets.npy", np.asarray(dec_offsets, dtype=np.int64))
    meta = {
        "num_sentences": len(enc_offsets) - 1,
        "truncated": truncated,
        "block_size": block_size,
        "tokenizers": _codec_fingerprint(codec),
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2))
    if truncated:
        log.warning(
            "%d of %d sentence(s) were longer than block_size=%d and truncated",
            truncated,
            meta["num_sentences"],
            block_size,
        )
    return TokenizedCorpus(out_dir)


class TokenizedCorpus:
    """A tokenized corpus on disk, memory-mapped: ``corpus[i] -> (encoder_ids, decoder_ids)``."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            raise UserError(f"'{folder}' is not a token cache (no meta.json)")
        self.folder = folder
        self.meta = json.loads(meta_path.read_text())
        self._enc_offsets = np.load(folder / "encoder_offsets.npy")
        self._dec_offsets = np.load(folder / "decoder_offsets.npy")
        self._enc = np.memmap(folder / "encoder_tokens.bin", dtype=np.int32, mode="r")
        self._dec = np.memmap(folder / "decoder_tokens.bin", dtype=np.int32, mode="r")

    def __len__(self) -> int:
        return len(self._enc_offsets) - 1

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        enc = self._enc[self._enc_offsets[index] : self._enc_offsets[index + 1]]
        dec = self._dec[self._dec_offsets[index] : self._dec_offsets[index + 1]]
        return enc, dec

    @property
    def decoder_lengths(self) -> np.ndarray:
        """Decoder tokens per sentence (for length bucketing and token counts)."""
        return np.diff(self._dec_offsets)

    def matches(self, codec: SentenceCodec, block_size: int) -> bool:
        return (
            self.meta.get("tokenizers") == _codec_fingerprint(codec)
            and self.meta.get("block_size") == block_size
        )

    def check_vocab(self, encoder_vocab_size: int, decoder_vocab_size: int) -> None:
        """Refuse token ids the model cannot embed (a tokenizer/model mismatch)."""
        for name, tokens, size in (
            ("encoder", self._enc, encoder_vocab_size),
            ("decoder", self._dec, decoder_vocab_size),
        ):
            if len(tokens) and int(tokens.max()) >= size:
                raise UserError(
                    f"token id {int(tokens.max())} in the {name} cache is outside the model's vocabulary "
                    f"({size}); the tokenizer does not match the model"
                )


def open_or_build_token_cache(
    texts: Sequence[str] | Iterator[str], codec: SentenceCodec, block_size: int, out_dir: str | Path
) -> TokenizedCorpus:
    """Reuse ``out_dir``'s cache when it was built with the same tokenizers and block size."""
    out_dir = Path(out_dir)
    if (out_dir / "meta.json").is_file():
        corpus = TokenizedCorpus(out_dir)
        if corpus.matches(codec, block_size):
            return corpus
    return build_token_cache(texts, codec, block_size, out_dir)


@dataclass
class TextBatch:
    """Right-padded encoder and decoder ids with their attention masks."""

    encoder_ids: torch.Tensor
    encoder_mask: torch.Tensor
    decoder_ids: torch.Tensor
    decoder_mask: torch.Tensor

    def to(self, device: torch.device | str) -> TextBatch:
        return TextBatch(
            *(
                t.to(device, non_blocking=True)
                for t in (self.encoder_ids, self.encoder_mask, self.decoder_ids, self.decoder_mask)
            )
        )

    def __len__(self) -> int:
        return self.encoder_ids.shape[0]


def _pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(np.asarray(seq, dtype=np.int64))
        mask[row, : len(seq)] = 1
    return ids, mask


def collate(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]], encoder_pad_id: int, decoder_pad_id: int
) -> TextBatch:
    """Pad a list of ``(encoder_ids, decoder_ids)`` into a :class:`TextBatch`."""
    enc_ids, enc_mask = _pad([p[0] for p in pairs], encoder_pad_id)
    dec_ids, dec_mask = _pad([p[1] for p in pairs], decoder_pad_id)
    return TextBatch(enc_ids, enc_mask, dec_ids, dec_mask)


def encode_texts(texts: Sequence[str], codec: SentenceCodec, block_size: int) -> tuple[list, int]:
    """``(encoder_ids, decoder_ids)`` pairs of in-memory sentences and how many were truncated."""
    pairs, truncated = [], 0
    for text in texts:
        encoded = codec.encode(text, block_size)
        truncated += encoded.truncated
        pairs.append((encoded.encoder_ids, encoded.decoder_ids))
    return pairs, truncated


def iterate_batches(pairs: Sequence, batch_size: int, codec: SentenceCodec) -> Iterator[TextBatch]:
    """Fixed-order batches over all pairs (for evaluation)."""
    for start in range(0, len(pairs), batch_size):
        yield collate(pairs[start : start + batch_size], codec.encoder_pad_id, codec.decoder_pad_id)
