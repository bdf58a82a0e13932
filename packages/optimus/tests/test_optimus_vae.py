"""The VAE: memory slot vs a hand-written reference, embedding injection, KV-cache decoding, save/load."""

from __future__ import annotations

import json
import math

import pytest
import torch
from optimus_tiny import tiny_vae
from safetensors import safe_open

from dgm_core.errors import UserError
from dgm_core.pretrained import PretrainedError
from dgm_core.testing import check_pretrained_round_trip
from optimus.saved_model import load_trained, save_trained
from optimus.vae import OptimusConfig, OptimusVAE


def _manual_logits(model: OptimusVAE, z: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """GPT-2 written out by hand, with one extra key/value (the memory vector) in front of every layer."""
    dec = model.decoder
    cfg = dec.config
    tr = dec.transformer
    batch, length = ids.shape
    heads, head_dim = cfg.n_head, cfg.n_embd // cfg.n_head
    first = 1 if model.memory_projection is not None else 0  # the slot holds position 0
    x = tr.wte(ids) + tr.wpe(torch.arange(first, first + length))
    if model.embedding_projection is not None:
        x = x + model.embedding_projection(z)[:, None, :]
    memory = (
        model.memory_projection(z).view(batch, cfg.n_layer, cfg.n_embd) if model.memory_projection else None
    )
    for layer, block in enumerate(tr.h):
        q, k, v = block.attn.c_attn(block.ln_1(x)).split(cfg.n_embd, dim=2)
        slots = 0
        if memory is not None:
            k = torch.cat([memory[:, layer : layer + 1], k], dim=1)
            v = torch.cat([memory[:, layer : layer + 1], v], dim=1)
            slots = 1

        def heads_of(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, -1, heads, head_dim).transpose(1, 2)

        scores = heads_of(q) @ heads_of(k).transpose(-1, -2) / math.sqrt(head_dim)
        # Query i sees the slot and tokens 0..i.
        visible = torch.ones(length, length + slots).tril(diagonal=slots).bool()
        attention = scores.masked_fill(~visible, float("-inf")).softmax(-1) @ heads_of(v)
        x = x + block.attn.c_proj(attention.transpose(1, 2).reshape(batch, length, cfg.n_embd))
        x = x + block.mlp(block.ln_2(x))
    return dec.lm_head(tr.ln_f(x))


@pytest.mark.parametrize("memory,embedding", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_injection_matches_manual_attention_with_an_extra_key_value(memory, embedding, attn):
    torch.manual_seed(0)
    model = tiny_vae(memory=memory, embedding=embedding, attn=attn)
    z = torch.randn(3, 8)
    ids = torch.randint(3, 40, (3, 7))
    got = model.decoder_logits(z, ids, torch.ones_like(ids))
    torch.testing.assert_close(got, _manual_logits(model, z, ids), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("memory,embedding", [(True, False), (False, True)])
def test_each_injection_alone_makes_the_decoder_depend_on_z(memory, embedding):
    torch.manual_seed(1)
    model = tiny_vae(memory=memory, embedding=embedding)
    ids = torch.randint(3, 40, (2, 6))
    z = torch.randn(2, 8)
    a = model.decoder_logits(z, ids, torch.ones_like(ids))
    b = model.decoder_logits(z + 1.0, ids, torch.ones_like(ids))
    assert (a - b).abs().max() > 1e-3
    # Same z, same output: the dependence is on z, not on noise.
    torch.testing.assert_close(a, model.decoder_logits(z, ids, torch.ones_like(ids)))


def test_memory_slot_is_attended_by_every_token_including_the_first():
    torch.manual_seed(2)
    model = tiny_vae(memory=True, embedding=False)
    ids = torch.randint(3, 40, (1, 5))
    z = torch.randn(1, 8)
    delta = model.decoder_logits(z, ids, torch.ones_like(ids)) - model.decoder_logits(
        -z, ids, torch.ones_like(ids)
    )
    assert (delta.abs().amax(dim=-1) > 1e-4).all()  # every position, not only later ones


def test_disabling_both_injections_is_refused():
    with pytest.raises(UserError, match="injection"):
        OptimusVAE(OptimusConfig(latent_size=4, memory_injection=False, embedding_injection=False))


def test_right_padding_does_not_change_the_scores_of_real_tokens():
    torch.manual_seed(3)
    model = tiny_vae()
    z = torch.randn(2, 8)
    ids = torch.randint(3, 40, (2, 8))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    padded = ids.clone()
    padded[1, 5:] = 0
    nll, tokens = model.reconstruction_nll(z, padded, mask)
    short_nll, short_tokens = model.reconstruction_nll(z[1:], ids[1:, :5], torch.ones(1, 5, dtype=torch.long))
    assert tokens.tolist() == [7, 4] and short_tokens.item() == 4
    torch.testing.assert_close(nll[1:], short_nll, atol=1e-5, rtol=1e-5)


def test_reconstruction_nll_is_the_teacher_forced_cross_entropy():
    torch.manual_seed(4)
    model = tiny_vae()
    z = torch.randn(2, 8)
    ids = torch.randint(3, 40, (2, 6))
    logits = model.decoder_logits(z, ids, torch.ones_like(ids))
    expected = -logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1).sum(1)
    nll, _ = model.reconstruction_nll(z, ids, torch.ones_like(ids))
    torch.testing.assert_close(nll, expected)


@pytest.mark.parametrize("memory,embedding", [(True, True), (False, True), (True, False)])
def test_cached_generation_equals_rerunning_the_whole_prefix(memory, embedding):
    torch.manual_seed(5)
    model = tiny_vae(memory=memory, embedding=embedding, attn="sdpa")
    z = torch.randn(4, 8) * 3
    cached = model.generate(z, max_length=12)
    rerun = model.generate(z, max_length=12, use_cache=False)
    assert torch.equal(cached, rerun)
    # And greedy decoding is the argmax of teacher forcing on its own output.
    ids = torch.cat([torch.full((4, 1), model.bos_id), cached], dim=1)
    logits = model.decoder_logits(z, ids, torch.ones_like(ids))
    greedy = logits[:, :-1].argmax(-1)
    finished = torch.cumsum((cached == model.eos_id).long(), dim=1) - (cached == model.eos_id).long() > 0
    assert torch.equal(greedy[~finished], cached[~finished])


def test_sampling_respects_top_k_and_is_reproducible_with_a_generator():
    torch.manual_seed(6)
    model = tiny_vae()
    z = torch.randn(3, 8)
    first = model.generate(z, 8, "sample", top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first, model.generate(z, 8, "greedy"))  # top-1 sampling is greedy
    a = model.generate(z, 8, "sample", temperature=1.5, top_p=0.9, generator=torch.Generator().manual_seed(1))
    b = model.generate(z, 8, "sample", temperature=1.5, top_p=0.9, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def _posterior_mean_and_decoder_logits(model: OptimusVAE) -> dict:
    """A forward that touches every weight: the encoder's posterior mean and the decoder's logits."""
    generator = torch.Generator().manual_seed(0)
    encoder_ids = torch.randint(5, 40, (2, 5), generator=generator)
    decoder_ids = torch.randint(3, 40, (2, 6), generator=generator)
    z = torch.randn(2, model.latent_size, generator=generator)
    return {
        "mean": model.encode(encoder_ids, torch.ones_like(encoder_ids))[0],
        "logits": model.decoder_logits(z, decoder_ids, torch.ones_like(decoder_ids)),
    }


def test_save_and_reload_round_trip_keeps_outputs_and_the_tied_head(tmp_path):
    torch.manual_seed(7)
    # SDPA attention: what a loaded model runs (the attention kernel is a runtime choice, not saved),
    # so both models compute the forward with the same kernels and must agree bit for bit.
    model = tiny_vae(attn="sdpa")
    folder = tmp_path / "model"
    loaded = check_pretrained_round_trip(
        model,
        save=model.save_pretrained,
        load=OptimusVAE.from_pretrained,
        folder=folder,
        forward=_posterior_mean_and_decoder_logits,
    )
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors"}
    assert json.loads((folder / "config.json").read_text())["model_type"] == "optimus"
    # GPT-2's head is its input embedding: one tensor, stored once and tied again after loading.
    assert loaded.decoder.lm_head.weight.data_ptr() == loaded.decoder.transformer.wte.weight.data_ptr()
    with safe_open(folder / "model.safetensors", "pt") as weights:
        stored = set(weights.keys())
    assert len({"decoder.lm_head.weight", "decoder.transformer.wte.weight"} & stored) == 1


def test_a_trained_model_folder_round_trips_with_its_tokenizers(tmp_path):
    from optimus_tiny import grammar_codec

    torch.manual_seed(8)
    model, codec = tiny_vae(vocab=400, attn="sdpa"), grammar_codec()  # a vocabulary that fits the codec
    folder = tmp_path / "model"
    check_pretrained_round_trip(
        model,
        save=lambda path: save_trained(path, model, codec),
        load=lambda path: load_trained(path, torch.device("cpu"))[0],
        folder=folder,
        forward=_posterior_mean_and_decoder_logits,
    )
    assert {"encoder_tokenizer", "decoder_tokenizer"} <= {p.name for p in folder.iterdir()}
    _, reloaded = load_trained(tmp_path, torch.device("cpu"))  # the run directory holding model/
    sentence = "the chef cooked the great soup ."
    assert reloaded.encode(sentence, 32) == codec.encode(sentence, 32)


def test_loading_a_folder_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(PretrainedError, match="is not a saved model: config.json missing"):
        OptimusVAE.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(PretrainedError, match="not an Optimus config"):
        OptimusVAE.from_pretrained(tmp_path)


def test_reparameterize_shapes_and_moments():
    torch.manual_seed(8)
    mean = torch.tensor([[1.0, -2.0]])
    logvar = torch.log(torch.tensor([[0.25, 4.0]]))
    samples = OptimusVAE.reparameterize(mean, logvar, 20000)
    assert samples.shape == (1, 20000, 2)
    torch.testing.assert_close(samples.mean(1), mean, atol=0.05, rtol=0)
    torch.testing.assert_close(samples.var(1), logvar.exp(), atol=0.1, rtol=0.05)
    assert OptimusVAE.reparameterize(mean, logvar).shape == (1, 2)


def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused(tmp_path):
    from optimus_tiny import grammar_codec

    tiny_vae(vocab=40).save_pretrained(tmp_path)
    grammar_codec().save_pretrained(tmp_path)  # 300/400-token tokenizers for a 40-token model
    with pytest.raises(UserError, match="do not match the model's vocabulary"):
        load_trained(tmp_path, torch.device("cpu"))


def test_generation_longer_than_the_decoder_positions_is_refused():
    model = tiny_vae()  # 64 positions, one taken by the memory slot
    with pytest.raises(UserError, match="between 1 and 63"):
        model.generate(torch.zeros(1, 8), max_length=64)
    with pytest.raises(UserError, match="unknown decoding strategy"):
        model.generate(torch.zeros(1, 8), strategy="beam")


def _with(model: OptimusVAE, **changes) -> OptimusVAE:
    """The same weights with other config switches (they shape no parameter)."""
    from dataclasses import replace

    other = OptimusVAE(replace(model.config, **changes))
    other.load_state_dict(model.state_dict())
    return other.eval()


def test_mean_pooling_is_the_masked_mean_of_the_last_hidden_states_and_ignores_padding():
    torch.manual_seed(9)
    model = _with(tiny_vae(), encoder_pooling="mean")
    ids = torch.tensor([[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14]])
    mask = (ids != 0).long()
    hidden = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    expected = torch.stack([hidden[0, :4].mean(0), hidden[1].mean(0)])
    torch.testing.assert_close(model.encoder_features(ids, mask), expected)
    unpadded = model.encoder_features(ids[:1, :4], mask[:1, :4])
    torch.testing.assert_close(model.encoder_features(ids, mask)[:1], unpadded, rtol=1e-5, atol=1e-6)
    mean, _ = model.encode(ids, mask)
    torch.testing.assert_close(mean, model.latent_head(expected).chunk(2, dim=-1)[0])
    # The default is the original's [CLS] pooler.
    pooler = _with(model, encoder_pooling="pooler")
    torch.testing.assert_close(pooler.encoder_features(ids, mask), pooler.encoder(ids, mask).pooler_output)


def test_unit_variance_fixes_the_posterior_variance_and_the_kl_is_half_the_squared_mean():
    from optimus.objective import vae_loss

    torch.manual_seed(10)
    model = _with(tiny_vae(), unit_variance=True)
    ids = torch.tensor([[5, 6, 7, 8]])
    mask = torch.ones_like(ids)
    mean, logvar = model.encode(ids, mask)
    assert torch.equal(logvar, torch.zeros_like(mean))
    terms = vae_loss(torch.zeros(1), torch.ones(1), mean, logvar, beta=1.0)
    torch.testing.assert_close(terms.kl, 0.5 * mean.pow(2).sum())


def test_pooling_and_unit_variance_survive_save_and_old_folders_read_as_the_original(tmp_path):
    model = _with(tiny_vae(), encoder_pooling="mean", unit_variance=True)
    model.save_pretrained(tmp_path / "new")
    loaded = OptimusVAE.from_pretrained(tmp_path / "new")
    assert (loaded.config.encoder_pooling, loaded.config.unit_variance) == ("mean", True)
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    del config["encoder_pooling"], config["unit_variance"]  # a folder saved before the options
    (tmp_path / "new" / "config.json").write_text(json.dumps(config))
    old = OptimusVAE.from_pretrained(tmp_path / "new")
    assert (old.config.encoder_pooling, old.config.unit_variance) == ("pooler", False)
    with pytest.raises(UserError, match="encoder_pooling"):
        _with(model, encoder_pooling="max")
