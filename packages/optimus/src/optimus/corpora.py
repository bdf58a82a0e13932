"""Which sentences a run trains, evaluates and fits its tokenizers on.

Without a training file they come from the embedded grammar (:mod:`optimus.grammar`): training
sentences from the stream of ``seed``, held-out ones from a separate stream (``10_000 + seed``)
so they never overlap by construction. With a training file, the held-out sentences are
``--eval-file``'s or every 20th of the file's first sentences, which training then skips.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from optimus.data import iter_sentences, read_sentences
from optimus.grammar import generate_corpus

HELD_OUT_EVERY = 20  # every 20th of a training file's first sentences is held out
MAX_HELD_OUT_FROM_TRAINING = 500


def embedded_test_texts(num: int, seed: int = 1) -> list[str]:
    """Held-out embedded sentences (a different seed stream from training's default seed 0)."""
    return [s.text for s in generate_corpus(num, seed=10_000 + seed)]


def training_and_held_out_texts(
    train_file: str, eval_file: str, data_format: str, corpus_size: int, eval_sentences: int, seed: int
) -> tuple[Iterable[str], list[str]]:
    """The training sentences (a list, or a stream for files) and up to ``eval_sentences`` held-out ones."""
    if not train_file:
        train = [s.text for s in generate_corpus(corpus_size, seed=seed)]
        return train, embedded_test_texts(eval_sentences, seed)
    if eval_file:
        held_out = read_sentences(eval_file, data_format).texts[:eval_sentences]
        return (text for text, _ in iter_sentences(train_file, data_format)), held_out
    held_out_end = HELD_OUT_EVERY * min(MAX_HELD_OUT_FROM_TRAINING, eval_sentences)

    def is_held_out(index: int) -> bool:
        return index % HELD_OUT_EVERY == 0 and index < held_out_end

    held_out = []
    for index, (text, _) in enumerate(iter_sentences(train_file, data_format)):
        if index >= held_out_end:
            break
        if is_held_out(index):
            held_out.append(text)

    def training_stream() -> Iterator[str]:
        for index, (text, _) in enumerate(iter_sentences(train_file, data_format)):
            if not is_held_out(index):
                yield text

    return training_stream(), held_out


def tokenizer_training_texts(
    train_file: str, data_format: str, corpus_size: int, seed: int, limit: int = 200_000
) -> list[str]:
    """Sentences to train from-scratch tokenizers on: the embedded corpus, or a file's first ``limit``."""
    if not train_file:
        return [s.text for s in generate_corpus(corpus_size, seed=seed)]
    texts = []
    for text, _ in iter_sentences(train_file, data_format):
        texts.append(text)
        if len(texts) >= limit:
            break
    return texts
