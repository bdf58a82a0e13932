"""Grammar corpus, tokenizers, file formats, token caches and their bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from optimus_tiny import grammar_codec

from dgm_core.errors import UserError
from optimus.building import ModelOptions, open_or_build_codec
from optimus.corpora import training_and_held_out_texts
from optimus.data import (
    ReadStats,
    TokenizedCorpus,
    build_token_cache,
    collate,
    iter_sentences,
    open_or_build_token_cache,
    read_sentences,
)
from optimus.grammar import ATTRIBUTES, generate_corpus, read_attributes


def test_grammar_is_deterministic_given_a_seed_and_varies_with_it():
    assert generate_corpus(50, seed=3) == generate_corpus(50, seed=3)
    assert generate_corpus(50, seed=3) != generate_corpus(50, seed=4)


def test_checker_reads_back_every_generated_attribute():
    corpus = generate_corpus(3000, seed=11)
    assert all(read_attributes(s.text) == s.attributes() for s in corpus)
    for name, values in ATTRIBUTES.items():  # every value occurs
        assert {getattr(s, name) for s in corpus} == set(values)


def test_grammar_sentences_vary_in_length_and_structure():
    lengths = [len(s.text.split()) for s in generate_corpus(2000, seed=0)]
    assert min(lengths) <= 6 and max(lengths) >= 20
    assert len(set(s.text for s in generate_corpus(2000, seed=0))) > 1900


def test_checker_abstains_on_mixed_or_missing_evidence():
    assert read_attributes("the great pizza was awful .")["sentiment"] is None
    assert read_attributes("hello there")["topic"] is None


def test_codec_layouts_follow_bert_and_gpt2_conventions():
    codec = grammar_codec()
    text = "the chef cooked the great soup ."
    encoded = codec.encode(text, 64)
    enc_tok = codec.encoder_tokenizer
    assert encoded.encoder_ids[0] == enc_tok.cls_token_id and encoded.encoder_ids[-1] == enc_tok.sep_token_id
    assert encoded.decoder_ids[0] == codec.bos_id and encoded.decoder_ids[-1] == codec.eos_id
    assert (
        codec.decoder_tokenizer.decode(encoded.decoder_ids[1:-1]) == " " + text
    )  # the reference's leading space
    assert codec.decode(encoded.decoder_ids) == text
    assert not encoded.truncated


def test_codec_truncates_to_the_block_size_and_says_so():
    codec = grammar_codec()
    encoded = codec.encode("the chef cooked the great soup in the kitchen and it was wonderful .", 6)
    assert encoded.truncated
    assert len(encoded.encoder_ids) == 6 and len(encoded.decoder_ids) == 6
    assert codec.eos_id not in encoded.decoder_ids  # a cut sentence did not end


def test_batched_encoding_gives_the_ids_of_one_encode_per_sentence():
    codec = grammar_codec()
    texts = [s.text for s in generate_corpus(30, seed=3)]
    texts += ["  the chef cooked .  ", "the chef " * 30, "café naïve — ünïcode", "x"]
    for block_size in (6, 16, 64):
        assert codec.encode_many(texts, block_size) == [codec.encode(t, block_size) for t in texts]
    assert codec.encode_many([], 16) == []
    # A backend with truncation of its own is not called directly (its ids would be cut).
    backend = codec.encoder_tokenizer.backend_tokenizer
    backend.enable_truncation(3)
    try:
        assert codec.encode_many(texts, 64) == [codec.encode(t, 64) for t in texts]
    finally:
        backend.no_truncation()  # the codec is shared by other tests


def test_codec_round_trips_through_save_pretrained(tmp_path):
    codec = grammar_codec()
    codec.save_pretrained(tmp_path)
    loaded = type(codec).from_pretrained(tmp_path)
    text = "tomorrow , the band will record the lovely song ."
    assert loaded.encode(text, 64) == codec.encode(text, 64)


def test_reads_plain_labeled_and_jsonl_files(tmp_path):
    (tmp_path / "plain.txt").write_text("first sentence .\n\nsecond one .\n")
    (tmp_path / "labeled.tsv").write_text("pos\tgood film .\nneg\tbad film .\n")
    (tmp_path / "records.jsonl").write_text(
        json.dumps({"text": "a b", "label": 1}) + "\n" + json.dumps({"text": "c"}) + "\n"
    )
    plain = read_sentences(tmp_path / "plain.txt")
    assert plain.texts == ["first sentence .", "second one ."] and plain.labels is None
    assert plain.stats.blank_lines == 1
    labeled = read_sentences(tmp_path / "labeled.tsv", require_labels=True)
    assert labeled.labels == ["pos", "neg"] and labeled.texts == ["good film .", "bad film ."]
    assert [t for t, _ in iter_sentences(tmp_path / "records.jsonl")] == ["a b", "c"]
    with pytest.raises(UserError, match="have no label while others do"):
        read_sentences(tmp_path / "records.jsonl")


def test_a_folder_of_shards_is_read_in_sorted_order(tmp_path):
    (tmp_path / "shard_01.txt").write_text("b .\n")
    (tmp_path / "shard_00.txt").write_text("a .\n")
    (tmp_path / "notes.bin").write_bytes(b"\x00\x01")
    assert read_sentences(tmp_path).texts == ["a .", "b ."]


def test_undecodable_bytes_are_replaced_and_counted(tmp_path):
    path = tmp_path / "broken.txt"
    path.write_bytes(b"good line .\nbad \xff\xfe line .\n")
    records = read_sentences(path)
    assert records.stats.undecodable_lines == 1
    assert records.texts[1] == "bad \ufffd\ufffd line ."


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "no sentences"),
        (b"\n \n", "no sentences"),
        (b"pos\tgood .\njust text\n", "missing label"),
        (b"{not json}\n", "not valid JSON"),
    ],
)
def test_bad_files_are_one_line_user_errors(tmp_path, content, match):
    path = tmp_path / ("data.jsonl" if b"{" in content else "data.txt")
    path.write_bytes(content)
    with pytest.raises(UserError, match=match) as error:
        read_sentences(path, require_labels=b"\t" in content)
    assert "\n" not in str(error.value)


def test_missing_labels_are_refused_when_labels_are_required(tmp_path):
    path = tmp_path / "plain.txt"
    path.write_text("no label here .\n")
    with pytest.raises(UserError, match="have no label"):
        read_sentences(path, require_labels=True)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_sentences(tmp_path / "absent.txt")


def test_token_cache_is_memory_mapped_and_round_trips(tmp_path):
    codec = grammar_codec()
    texts = [s.text for s in generate_corpus(40, seed=2)] + ["the chef " * 30]
    corpus = build_token_cache(iter(texts), codec, 16, tmp_path / "cache")
    assert len(corpus) == 41 and corpus.meta["truncated"] >= 1
    assert isinstance(corpus._dec, np.memmap)
    for i in (0, 17, 40):
        encoded = codec.encode(texts[i], 16)
        enc, dec = corpus[i]
        assert enc.tolist() == encoded.encoder_ids and dec.tolist() == encoded.decoder_ids
    assert corpus.decoder_lengths.tolist() == [len(codec.encode(t, 16).decoder_ids) for t in texts]
    reopened = open_or_build_token_cache(iter([]), codec, 16, tmp_path / "cache")  # reused, not rebuilt
    assert len(reopened) == 41
    assert len(TokenizedCorpus(tmp_path / "cache")) == 41


def test_token_cache_rejects_ids_outside_the_model_vocabulary(tmp_path):
    import json

    codec = grammar_codec()
    texts = [s.text for s in generate_corpus(30, seed=4)]
    corpus = build_token_cache(texts, codec, 16, tmp_path)
    # The largest ids are recorded at build time (opening a large cache reads no token page).
    assert corpus.meta["max_encoder_id"] == int(np.asarray(corpus._enc).max())
    assert corpus.meta["max_decoder_id"] == int(np.asarray(corpus._dec).max())
    corpus.check_vocab(codec.encoder_vocab_size, codec.decoder_vocab_size)
    with pytest.raises(UserError, match="does not match the model"):
        corpus.check_vocab(codec.encoder_vocab_size, 10)
    # A cache built before the ids were recorded is scanned instead.
    meta = {k: v for k, v in corpus.meta.items() if not k.startswith("max_")}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    older = TokenizedCorpus(tmp_path)
    older.check_vocab(codec.encoder_vocab_size, codec.decoder_vocab_size)
    with pytest.raises(UserError, match=f"token id {corpus.meta['max_decoder_id']} in the decoder"):
        older.check_vocab(codec.encoder_vocab_size, 10)


def test_collate_right_pads_with_masks():
    batch = collate([([2, 5, 3], [1, 7, 8, 2]), ([2, 3], [1, 2])], encoder_pad_id=0, decoder_pad_id=9)
    assert batch.encoder_ids.tolist() == [[2, 5, 3], [2, 3, 0]]
    assert batch.decoder_ids.tolist() == [[1, 7, 8, 2], [1, 2, 9, 9]]
    assert batch.decoder_mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch.encoder_mask.dtype == torch.long


def test_a_runs_tokenizers_are_built_once_and_then_reused_by_every_process(tmp_path):
    texts = [s.text for s in generate_corpus(200, seed=0)]
    built = []

    def training_texts() -> list[str]:
        built.append(True)
        return texts

    folder = tmp_path / "tokenizers"
    first = open_or_build_codec(folder, ModelOptions(vocab_size=200), training_texts)
    again = open_or_build_codec(folder, ModelOptions(vocab_size=200), training_texts)
    assert len(built) == 1  # the second process (or a resume) finds them on disk
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    # A token cache built with the first codec is valid for the codec later processes read back.
    corpus = build_token_cache(texts[:20], first, 32, tmp_path / "cache")
    assert corpus.matches(again, 32)
    assert open_or_build_token_cache(iter([]), again, 32, tmp_path / "cache").meta == corpus.meta


# --------------------------------------------------------------------------- the original's formats


def _shard_records(tokenizer, texts: list[str]) -> list[dict]:
    """Records as the original's TokenDataset writes them: <BOS> ' ' + text <EOS> (GPT-2 side)."""
    records = []
    for text in texts:
        gpt2 = [
            tokenizer.bos_token_id,
            *tokenizer.encode(" " + text, add_special_tokens=False),
            tokenizer.eos_token_id,
        ]
        bert = [2, *range(5, 5 + len(text.split())), 3]  # the shard's BERT side is not read
        records.append(
            {
                "bert_token": bert,
                "bert_token_length": len(bert),
                "gpt2_token": gpt2,
                "gpt2_token_length": len(gpt2),
            }
        )
    return records


