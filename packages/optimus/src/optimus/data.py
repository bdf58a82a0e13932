"""Text in, token batches out: file formats, memory-mapped token shards and padded batches.

Accepted inputs (``read_sentences`` / ``iter_sentences``; ``--data-format`` names them):

* ``text`` — one sentence per line (``.txt`` and anything else);
* ``labeled`` — ``label<TAB>text`` per line (the original's Yelp files);
* ``jsonl`` — JSON lines, ``{"text": ..., "label": ...}`` per line (``label`` optional);
* ``optimus_json`` — the original Optimus's pre-training shards
  (``wikipedia.segmented.nltk.split.seq64.N.json``): one JSON array per file whose records hold
  token ids, ``{"bert_token": [...], "bert_token_length": n, "gpt2_token": [<BOS> ... <EOS>],
  "gpt2_token_length": m}``. There is no text in them, so a sentence is read back by decoding
  ``gpt2_token`` with GPT-2's tokenizer (``shard_tokenizer``) and is then tokenized again by the
  model's own tokenizers (with ``bert-base-cased`` and ``gpt2`` that gives back the shard's ids);
* a folder of such files (Wikipedia-scale pre-training shards), read in natural order
  (``shard.2`` before ``shard.10``, as the original walks its numbered shards).

``auto`` decides per file: ``.json`` holding an array is ``optimus_json``, ``.jsonl`` / ``.json``
holding objects is ``jsonl``; a line file is ``labeled`` only when every one of its first
:data:`DETECTION_LINES` lines is ``label<TAB>text`` with a label that looks like one (no spaces,
at most :data:`MAX_LABEL_CHARS` characters). Tab-separated lines that are not (``context<TAB>response``
dialogue data, say) are never taken for labels: ``auto`` refuses them and asks for an explicit format.

Blank lines are skipped; undecodable bytes are replaced with U+FFFD; both are counted. A malformed
line (a labelled line without label, invalid JSON, a shard record without token ids) is a one-line
error when reading evaluation data (``on_malformed="error"``) and is skipped, counted and logged
in a streamed training corpus (``on_malformed="skip"``), where one bad line in millions must not
end a run.

Corpora are tokenized once (:func:`build_token_cache`) into flat ``int32`` arrays on disk —
``encoder_tokens.bin`` / ``decoder_tokens.bin`` plus ``*_offsets.npy`` — which
:class:`TokenizedCorpus` opens memory-mapped (tokens and offsets alike), so a corpus larger than
RAM streams from the page cache. Sentences longer than the block size are truncated and counted.
A cache is keyed by the corpus (a fingerprint of its files and selection), the tokenizers and the
block size: anything else rebuilds it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from dgm_core.errors import UserError
from optimus.tokenization import SentenceCodec, prepare_decoder_tokenizer

log = logging.getLogger("optimus.data")

FORMATS = ("auto", "text", "labeled", "jsonl", "optimus_json")
ON_MALFORMED = ("error", "skip")
_FILE_SUFFIXES = {".txt", ".tsv", ".jsonl", ".json", ".text", ""}
DETECTION_LINES = 200  # lines of a file that format detection looks at
MAX_LABEL_CHARS = 32


@dataclass
class ReadStats:
    """What reading skipped or repaired (reported, never silent)."""

    sentences: int = 0
    blank_lines: int = 0
    undecodable_lines: int = 0
    truncated: int = 0
    malformed: int = 0  # lines / shard records skipped as malformed (``on_malformed="skip"``)
    first_malformed: str = ""  # where the first one was, and why

    def describe(self) -> str:
        return (
            f"{self.sentences} sentences ({self.blank_lines} blank lines skipped, "
            f"{self.undecodable_lines} lines with undecodable bytes replaced, {self.malformed} malformed "
            f"lines skipped, {self.truncated} truncated)"
        )


@dataclass
class SentenceRecords:
    """Sentences, their labels (``None`` for unlabelled input) and reading statistics."""

    texts: list[str]
    labels: list[str] | None
    stats: ReadStats = field(default_factory=ReadStats)


class ShardDecoder:
    """Text of a record of the original's ``.json`` shards: its ``gpt2_token`` ids decoded.

    ``tokenizer`` is GPT-2's, or a function that loads it (called once, on the first shard, so
    a run that reads no shards never needs it). Optimus's ``<PAD> <BOS> <EOS>`` are added to it
    in the original's order (ids 50257-50259 for GPT-2) when missing, so the shards' ids line up.
    """

    def __init__(self, tokenizer):
        self._source = tokenizer
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            source = self._source
            if not isinstance(source, PreTrainedTokenizerBase):
                source = source()
            self._tokenizer = prepare_decoder_tokenizer(source)
        return self._tokenizer

    def __call__(self, ids) -> str:
        tokenizer = self.tokenizer
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ValueError("'gpt2_token' is not a list of token ids")
        if any(not 0 <= i < len(tokenizer) for i in ids):
            raise ValueError(f"'gpt2_token' has ids outside the GPT-2 tokenizer's {len(tokenizer)} tokens")
        # The original lays a sentence out as <BOS> tokens <EOS>.
        if ids and ids[0] == tokenizer.bos_token_id:
            ids = ids[1:]
        if ids and ids[-1] == tokenizer.eos_token_id:
            ids = ids[:-1]
        # No clean-up of spaces: "word ." must come back as it was tokenized, or its ids would change.
        return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def _files_of(path: Path) -> list[Path]:
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _FILE_SUFFIXES]
        files = sorted((p for p in files if not p.name.startswith(".")), key=_natural_key)
        if not files:
            raise UserError(f"folder '{path}' holds no .txt/.tsv/.jsonl/.json files")
        return files
    if not path.exists():
        raise UserError(f"data file not found: {path}")
    return [path]


def _first_lines(file: Path, count: int) -> list[str]:
    lines = []
    with open(file, "rb") as handle:
        for raw in handle:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if line.strip():
                lines.append(line)
                if len(lines) >= count:
                    break
    return lines


def _looks_like_label(text: str) -> bool:
    return bool(text) and len(text) <= MAX_LABEL_CHARS and not any(c.isspace() for c in text)


def _detect_format(file: Path, labels_expected: bool) -> str:
    """The format of one file under ``--data-format auto`` (see the module docstring)."""
    suffix = file.suffix.lower()
    if suffix in (".json", ".jsonl"):
        with open(file, "rb") as handle:
            head = handle.read(4096).lstrip()
        return "optimus_json" if head.startswith(b"[") else "jsonl"
    lines = _first_lines(file, DETECTION_LINES)
    tabbed = [line for line in lines if "\t" in line]
    if not tabbed:
        return "text"
    if labels_expected:
        return "labeled"  # a labelled file was asked for: unlabelled lines are then errors
    if len(tabbed) == len(lines) and all(_looks_like_label(line.split("\t", 1)[0].strip()) for line in lines):
        return "labeled"
    example = next(
        (line for line in tabbed if not _looks_like_label(line.split("\t", 1)[0].strip())), tabbed[0]
    )
    raise UserError(
        f"{file}: tab-separated lines that are not label<TAB>text (e.g. {example[:60]!r}; "
        "context<TAB>response data?): choose --data-format text (whole lines) or labeled"
    )


def iter_sentences(
    path: str | Path,
    fmt: str = "auto",
    stats: ReadStats | None = None,
    *,
    on_malformed: str = "error",
    shard_tokenizer=None,
    labels_expected: bool = False,
) -> Iterator[tuple[str, str | None]]:
    """Yield ``(text, label)`` pairs from a file or folder, streaming (constant memory per line file).

    ``shard_tokenizer`` (GPT-2's) decodes the original's ``.json`` shards; ``labels_expected``
    makes ``auto`` read tab-separated lines as ``label<TAB>text`` without asking.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown data format '{fmt}': expected one of {', '.join(FORMATS)}")
    if on_malformed not in ON_MALFORMED:
        raise ValueError(f"on_malformed must be one of {ON_MALFORMED}, got {on_malformed!r}")
    stats = stats if stats is not None else ReadStats()
    malformed_before = stats.malformed
    for file in _files_of(Path(path)):
        file_format = _detect_format(file, labels_expected) if fmt == "auto" else fmt
        if file_format == "optimus_json":
            yield from _read_shard(file, stats, on_malformed, shard_tokenizer)
        else:
            yield from _read_lines(file, file_format, stats, on_malformed)
    if stats.undecodable_lines:
        log.warning(
            "%s: %d line(s) had undecodable bytes (replaced with U+FFFD)", path, stats.undecodable_lines
        )
    if stats.malformed > malformed_before:
        log.warning(
            "%s: skipped %d malformed line(s) or record(s); the first: %s",
            path,
            stats.malformed - malformed_before,
            stats.first_malformed,
        )


def _skip_or_raise(stats: ReadStats, on_malformed: str, where: str, problem: str) -> None:
    if on_malformed == "error":
        raise UserError(f"{where}: {problem}")
    stats.malformed += 1
    if not stats.first_malformed:
        stats.first_malformed = f"{where}: {problem}"


def _read_lines(
    file: Path, fmt: str, stats: ReadStats, on_malformed: str
) -> Iterator[tuple[str, str | None]]:
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
            try:
                text, label = _parse_line(line, fmt)
            except ValueError as problem:
                _skip_or_raise(stats, on_malformed, f"{file}:{number}", str(problem))
                continue
            if not text:
                stats.blank_lines += 1
                continue
            stats.sentences += 1
            yield text, label


def _parse_line(line: str, fmt: str) -> tuple[str, str | None]:
    """``(text, label)`` of one line; ``ValueError`` saying what is wrong with a malformed one."""
    if fmt == "text":
        return line.strip(), None
    if fmt == "labeled":
        label, tab, text = line.partition("\t")
        if not tab or not label.strip():
            raise ValueError("missing label (expected 'label<TAB>text')")
        return text.strip(), label.strip()
    try:
        record = json.loads(line)
    except ValueError:
        raise ValueError('not valid JSON (expected {"text": ..., "label": ...})') from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise ValueError("a JSON line needs a string field 'text'")
    label = record.get("label")
    return record["text"].strip(), None if label is None else str(label)


def _read_shard(
    file: Path, stats: ReadStats, on_malformed: str, shard_tokenizer
) -> Iterator[tuple[str, None]]:
    """Sentences of one of the original's ``.json`` shards (a JSON array of token-id records)."""
    if shard_tokenizer is None:
        raise UserError(
            f"{file} is a shard of the original Optimus (GPT-2 token ids, no text): give the GPT-2 "
            "tokenizer that decodes it (--shard-tokenizer, or a GPT-2 --decoder / --init-from model)"
        )
    decode = shard_tokenizer if isinstance(shard_tokenizer, ShardDecoder) else ShardDecoder(shard_tokenizer)
    try:
        records = json.loads(file.read_bytes())
    except (ValueError, UnicodeDecodeError) as error:
        _skip_or_raise(
            stats, on_malformed, str(file), f"not a valid JSON shard ({error}); whole file skipped"
        )
        return
    if not isinstance(records, list):
        _skip_or_raise(stats, on_malformed, str(file), "not a JSON array of records; whole file skipped")
        return
    for number, record in enumerate(records):
        where = f"{file}[{number}]"
        if not isinstance(record, dict) or "gpt2_token" not in record:
            _skip_or_raise(stats, on_malformed, where, "a shard record needs 'gpt2_token'")
            continue
        try:
            text = decode(record["gpt2_token"]).strip()
        except ValueError as problem:
            _skip_or_raise(stats, on_malformed, where, str(problem))
            continue
        if not text:
            stats.blank_lines += 1
            continue
        stats.sentences += 1
        yield text, None


def read_sentences(
    path: str | Path, fmt: str = "auto", require_labels: bool = False, shard_tokenizer=None
) -> SentenceRecords:
    """All sentences (and labels) of a file or folder in memory, strictly; for evaluation-sized data."""
    stats = ReadStats()
    pairs = list(
        iter_sentences(path, fmt, stats, shard_tokenizer=shard_tokenizer, labels_expected=require_labels)
    )
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


def data_fingerprint(path: str | Path) -> list[dict]:
    """What identifies a file or folder of data cheaply: each file's name, size and modification time.

    A changed, added or removed file changes it; re-reading the content (gigabytes for Wikipedia)
    is not needed for that. Touching a file counts as a change, which only costs a rebuild.
    """
    root = Path(path)
    files = _files_of(root)
    described = []
    for file in files:
        info = file.stat()
        name = str(file.relative_to(root)) if root.is_dir() else str(file.resolve())
        described.append({"file": name, "bytes": info.st_size, "mtime_ns": info.st_mtime_ns})
    return described


# --------------------------------------------------------------------------- token cache


CACHE_LAYOUT = 2  # bumped when the files of a token cache change; older caches are rebuilt
_CHUNK = 1 << 16  # sentences whose lengths are buffered before they go to disk
_ENCODE_BATCH = 4096  # sentences tokenized together (on all cores); a few MB of text at a time


def codec_fingerprint(codec: SentenceCodec) -> str:
    """A short hash of both tokenizers' vocabularies (what token ids mean)."""
    digest = hashlib.sha256()
    for tokenizer in (codec.encoder_tokenizer, codec.decoder_tokenizer):
        vocab = tokenizer.get_vocab()
        digest.update(json.dumps(sorted(vocab.items())).encode())
    return digest.hexdigest()[:16]


class _LengthWriter:
    """Sequence lengths appended to a raw ``int64`` file in fixed-size chunks.

    A corpus of a hundred million sentences would need gigabytes as Python lists of offsets;
    this holds one chunk.
    """

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "wb")  # noqa: SIM115 - closed by close(), after the last chunk
        self.buffer = np.empty(_CHUNK, dtype=np.int64)
        self.filled = 0
        self.count = 0

    def extend(self, lengths: np.ndarray) -> None:
        while len(lengths):
            take = min(len(lengths), _CHUNK - self.filled)
            self.buffer[self.filled : self.filled + take] = lengths[:take]
            self.filled += take
            self.count += take
            lengths = lengths[take:]
            if self.filled == _CHUNK:
                self.flush()

    def flush(self) -> None:
        self.file.write(self.buffer[: self.filled].tobytes())
        self.filled = 0

    def close(self) -> None:
        self.flush()
        self.file.close()

    def write_offsets(self, target: Path) -> None:
        """``target`` (``.npy``): offsets ``0, l0, l0+l1, …``, chunk by chunk; the lengths file is removed."""
        lengths = (
            np.memmap(self.path, dtype=np.int64, mode="r", shape=(self.count,))
            if self.count
            else np.empty(0, dtype=np.int64)
        )
        offsets = np.lib.format.open_memmap(target, mode="w+", dtype=np.int64, shape=(self.count + 1,))
        offsets[0] = running = 0
        for start in range(0, self.count, _CHUNK):
            part = np.cumsum(lengths[start : start + _CHUNK]) + running
            offsets[start + 1 : start + 1 + len(part)] = part
            running = int(part[-1])
        offsets.flush()
        del offsets, lengths
        self.path.unlink()


