"""Which sentences a run trains, evaluates and fits its tokenizers on, and what identifies them.

Without a training file they come from the embedded grammar (:mod:`optimus.grammar`): training
sentences from the stream of ``seed``, held-out ones from a separate stream (``10_000 + seed``)
so they never overlap by construction. With a training file, the held-out sentences are
``--eval-file``'s or every 20th of the file's first sentences, which training then skips.

A training file is streamed leniently (a malformed line is skipped, counted and logged: one bad
line in a Wikipedia dump must not end a run); an evaluation file is read strictly.

:func:`corpus_fingerprint` names the training stream — which files (name, size, modification
time), which format, which sentences are held out — so the token cache of one corpus is never
reused for another one in the same run directory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator

from optimus.data import ReadStats, ShardDecoder, data_fingerprint, iter_sentences, read_sentences
from optimus.grammar import generate_corpus

HELD_OUT_EVERY = 20  # every 20th of a training file's first sentences is held out
MAX_HELD_OUT_FROM_TRAINING = 500


def embedded_test_texts(num: int, seed: int = 1) -> list[str]:
    """Held-out embedded sentences (a different seed stream from training's default seed 0)."""
    return [s.text for s in generate_corpus(num, seed=10_000 + seed)]


def _held_out_count(eval_sentences: int) -> int:
    return min(MAX_HELD_OUT_FROM_TRAINING, eval_sentences)


def _stream(
    train_file: str, data_format: str, shard_decoder: ShardDecoder | None, stats: ReadStats | None
) -> Iterator[str]:
    for text, _ in iter_sentences(
        train_file, data_format, stats, on_malformed="skip", shard_tokenizer=shard_decoder
    ):
        yield text


def training_and_held_out_texts(
    train_file: str,
    eval_file: str,
    data_format: str,
    corpus_size: int,
    eval_sentences: int,
    seed: int,
    shard_decoder: ShardDecoder | None = None,
    stats: ReadStats | None = None,
) -> tuple[Iterable[str], list[str]]:
    """The training sentences (a list, or a stream for files) and up to ``eval_sentences`` held-out ones.

    ``stats`` collects what reading the training file skipped (counted once the stream is consumed).
    """
    if not train_file:
        train = [s.text for s in generate_corpus(corpus_size, seed=seed)]
        return train, embedded_test_texts(eval_sentences, seed)
    if eval_file:
        held_out = read_sentences(eval_file, data_format, shard_tokenizer=shard_decoder).texts[
            :eval_sentences
        ]
        return _stream(train_file, data_format, shard_decoder, stats), held_out
    held_out_end = HELD_OUT_EVERY * _held_out_count(eval_sentences)

    def is_held_out(index: int) -> bool:
        return index % HELD_OUT_EVERY == 0 and index < held_out_end

    held_out = []
    for index, text in enumerate(_stream(train_file, data_format, shard_decoder, None)):
        if index >= held_out_end:
            break
        if is_held_out(index):
            held_out.append(text)

    def training_stream() -> Iterator[str]:
        for index, text in enumerate(_stream(train_file, data_format, shard_decoder, stats)):
            if not is_held_out(index):
                yield text

    return training_stream(), held_out


def corpus_fingerprint(
    train_file: str,
    eval_file: str,
    data_format: str,
    corpus_size: int,
    eval_sentences: int,
    seed: int,
    shard_tokenizer: str = "",
) -> str:
    """A short hash of everything that decides the training stream of :func:`training_and_held_out_texts`."""
    if not train_file:
        source: dict = {"embedded": {"corpus_size": corpus_size, "seed": seed}}
    else:
        source = {
            "files": data_fingerprint(train_file),
            "format": data_format,
            # Held out of the training file (its first sentences) unless an --eval-file is given.
            "held_out_of_training": 0 if eval_file else _held_out_count(eval_sentences),
            "shard_tokenizer": shard_tokenizer,
        }
    return hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:16]


def tokenizer_corpus_fingerprint(
    train_file: str, data_format: str, corpus_size: int, seed: int, shard_tokenizer: str = ""
) -> str:
    """A short hash of what :func:`tokenizer_training_texts` reads (held-out choices do not matter there)."""
    if not train_file:
        source: dict = {"embedded": {"corpus_size": corpus_size, "seed": seed}}
    else:
        source = {
            "files": data_fingerprint(train_file),
            "format": data_format,
            "shard_tokenizer": shard_tokenizer,
        }
    return hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:16]


def tokenizer_training_texts(
    train_file: str,
    data_format: str,
    corpus_size: int,
    seed: int,
    limit: int = 200_000,
    shard_decoder: ShardDecoder | None = None,
) -> list[str]:
    """Sentences to train from-scratch tokenizers on: the embedded corpus, or a file's first ``limit``."""
    if not train_file:
        return [s.text for s in generate_corpus(corpus_size, seed=seed)]
    texts = []
    for text in _stream(train_file, data_format, shard_decoder, None):
        texts.append(text)
        if len(texts) >= limit:
            break
    return texts