def test_the_originals_json_shards_are_read_as_a_file_and_as_a_folder(tmp_path):
    tokenizer = grammar_codec().decoder_tokenizer
    texts = [s.text for s in generate_corpus(11, seed=4)]
    folder = tmp_path / "wikipedia_json_64_filtered"
    folder.mkdir()
    for index, text in enumerate(texts):  # one sentence per shard: the order is visible
        shard = folder / f"wikipedia.segmented.nltk.split.seq64.{index}.json"
        shard.write_text(json.dumps(_shard_records(tokenizer, [text])))
    one = folder / "wikipedia.segmented.nltk.split.seq64.3.json"
    assert [t for t, _ in iter_sentences(one, shard_tokenizer=tokenizer)] == [texts[3]]
    # Shards 0, 1, ..., 10 in numeric order (sorted names would put 10 before 2), as the original walks them.
    assert read_sentences(folder, shard_tokenizer=tokenizer).texts == texts
    assert read_sentences(folder, "optimus_json", shard_tokenizer=tokenizer).texts == texts
    with pytest.raises(UserError, match="--shard-tokenizer"):
        read_sentences(one)


def test_a_malformed_record_or_line_is_skipped_and_counted_in_a_streamed_corpus(tmp_path, caplog):
    tokenizer = grammar_codec().decoder_tokenizer
    texts = [s.text for s in generate_corpus(3, seed=5)]
    records = _shard_records(tokenizer, texts)
    records.insert(1, {"bert_token": [2, 3]})  # no gpt2_token
    shard = tmp_path / "shard.0.json"
    shard.write_text(json.dumps(records))
    stats = ReadStats()
    with caplog.at_level("WARNING", logger="optimus.data"):
        got = [
            t for t, _ in iter_sentences(shard, stats=stats, on_malformed="skip", shard_tokenizer=tokenizer)
        ]
    assert got == texts and stats.malformed == 1 and "shard.0.json[1]" in stats.first_malformed
    assert "skipped 1 malformed" in caplog.text
    with pytest.raises(UserError, match=r"shard.0.json\[1\]: a shard record needs 'gpt2_token'"):
        read_sentences(shard, shard_tokenizer=tokenizer)
    # The same for a line file: a broken JSON line in the middle of a training stream.
    lines = tmp_path / "train.jsonl"
    lines.write_text('{"text": "first ."}\n{"text": "second .\n{"text": "third ."}\n')
    stats = ReadStats()
    assert [t for t, _ in iter_sentences(lines, stats=stats, on_malformed="skip")] == ["first .", "third ."]
    assert stats.malformed == 1 and stats.first_malformed.startswith(f"{lines}:2")
    # optimus-train streams its training file leniently (and reads its evaluation file strictly).
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("held out .\n")
    seen = ReadStats()
    streamed, _ = training_and_held_out_texts(str(lines), str(held_out), "auto", 0, 1, 0, stats=seen)
    assert list(streamed) == ["first .", "third ."] and seen.malformed == 1
    with pytest.raises(UserError, match="not valid JSON"):
        training_and_held_out_texts(str(held_out), str(lines), "auto", 0, 1, 0)


def test_context_tab_response_is_never_read_as_label_tab_text(tmp_path):
    dialogue = tmp_path / "dialogue.txt"
    # The first line alone looks labelled; the file as a whole is context<TAB>response.
    dialogue.write_text("ok\tsure , see you then .\nwhat time is it ?\tnoon .\nhow are you ?\tfine .\n")
    with pytest.raises(UserError, match="not label<TAB>text.*--data-format") as error:
        read_sentences(dialogue)
    assert "\n" not in str(error.value)
    whole = read_sentences(dialogue, "text")
    assert whole.labels is None and whole.texts[1] == "what time is it ?\tnoon ."
    # Yelp's label<TAB>text over many lines is still detected.
    yelp = tmp_path / "yelp.txt"
    yelp.write_text("".join(f"{i % 2}\tthe food was {'good' if i % 2 else 'bad'} .\n" for i in range(300)))
    assert read_sentences(yelp).labels[:3] == ["0", "1", "0"]
