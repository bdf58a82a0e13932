"""Encoder shapes and masking invariances, the MLM masking rules, the heads and the tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

from prevalent.model import (
    IGNORE_INDEX,
    EncoderConfig,
    InstructionTokenizer,
    MaskingRule,
    PrevalentEncoder,
    PrevalentPretrainingModel,
    mask_tokens,
)
from prevalent.model.pretrained import load_bundle, save_bundle

INSTRUCTIONS = [
    "Walk past the kitchen and stop at the bottom of the stairs.",
    "Turn left at the sofa, go through the door and wait by the bed.",
    "Exit the bathroom, walk down the hallway and stop next to the plant.",
]


def tiny_config(vocab_size: int = 50, **overrides) -> EncoderConfig:
    values = dict(
        vocab_size=vocab_size,
        hidden_size=16,
        num_attention_heads=2,
        intermediate_size=32,
        text_layers=2,
        cross_layers=2,
        image_feature_size=12,
        angle_feature_size=4,
        max_text_length=24,
        dropout=0.0,
    )
    values.update(overrides)
    return EncoderConfig(**values)


def random_inputs(config: EncoderConfig, batch: int = 3, length: int = 10, views: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, config.vocab_size, (batch, length), generator=g)
    ids[:, 0] = 2
    text_mask = torch.ones(batch, length, dtype=torch.bool)
    vision = torch.randn(batch, views, config.vision_input_size, generator=g)
    return ids, text_mask, vision


def test_encoder_output_shapes():
    config = tiny_config()
    encoder = PrevalentEncoder(config).eval()
    ids, mask, vision = random_inputs(config)
    out = encoder(ids, mask, vision)
    assert out.text_states.shape == (3, 10, 16)
    assert out.vision_states.shape == (3, 7, 16)
    assert out.pooled.shape == (3, 16)
    assert out.pooled.abs().max() <= 1.0  # tanh pooler


def test_encode_text_then_cross_encode_equals_forward():
    config = tiny_config()
    encoder = PrevalentEncoder(config).eval()
    ids, mask, vision = random_inputs(config)
    whole = encoder(ids, mask, vision)
    split = encoder.cross_encode(encoder.encode_text(ids, mask), mask, vision)
    torch.testing.assert_close(whole.pooled, split.pooled)
    torch.testing.assert_close(whole.vision_states, split.vision_states)


def test_padded_text_tokens_do_not_change_valid_outputs():
    config = tiny_config()
    encoder = PrevalentEncoder(config).eval()
    ids, mask, vision = random_inputs(config, length=6)
    padded_ids = torch.cat([ids, torch.randint(5, 50, (3, 4))], dim=1)  # garbage behind the mask
    padded_mask = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], dim=1)
    short = encoder(ids, mask, vision)
    long = encoder(padded_ids, padded_mask, vision)
    torch.testing.assert_close(short.pooled, long.pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(short.text_states, long.text_states[:, :6], atol=1e-5, rtol=1e-5)


def test_masked_view_tokens_do_not_change_valid_outputs():
    config = tiny_config()
    encoder = PrevalentEncoder(config).eval()
    ids, mask, vision = random_inputs(config, views=5)
    extra = torch.randn(3, 2, config.vision_input_size) * 100
    vision_mask = torch.cat([torch.ones(3, 5, dtype=torch.bool), torch.zeros(3, 2, dtype=torch.bool)], dim=1)
    a = encoder(ids, mask, vision)
    b = encoder(ids, mask, torch.cat([vision, extra], dim=1), vision_mask)
    torch.testing.assert_close(a.pooled, b.pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.vision_states, b.vision_states[:, :5], atol=1e-5, rtol=1e-5)


def test_vision_features_change_the_pooled_output():
    config = tiny_config()
    encoder = PrevalentEncoder(config).eval()
    ids, mask, vision = random_inputs(config)
    a = encoder(ids, mask, vision).pooled
    b = encoder(ids, mask, vision + 1.0).pooled
    assert not torch.allclose(a, b)


def test_wrong_vision_width_and_long_text_are_clear_errors():
    config = tiny_config()
    encoder = PrevalentEncoder(config)
    ids, mask, vision = random_inputs(config)
    with pytest.raises(ValueError, match="12 image \\+ 4 angle = 16"):
        encoder(ids, mask, vision[..., :-1])
    too_long = torch.ones(1, config.max_text_length + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="max_text_length"):
        encoder.encode_text(too_long, torch.ones_like(too_long, dtype=torch.bool))


def test_paper_config_has_the_published_sizes():
    config = EncoderConfig.paper()
    assert (config.text_layers, config.cross_layers, config.hidden_size) == (9, 4, 768)
    assert config.vision_input_size == 2048 + 128


# ----------------------------------------------------------------------------- masking


def _rule(vocab_size: int = 100) -> MaskingRule:
    return MaskingRule(mask_token_id=4, vocab_size=vocab_size, special_token_ids=(0, 2, 3, 4))


def test_masking_rates_match_15_percent_and_80_10_10():
    rule = _rule()
    ids = torch.randint(5, 100, (400, 250), generator=torch.Generator().manual_seed(1))
    corrupted, labels = mask_tokens(ids, rule, torch.Generator().manual_seed(2))
    chosen = labels != IGNORE_INDEX
    n = int(chosen.sum())
    assert abs(n / ids.numel() - 0.15) < 0.005
    as_mask = (corrupted == 4) & chosen
    kept = (corrupted == ids) & chosen
    assert abs(int(as_mask.sum()) / n - 0.8) < 0.01
    # A random replacement may draw the original token (1 in 95): the "kept" share is 0.1 + 0.1/95.
    assert abs(int(kept.sum()) / n - (0.1 + 0.1 / 95)) < 0.01
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(corrupted[~chosen], ids[~chosen])


def test_masking_never_chooses_nor_draws_special_tokens():
    rule = _rule(vocab_size=20)
    ids = torch.randint(0, 20, (200, 50), generator=torch.Generator().manual_seed(3))
    corrupted, labels = mask_tokens(ids, rule, torch.Generator().manual_seed(4))
    special = torch.isin(ids, torch.tensor([0, 2, 3, 4]))
    assert (labels[special] == IGNORE_INDEX).all()
    assert torch.equal(corrupted[special], ids[special])
    replaced = (labels != IGNORE_INDEX) & (corrupted != ids) & (corrupted != 4)
    assert replaced.any()
    assert not torch.isin(corrupted[replaced], torch.tensor([0, 2, 3, 4])).any()


def test_masking_is_reproducible_and_leaves_input_untouched():
    rule = _rule()
    ids = torch.randint(5, 100, (8, 30), generator=torch.Generator().manual_seed(5))
    before = ids.clone()
    a = mask_tokens(ids, rule, torch.Generator().manual_seed(7))
    b = mask_tokens(ids, rule, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(ids, before)


# ----------------------------------------------------------------------------- heads


def _pretraining_batch(config: EncoderConfig, candidates: int = 3):
    ids, mask, panorama = random_inputs(config, views=6)
    cand = torch.randn(3, candidates, config.vision_input_size, generator=torch.Generator().manual_seed(9))
    views = torch.cat([panorama, cand], dim=1)
    vision_mask = torch.ones(views.shape[:2], dtype=torch.bool)
    vision_mask[2, -1] = False  # third item has only 2 candidates
    return ids, mask, views, vision_mask


def test_action_logits_put_stop_first_and_forbid_padded_candidates():
    config = tiny_config()
    model = PrevalentPretrainingModel(config).eval()
    ids, mask, views, vision_mask = _pretraining_batch(config)
    labels = torch.full_like(ids, IGNORE_INDEX)
    out = model(ids, mask, views, vision_mask, 3, labels, torch.tensor([0, 1, 2]))
    assert out.action_logits.shape == (3, 4)
    assert torch.isinf(out.action_logits[2, 3]) and out.action_logits[2, 3] < 0
    assert torch.isfinite(out.action_logits[:2]).all()
    assert out.mlm_logits.shape == (0, config.vocab_size)
    assert out.mlm_loss.item() == 0.0  # nothing masked: zero, not NaN


def test_mlm_decoder_is_tied_to_word_embeddings():
    config = tiny_config()
    model = PrevalentPretrainingModel(config)
    with torch.no_grad():
        model.encoder.word_embeddings.weight[7].fill_(0.0)
        model.mlm_head.bias.zero_()
        model.mlm_head.bias[7] = 3.0
    ids, mask, views, vision_mask = _pretraining_batch(config)
    labels = ids.clone()  # score every token
    out = model(ids, mask, views, vision_mask, 3, labels, torch.zeros(3, dtype=torch.long))
    assert out.mlm_logits.shape == (ids.numel(), config.vocab_size)
    torch.testing.assert_close(out.mlm_logits[:, 7], torch.full_like(out.mlm_logits[:, 7], 3.0))


def test_both_losses_fall_when_fitting_one_batch():
    torch.manual_seed(0)
    config = tiny_config()
    model = PrevalentPretrainingModel(config)
    ids, mask, views, vision_mask = _pretraining_batch(config)
    rule = MaskingRule(4, config.vocab_size, (0, 2, 3, 4), mask_probability=0.3)
    masked, labels = mask_tokens(ids, rule, torch.Generator().manual_seed(0))
    actions = torch.tensor([0, 3, 1])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = model(masked, mask, views, vision_mask, 3, labels, actions)
    for _ in range(60):
        out = model(masked, mask, views, vision_mask, 3, labels, actions)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert out.mlm_loss.item() < 0.5 * first.mlm_loss.item()
    assert out.action_loss.item() < 0.5 * first.action_loss.item()
    torch.testing.assert_close(out.loss, out.mlm_loss + out.action_loss)


# ----------------------------------------------------------------------------- tokenizer and bundle


def test_tokenizer_puts_special_tokens_first_and_counts_truncation():
    tok = InstructionTokenizer.train(INSTRUCTIONS, vocab_size=120)
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    batch = tok.encode_batch(INSTRUCTIONS[:2] + ["stop"], max_length=8)
    assert batch.truncated == 2
    assert batch.input_ids.shape == (3, 8)
    assert (batch.input_ids[:2, -1] == tok.sep_id).all()
    assert batch.input_ids[2].tolist()[:3] == [tok.cls_id, tok.tokenizer.token_to_id("stop"), tok.sep_id]
    assert batch.text_mask.sum(1).tolist() == [8, 8, 3]
    assert tok.decode(tok.token_ids("walk past the kitchen", 20)[0]) == "walk past the kitchen"


def test_bundle_round_trip_and_size_mismatch(tmp_path):
    from dgm_core.errors import UserError

    tok = InstructionTokenizer.train(INSTRUCTIONS, vocab_size=120)
    config = tiny_config(vocab_size=tok.vocab_size)
    model = PrevalentPretrainingModel(config)
    save_bundle(tmp_path / "b", model, tok)
    loaded, loaded_tok = load_bundle(tmp_path / "b", expected=config)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert loaded_tok.vocab_size == tok.vocab_size
    with pytest.raises(UserError, match="another encoder size: hidden_size 16 \\(expected 32\\)"):
        load_bundle(tmp_path / "b", expected=tiny_config(vocab_size=tok.vocab_size, hidden_size=32))
    with pytest.raises(UserError, match="no pretrained encoder"):
        load_bundle(tmp_path / "nothing")


def test_bundle_round_trip_keeps_every_tensor_and_the_outputs(tmp_path):
    from dgm_core.testing import check_pretrained_round_trip

    tok = InstructionTokenizer.train(INSTRUCTIONS, vocab_size=120)
    config = tiny_config(vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    model = PrevalentPretrainingModel(config)
    ids, mask, views, vision_mask = _pretraining_batch(config)

    def forward(m):  # every output: losses, MLM logits of every token, action logits, encoder states
        return m(ids, mask, views, vision_mask, 3, ids.clone(), torch.tensor([0, 1, 2]))

    loaded = check_pretrained_round_trip(
        model,
        save=lambda folder: save_bundle(folder, model, tok, extra={"pretrain_steps": 7}),
        load=lambda folder: load_bundle(folder)[0],
        folder=tmp_path / "bundle",
        forward=forward,
    )
    assert loaded.config == config
    saved = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert (saved["format"], saved["version"], saved["pretrain_steps"]) == ("prevalent-encoder", 1, 7)
    assert saved["encoder"] == config.to_dict()
    assert load_bundle(tmp_path / "bundle")[1].vocab_size == tok.vocab_size


def test_a_failed_export_leaves_the_previous_bundle_intact(tmp_path, monkeypatch):
    tok = InstructionTokenizer.train(INSTRUCTIONS, vocab_size=120)
    config = tiny_config(vocab_size=tok.vocab_size)
    first = PrevalentPretrainingModel(config)
    folder = save_bundle(tmp_path / "b", first, tok)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert set(before) == {"config.json", "model.safetensors", "tokenizer.json"}

    def disk_full(path):
        raise OSError("No space left on device")

    monkeypatch.setattr(tok, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_bundle(folder, PrevalentPretrainingModel(config), tok, extra={"pretrain_steps": 1})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no temporary folder left beside it
