"""What a run keeps between starts: deterministic tokenizers; token caches and tokenizers keyed by corpus."""

from __future__ import annotations

import filecmp
import json
import shutil
import tracemalloc

import numpy as np
import pytest

from dgm_core.errors import UserError
from optimus import train
from optimus.building import ModelOptions, open_or_build_codec
from optimus.data import TokenizedCorpus, build_token_cache, open_or_build_token_cache
from optimus.grammar import generate_corpus
from optimus.tokenization import EncodedSentence, SentenceCodec


def _texts(count: int, seed: int) -> list[str]:
    return [s.text for s in generate_corpus(count, seed=seed)]


def test_two_tokenizer_builds_from_the_same_data_are_byte_identical(tmp_path):
    texts = _texts(500, seed=0)
    folders = []
    for build in range(3):
        folder = tmp_path / f"build{build}"
        SentenceCodec.train(texts, encoder_vocab_size=300, decoder_vocab_size=400).save_pretrained(folder)
        folders.append(folder)
    names = sorted(str(p.relative_to(folders[0])) for p in folders[0].rglob("*") if p.is_file())
    assert "encoder_tokenizer/tokenizer.json" in names
    for other in folders[1:]:
        assert sorted(str(p.relative_to(other)) for p in other.rglob("*") if p.is_file()) == names
        _, mismatch, errors = filecmp.cmpfiles(folders[0], other, names, shallow=False)
        assert mismatch == errors == []


def test_a_deterministic_wordpiece_tokenizer_still_round_trips_sentences():
    codec = SentenceCodec.train(_texts(300, seed=1), encoder_vocab_size=200, decoder_vocab_size=300)
    tokenizer = codec.encoder_tokenizer
    sentence = "tomorrow , the band will record the lovely song ."
    pieces = tokenizer.tokenize(sentence)
    assert " ".join(pieces).replace(" ##", "") == sentence  # the pieces spell the words again
    assert tokenizer.convert_ids_to_tokens(list(range(5))) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # Words outside the vocabulary still split into pieces (the whole alphabet is in it), never [UNK].
    assert tokenizer.unk_token_id not in tokenizer.encode("zebras quizzically vex jumpy wolves")


def test_token_cache_is_rebuilt_for_another_corpus_and_its_offsets_are_memory_mapped(tmp_path):
    codec = SentenceCodec.train(_texts(200, seed=0), encoder_vocab_size=200, decoder_vocab_size=300)
    first = open_or_build_token_cache(
        _texts(30, seed=1), codec, 32, tmp_path / "cache", corpus_key="corpus-a"
    )
    assert len(first) == 30
    assert isinstance(TokenizedCorpus(tmp_path / "cache")._dec_offsets, np.memmap)
    assert isinstance(TokenizedCorpus(tmp_path / "cache")._enc_offsets, np.memmap)
    # Same key: reused (the texts are not even read). Another key: rebuilt from the new texts.
    assert (
        len(open_or_build_token_cache(iter([]), codec, 32, tmp_path / "cache", corpus_key="corpus-a")) == 30
    )
    second = open_or_build_token_cache(
        _texts(12, seed=2), codec, 32, tmp_path / "cache", corpus_key="corpus-b"
    )
    assert len(second) == 12 and second.meta["corpus"] == "corpus-b"
    assert [second[i][1].tolist() for i in (0, 11)] == [
        codec.encode(t, 32).decoder_ids for t in _texts(12, 2)[::11]
    ]


class _FixedCodec:
    """Every sentence is 5 encoder and 7 decoder tokens: a corpus of any size at no tokenizing cost."""

    class _Vocab:
        @staticmethod
        def get_vocab() -> dict:
            return {}

    encoder_tokenizer = decoder_tokenizer = _Vocab()

    @staticmethod
    def encode(text: str, block_size: int) -> EncodedSentence:
        return EncodedSentence([2, 5, 6, 7, 3], [1, 9, 9, 9, 9, 9, 2], False)

    @classmethod
    def encode_many(cls, texts, block_size: int) -> list[EncodedSentence]:
        return [cls.encode(text, block_size) for text in texts]


