"""optimus-convert: the original's checkpoint-encoder/-decoder folders against the original's forward pass."""

from __future__ import annotations

import json

import pytest
import torch
from optimus_original import (
    GPT2_BASE_VOCAB,
    original_decoder_logits,
    original_posterior,
    write_bert_tokenizer,
    write_gpt2_tokenizer,
    write_original_checkpoints,
)

from optimus import classify, convert, evaluate, generate
from optimus.saved_model import load_trained
from optimus.vae import OptimusVAE


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    return write_bert_tokenizer(root / "bert"), write_gpt2_tokenizer(root / "gpt2")


def _convert(tmp_path, tokenizers, *extra: str, checkpoints=None) -> tuple[dict, object]:
    original = checkpoints or write_original_checkpoints(tmp_path / "original")
    out = tmp_path / "converted"
    args = [
        "--encoder", str(original["paths"]["encoder"]), "--decoder", str(original["paths"]["decoder"]),
        "--out", str(out),
        "--encoder-tokenizer", str(tokenizers[0]), "--decoder-tokenizer", str(tokenizers[1]),
        *extra,
    ]  # fmt: skip
    assert convert.main(args) == 0
    return original, out


@pytest.mark.parametrize(
    "memory,embedding,latent,legacy",
    [(True, True, 32, False), (True, False, 32, True), (False, True, 768, False)],
)
def test_converted_model_matches_the_originals_forward(
    tmp_path, tokenizers, memory, embedding, latent, legacy
):
    original = write_original_checkpoints(tmp_path / "original", latent=latent, legacy=legacy)
    flags = [] if memory else ["--no-memory-injection"]
    flags += [] if embedding else ["--no-embedding-injection"]
    _, out = _convert(tmp_path, tokenizers, *flags, checkpoints=original)
    model = OptimusVAE.from_pretrained(out).eval()
    assert model.latent_size == latent
    assert (model.memory_projection is not None, model.embedding_projection is not None) == (
        memory,
        embedding,
    )

    generator = torch.Generator().manual_seed(1)
    encoder_ids = torch.randint(5, 17, (3, 9), generator=generator)
    encoder_ids[:, 0], encoder_ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    encoder_mask = torch.ones_like(encoder_ids)
    encoder_ids[2, 6:], encoder_mask[2, 6:] = 0, 0  # a padded row: the original masks inputs > 0
    decoder_ids = torch.randint(0, GPT2_BASE_VOCAB + 3, (3, 11), generator=generator)
    z = torch.randn(3, latent, generator=generator)

    with torch.no_grad():
        mean, logvar = model.encode(encoder_ids, encoder_mask)
        expected_mean, expected_logvar = original_posterior(
            original["encoder"], original["encoder_config"], encoder_ids, encoder_mask
        )
        logits = model.decoder_logits(z, decoder_ids, torch.ones_like(decoder_ids))
        expected_logits = original_decoder_logits(
            original["decoder"], original["decoder_config"], decoder_ids, z, memory, embedding
        )
    torch.testing.assert_close(mean, expected_mean, atol=1e-4, rtol=0)
    torch.testing.assert_close(logvar, expected_logvar, atol=1e-4, rtol=0)
    torch.testing.assert_close(logits, expected_logits, atol=1e-4, rtol=0)
    # Not vacuous: z moves the logits through whichever injection is on.
    with torch.no_grad():
        assert (
            model.decoder_logits(z + 1, decoder_ids, torch.ones_like(decoder_ids)) - logits
        ).abs().max() > 1e-3


def test_decoder_tokenizer_gets_pad_bos_eos_in_the_originals_order_and_nothing_is_resized(
    tmp_path, tokenizers
):
    original, out = _convert(tmp_path, tokenizers)
    model, codec = load_trained(out, torch.device("cpu"))
    # The original: add_special_tokens({'pad_token': '<PAD>', 'bos_token': '<BOS>', 'eos_token': '<EOS>'})
    # after GPT-2's vocabulary, then resize_token_embeddings(len(tokenizer)).
    base = GPT2_BASE_VOCAB
    assert (codec.decoder_pad_id, codec.bos_id, codec.eos_id) == (base, base + 1, base + 2)
    assert (model.pad_id, model.bos_id, model.eos_id) == (base, base + 1, base + 2)
    assert model.decoder.config.vocab_size == original["decoder_config"]["vocab_size"] == base + 3
    torch.testing.assert_close(
        model.decoder.transformer.wte.weight, original["decoder"]["transformer.wte.weight"]
    )
    assert model.decoder.lm_head.weight.data_ptr() == model.decoder.transformer.wte.weight.data_ptr()
    assert codec.encoder_tokenizer.cls_token_id == 2 and codec.encoder_pad_id == 0
    # The original's sentence layouts: [CLS] x [SEP] and <BOS> ' ' + x <EOS> (GPT-2's prefix space).
    encoded = codec.encode("the cat sat", 32)
    assert encoded.encoder_ids == [2, 5, 7, 9, 3]
    assert encoded.decoder_ids[0] == base + 1 and encoded.decoder_ids[-1] == base + 2
    assert encoded.decoder_ids[1:3] == [256, 257]  # 'Ġt' 'he': the leading space is there
    provenance = json.loads((out / "converted_from.json").read_text())
    assert provenance["latent_size"] == 32 and provenance["memory_injection"] is True
    # The converted folder opens with its block size: the most its 40 positions allow (39 for GPT-2 + slot).
    assert model.block_size == 39


