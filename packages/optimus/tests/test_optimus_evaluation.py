"""Perplexity's token counts (ours and the original's), over-long test sentences, the model's own block size.

A word-level codec (one token per word, on both sides) makes every count a closed form of the
sentences' word counts.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from optimus_tiny import tiny_vae
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import BertTokenizer, PreTrainedTokenizerFast

from optimus import evaluate, generate
from optimus.evaluation import evaluate_model
from optimus.latents import posterior_means
from optimus.saved_model import save_trained
from optimus.tokenization import SentenceCodec

WORDS = ["the", "cat", "dog", "sat", "ran", "on", "under", "a", "mat", "rug", "big", "small"]
SENTENCES = ["the cat sat", "the big dog ran on a", "a small cat sat under the mat"]  # 3, 6, 7 words


def word_codec() -> SentenceCodec:
    encoder = BertTokenizer(
        vocab={t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    )
    vocab = {t: i for i, t in enumerate(["<PAD>", "<BOS>", "<EOS>", "<UNK>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<UNK>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    decoder = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<PAD>", bos_token="<BOS>", eos_token="<EOS>", unk_token="<UNK>"
    )
    return SentenceCodec(encoder, decoder)


@pytest.fixture
def model_and_codec():
    torch.manual_seed(0)
    codec = word_codec()
    assert (codec.decoder_pad_id, codec.bos_id, codec.eos_id, codec.encoder_pad_id) == (
        0,
        1,
        2,
        0,
    )  # tiny_vae's
    return tiny_vae(vocab=20), codec


def test_ppl_is_reported_over_predicted_tokens_and_over_the_originals_count(model_and_codec):
    model, codec = model_and_codec
    torch.manual_seed(1)
    result = evaluate_model(model, codec, SENTENCES, torch.device("cpu"), num_iw_samples=3, block_size=16)
    words = [len(s.split()) for s in SENTENCES]
    # Ours: every predicted token, the words and <EOS>. The original's calc_iwnll: gpt2_token_length,
    # i.e. <BOS> words <EOS> — one more per sentence.
    assert result["num_tokens"] == sum(w + 1 for w in words) == 19
    assert result["num_tokens_original"] == sum(w + 2 for w in words) == 22
    total_nll = result["nll"] * result["num_sentences"]
    assert result["ppl"] == pytest.approx(math.exp(total_nll / 19), rel=1e-9)
    assert result["ppl_original"] == pytest.approx(math.exp(total_nll / 22), rel=1e-9)
    assert result["dropped"] == result["truncated"] == 0


@pytest.mark.parametrize(
    "policy,sentences,tokens,tokens_original,dropped,truncated",
    [
        # block 6 holds <BOS> + 4 words + <EOS>: the 6- and 7-word sentences do not fit.
        ("drop", 1, 3 + 1, 3 + 2, 2, 0),
        # Truncated to <BOS> + 5 words (no <EOS>: the sentence did not end there): 5 predicted each.
        ("truncate", 3, (3 + 1) + 5 + 5, (3 + 2) + 6 + 6, 0, 2),
    ],
)
def test_over_long_sentences_are_dropped_or_truncated_and_counted(
    model_and_codec, policy, sentences, tokens, tokens_original, dropped, truncated
):
    model, codec = model_and_codec
    result = evaluate_model(
        model, codec, SENTENCES, torch.device("cpu"), 2, block_size=6, long_sentences=policy
    )
    assert (result["num_sentences"], result["num_tokens"], result["num_tokens_original"]) == (
        sentences,
        tokens,
        tokens_original,
    )
    assert (result["dropped"], result["truncated"]) == (dropped, truncated)


def _saved_with_block_size(tmp_path, model_and_codec, block_size: int):
    model, codec = model_and_codec
    model.config.block_size = block_size
    return save_trained(tmp_path / "model", model, codec)


def test_optimus_eval_uses_the_models_own_block_size(tmp_path, model_and_codec, capsys):
    folder = _saved_with_block_size(tmp_path, model_and_codec, 6)
    test_file = tmp_path / "test.txt"
    test_file.write_text("\n".join(SENTENCES) + "\n")
    out = tmp_path / "eval.json"
    assert evaluate.main(["--model", str(folder), "--test-file", str(test_file), "--iw-samples", "2",
                          "--output", str(out)]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    assert (result["block_size"], result["long_sentences"], result["dropped"]) == (6, "drop", 2)
    assert evaluate.main(["--model", str(folder), "--test-file", str(test_file), "--block-size", "200"]) == 2
    assert "exceeds what the model can position" in capsys.readouterr().err


def test_latents_and_generation_use_the_models_own_block_size(tmp_path, model_and_codec):
    folder = _saved_with_block_size(tmp_path, model_and_codec, 6)
    model, codec = model_and_codec
    long_sentence = SENTENCES[2]
    # The encoder reads [CLS] + 4 words + [SEP]: the sentence cut to the model's 6 tokens.
    cut = codec.encode(long_sentence, 6).encoder_ids
    assert len(cut) == 6
    ids = torch.tensor([cut])
    with torch.no_grad():
        expected = model.encode(ids, torch.ones_like(ids))[0]
        whole = torch.tensor([codec.encode(long_sentence, 64).encoder_ids])
        uncut = model.encode(whole, torch.ones_like(whole))[0]
    got = posterior_means(model, codec, [long_sentence], torch.device("cpu"))
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, uncut)
    # Generation stops within the block: <BOS> + at most 5 new tokens.
    out = tmp_path / "gen.json"
    assert generate.main(["--model", str(folder), "--mode", "prior", "--num", "4", "--output", str(out)]) == 0
    assert all(len(text.split()) <= 5 for text in json.loads(out.read_text())["sentences"])


def test_the_importance_sample_chunk_changes_memory_not_the_numbers(model_and_codec):
    model, codec = model_and_codec
    results = []
    for chunk in (1, 2, 5):
        torch.manual_seed(3)  # the same K = 5 samples, scored 1, 2 or 5 at a time
        results.append(
            evaluate_model(
                model, codec, SENTENCES, torch.device("cpu"), num_iw_samples=5, block_size=16, iw_chunk=chunk
            )
        )
    for other in results[1:]:
        assert other["nll"] == pytest.approx(results[0]["nll"], rel=1e-6)
        assert other["ppl"] == pytest.approx(results[0]["ppl"], rel=1e-6)
    with pytest.raises(Exception, match="iw_chunk must be at least 1"):
        evaluate_model(model, codec, SENTENCES, torch.device("cpu"), num_iw_samples=5, iw_chunk=0)


def test_attribute_reconstruction_scores_each_attribute_and_counts_distinct_outputs(monkeypatch):
    from optimus.grammar import generate_corpus
    from optimus.latents import DecodingOptions

    sentences = generate_corpus(40, seed=5)
    # A decoder that returns sentence 0 for every odd input and the input itself for even ones.
    outputs = [s.text if i % 2 == 0 else sentences[0].text for i, s in enumerate(sentences)]
    monkeypatch.setattr(
        generate, "posterior_means", lambda model, codec, texts, device: torch.zeros(len(texts), 2)
    )
    monkeypatch.setattr(generate, "decode_latents", lambda model, codec, z, options: list(outputs))
    result = generate.attribute_reconstruction(None, None, sentences, DecodingOptions(), "cpu")
    first = sentences[0]
    for name in ("sentiment", "topic", "tense"):
        odd_hits = sum(getattr(s, name) == getattr(first, name) for s in sentences[1::2])
        assert result[name] == pytest.approx((20 + odd_hits) / 40)
    odd_all = sum(s.attributes() == first.attributes() for s in sentences[1::2])
    assert result["all"] == pytest.approx((20 + odd_all) / 40)
    assert result["distinct"] == pytest.approx(len(set(outputs)) / 40)
    assert result["outputs"] == outputs