def build_token_cache(
    texts: Sequence[str] | Iterator[str],
    codec: SentenceCodec,
    block_size: int,
    out_dir: str | Path,
    corpus_key: str = "",
) -> TokenizedCorpus:
    """Tokenize ``texts`` once into memory-mappable arrays under ``out_dir``; return the opened corpus.

    Streams: besides file buffers at most one batch of sentences (:data:`_ENCODE_BATCH`) and their
    tokens, and one chunk of lengths, are held.
    ``corpus_key`` names the corpus (see :func:`optimus.corpora.corpus_fingerprint`); a later
    :func:`open_or_build_token_cache` reuses the cache only for the same key.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if block_size < 4:
        raise UserError(f"block_size must be at least 4, got {block_size}")
    # meta.json is what marks a cache usable: drop a stale one before the arrays are rewritten, so
    # an interrupted build is rebuilt next time instead of being opened half-written.
    (out_dir / "meta.json").unlink(missing_ok=True)
    enc_lengths = _LengthWriter(out_dir / "encoder_lengths.tmp")
    dec_lengths = _LengthWriter(out_dir / "decoder_lengths.tmp")
    truncated = 0
    largest = {"encoder_ids": -1, "decoder_ids": -1}  # the largest token id of each half
    with (
        open(out_dir / "encoder_tokens.bin", "wb") as enc_file,
        open(out_dir / "decoder_tokens.bin", "wb") as dec_file,
    ):
        stream = iter(texts)
        while batch := list(itertools.islice(stream, _ENCODE_BATCH)):
            encoded = codec.encode_many(batch, block_size)
            truncated += sum(sentence.truncated for sentence in encoded)
            for half, file, lengths in (
                ("encoder_ids", enc_file, enc_lengths),
                ("decoder_ids", dec_file, dec_lengths),
            ):
                ids = [getattr(sentence, half) for sentence in encoded]
                flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32)
                largest[half] = max(largest[half], int(flat.max(initial=-1)))
                file.write(flat.tobytes())
                lengths.extend(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)))
    enc_lengths.close()
    dec_lengths.close()
    if enc_lengths.count == 0:
        for writer in (enc_lengths, dec_lengths):
            writer.path.unlink(missing_ok=True)
        raise UserError("no sentences to tokenize (the data is empty)")
    enc_lengths.write_offsets(out_dir / "encoder_offsets.npy")
    dec_lengths.write_offsets(out_dir / "decoder_offsets.npy")
    meta = {
        "layout": CACHE_LAYOUT,
        "num_sentences": enc_lengths.count,
        "truncated": truncated,
        "block_size": block_size,
        "tokenizers": codec_fingerprint(codec),
        "corpus": corpus_key,
        # Checking the ids against a model's vocabulary then reads two numbers, not the whole cache.
        "max_encoder_id": largest["encoder_ids"],
        "max_decoder_id": largest["decoder_ids"],
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
        # Offsets are memory-mapped like the tokens: every DDP rank and loader worker opens the
        # cache, and a hundred million sentences are 800 MB of offsets per half.
        self._enc_offsets = np.load(folder / "encoder_offsets.npy", mmap_mode="r")
        self._dec_offsets = np.load(folder / "decoder_offsets.npy", mmap_mode="r")
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

    def matches(self, codec: SentenceCodec, block_size: int, corpus_key: str = "") -> bool:
        return (
            self.meta.get("layout") == CACHE_LAYOUT
            and self.meta.get("tokenizers") == codec_fingerprint(codec)
            and self.meta.get("block_size") == block_size
            and self.meta.get("corpus") == corpus_key
        )

    def check_vocab(self, encoder_vocab_size: int, decoder_vocab_size: int) -> None:
        """Refuse token ids the model cannot embed (a tokenizer/model mismatch)."""
        for name, tokens, size in (
            ("encoder", self._enc, encoder_vocab_size),
            ("decoder", self._dec, decoder_vocab_size),
        ):
            # Recorded at build time; a cache built before that is scanned (every page of it).
            largest = self.meta.get(f"max_{name}_id")
            if largest is None:
                largest = int(tokens.max()) if len(tokens) else -1
            if largest >= size:
                raise UserError(
                    f"token id {largest} in the {name} cache is outside the model's vocabulary "
                    f"({size}); the tokenizer does not match the model"
                )


def open_or_build_token_cache(
    texts: Sequence[str] | Iterator[str],
    codec: SentenceCodec,
    block_size: int,
    out_dir: str | Path,
    corpus_key: str = "",
) -> TokenizedCorpus:
    """Reuse ``out_dir``'s cache when it holds the same corpus, tokenized the same way; else rebuild it."""
    out_dir = Path(out_dir)
    if (out_dir / "meta.json").is_file():
        corpus = TokenizedCorpus(out_dir)
        if corpus.matches(codec, block_size, corpus_key):
            return corpus
        log.info("token cache in %s is for another corpus, tokenizer or block size: rebuilding it", out_dir)
        del corpus  # close the memory maps before the files are rewritten
    return build_token_cache(texts, codec, block_size, out_dir, corpus_key)


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