def test_every_inference_cli_accepts_the_converted_model(tmp_path, tokenizers):
    _, out = _convert(tmp_path, tokenizers, "--block-size", "36")
    test_file = tmp_path / "test.txt"
    test_file.write_text("the cat sat on the mat .\nthe big dog ran .\na small cat sat under the rug .\n")
    result_path = tmp_path / "eval.json"
    assert evaluate.main(["--model", str(out), "--test-file", str(test_file), "--iw-samples", "2",
                          "--output", str(result_path)]) == 0  # fmt: skip
    result = json.loads(result_path.read_text())
    assert result["num_sentences"] == 3 and result["block_size"] == 36
    gen_path = tmp_path / "gen.json"
    assert generate.main(["--model", str(out), "--mode", "reconstruct", "--sentences", "the cat sat .",
                          "--max-length", "6", "--output", str(gen_path)]) == 0  # fmt: skip
    assert len(json.loads(gen_path.read_text())["pairs"]) == 1
    (tmp_path / "train.tsv").write_text("a\tthe cat sat .\nb\tthe dog ran .\n" * 4)
    (tmp_path / "held.tsv").write_text("a\tthe big cat sat .\nb\tthe small dog ran .\n")
    classify_path = tmp_path / "classify.json"
    assert classify.main(["--model", str(out), "--train-file", str(tmp_path / "train.tsv"),
                          "--test-file", str(tmp_path / "held.tsv"), "--shots", "1", "all", "--repeats", "1",
                          "--output", str(classify_path)]) == 0  # fmt: skip
    assert set(json.loads(classify_path.read_text())["curves"]) == {"latent", "pooled"}


def _error_of(capsys, args) -> str:
    assert convert.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("optimus-convert: error:") and "\n" not in err
    return err


def test_folders_that_are_not_original_checkpoints_are_one_line_errors(tmp_path, tokenizers, capsys):
    original = write_original_checkpoints(tmp_path / "original")
    enc, dec = str(original["paths"]["encoder"]), str(original["paths"]["decoder"])
    toks = ["--encoder-tokenizer", str(tokenizers[0]), "--decoder-tokenizer", str(tokenizers[1])]
    empty = tmp_path / "empty"
    empty.mkdir()
    out = ["--out", str(tmp_path / "out")]
    assert "config.json and pytorch_model.bin missing" in _error_of(
        capsys, ["--encoder", str(empty), "--decoder", dec, *out, *toks]
    )
    # Encoder and decoder swapped: the missing latent projection is named, and what the folder is.
    err = _error_of(capsys, ["--encoder", dec, "--decoder", enc, *out, *toks])
    assert "'linear.weight'" in err and "looks like a decoder checkpoint" in err
    # A pickle that is not plain tensors is refused by torch.load(weights_only=True), not executed.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    torch.save({"args": object.__new__(_Namespace)}, bad / "pytorch_model.bin")
    assert "weights_only=True" in _error_of(capsys, ["--encoder", str(bad), "--decoder", dec, *out, *toks])
    # A GPT-2 tokenizer that, with <PAD> <BOS> <EOS>, does not give the checkpoint's vocabulary.
    assert "embeds 262" in _error_of(
        capsys,
        [
            "--encoder",
            enc,
            "--decoder",
            dec,
            *out,
            "--encoder-tokenizer",
            str(tokenizers[0]),
            "--decoder-tokenizer",
            str(tokenizers[0]),
        ],  # fmt: skip
    )
    assert not (tmp_path / "out").exists()


class _Namespace:  # stands in for the argparse.Namespace the original pickles beside its weights
    pass