def test_building_a_token_cache_holds_no_per_sentence_python_lists(tmp_path):
    sentences = 100_000
    tracemalloc.start()
    try:
        corpus = build_token_cache(("x" for _ in range(sentences)), _FixedCodec(), 16, tmp_path / "cache")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(corpus) == sentences
    assert corpus._dec_offsets[-1] == 7 * sentences and corpus._enc_offsets[12345] == 5 * 12345
    # Offsets kept as Python ints would be 2 x 100 000 objects (> 7 MB); the length chunks are 1 MB.
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "decoder_offsets.npy", "decoder_tokens.bin", "encoder_offsets.npy", "encoder_tokens.bin", "meta.json",
    ]  # fmt: skip


def test_tokenizers_are_never_saved_from_an_empty_or_failed_read(tmp_path):
    folder = tmp_path / "tokenizers"
    with pytest.raises(UserError, match="no sentences to train the tokenizers on"):
        open_or_build_codec(folder, ModelOptions(vocab_size=200), lambda: [])

    def failing_read() -> list[str]:
        raise UserError("train.txt:7: not valid JSON")

    with pytest.raises(UserError, match="not valid JSON"):
        open_or_build_codec(folder, ModelOptions(vocab_size=200), failing_read)
    assert not folder.exists() and not list(tmp_path.iterdir())
    # The next, good read builds them.
    codec = open_or_build_codec(folder, ModelOptions(vocab_size=200), lambda: _texts(100, seed=0))
    assert codec.encoder_vocab_size > 50


def test_tokenizers_follow_their_corpus(tmp_path):
    folder = tmp_path / "tokenizers"
    options = ModelOptions(vocab_size=400)  # beyond the 259 symbols byte-level BPE starts with
    a, b = _texts(100, seed=0), [t.upper() + " !" for t in _texts(100, seed=1)]
    first = open_or_build_codec(folder, options, lambda: a, corpus_key="a")
    vocab_a = first.decoder_tokenizer.get_vocab()
    # Same sentences under another key (the file was copied or touched): kept, and the key remembered.
    open_or_build_codec(folder, options, lambda: list(a), corpus_key="a-copied")
    assert json.loads((folder / "source.json").read_text())["corpus"] == "a-copied"
    # Other sentences: refused when a resumed run needs the old ids, rebuilt for a fresh run.
    with pytest.raises(UserError, match="use a new --run-dir"):
        open_or_build_codec(folder, options, lambda: b, allow_rebuild=False, corpus_key="b")
    rebuilt = open_or_build_codec(folder, options, lambda: b, corpus_key="b")
    assert rebuilt.decoder_tokenizer.get_vocab() != vocab_a
    assert "!" in rebuilt.encoder_tokenizer.get_vocab()


@pytest.mark.slow
def test_a_different_corpus_in_the_same_run_directory_gets_its_own_tokenizers_and_cache(tmp_path, capsys):
    run_dir = tmp_path / "run"
    smoke = [
        "--preset",
        "smoke",
        "--device",
        "cpu",
        "--run-dir",
        str(run_dir),
        "--steps",
        "2",
        "--log-every",
        "1",
    ]
    assert train.main([*smoke, "--corpus-size", "400"]) == 0
    assert len(TokenizedCorpus(run_dir / "token_cache")) == 400
    other = tmp_path / "other.txt"
    other.write_text("\n".join(t.replace("the ", "this ") for t in _texts(100, seed=3)) + "\n")
    # The finished run has checkpoints made with the first corpus's token ids: not silently mixed.
    assert train.main([*smoke, "--train-file", str(other)]) == 2
    assert "use a new --run-dir" in capsys.readouterr().err
    # Without them (a fresh start in the same folder) the new corpus gets new tokenizers and a new cache.
    shutil.rmtree(run_dir / "checkpoints")
    shutil.rmtree(run_dir / "model")
    assert train.main([*smoke, "--train-file", str(other)]) == 0
    corpus = TokenizedCorpus(run_dir / "token_cache")
    assert len(corpus) == 100 - 5  # every 20th of the first 640 sentences is held out: 0, 20, 40, 60, 80
    assert "this" in SentenceCodec.from_pretrained(run_dir / "tokenizers").encoder_tokenizer.get_vocab()
