"""prevalent-convert on a state dict with the original PREVALENT names and shapes, built here.

The original is ``DicAddActionPreTrain`` / ``DicModel`` of PREVALENT_R2R (``tasks/R2R/pretrain_class.py``,
``vilmodel.py``); :func:`original_dic_model` below recomputes its forward pass from the tensors alone,
in plain torch, so the converted encoder is checked against the original's arithmetic rather than
against this package's own modules.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dgm_core.errors import UserError
from prevalent.convert import convert_state_dict, main, rename
from prevalent.env.angles import VIEW_HEADINGS, angle_feature, panorama_angle_features
from prevalent.model.pretrained import load_bundle

HIDDEN, INTER, VOCAB, POS, IMG, ANGLE = 16, 24, 40, 30, 20, 8


def _linear(prefix: str, out: int, inp: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": torch.randn(out, inp, generator=g),
        f"{prefix}.bias": torch.randn(out, generator=g),
    }


def _norm(prefix: str, g: torch.Generator, tf_names: bool = False) -> dict[str, torch.Tensor]:
    w, b = ("gamma", "beta") if tf_names else ("weight", "bias")
    return {
        f"{prefix}.{w}": torch.randn(HIDDEN, generator=g),
        f"{prefix}.{b}": torch.randn(HIDDEN, generator=g),
    }


def _attention(prefix: str, core: str, g: torch.Generator) -> dict[str, torch.Tensor]:
    out = {}
    for proj in ("query", "key", "value"):
        out |= _linear(f"{prefix}.{core}.{proj}", HIDDEN, HIDDEN, g)
    return out | _linear(f"{prefix}.output.dense", HIDDEN, HIDDEN, g) | _norm(f"{prefix}.output.LayerNorm", g)


def original_state_dict(
    text_layers: int = 2, cross_layers: int = 2, tf_names: bool = False, seed: int = 0, angle: int = ANGLE
):
    """The tensor names of the released DicAddActionPreTrain, with tiny shapes."""
    g = torch.Generator().manual_seed(seed)
    words = torch.randn(VOCAB, HIDDEN, generator=g)
    sd = {
        "bert.embeddings.word_embeddings.weight": words,
        "bert.embeddings.position_embeddings.weight": torch.randn(POS, HIDDEN, generator=g),
        "bert.embeddings.token_type_embeddings.weight": torch.randn(2, HIDDEN, generator=g),
    } | _norm("bert.embeddings.LayerNorm", g, tf_names)
    for i in range(text_layers):
        p = f"bert.lalayer.{i}"
        sd |= _attention(f"{p}.attention", "self", g)
        sd |= _linear(f"{p}.intermediate.dense", INTER, HIDDEN, g)
        sd |= _linear(f"{p}.output.dense", HIDDEN, INTER, g) | _norm(f"{p}.output.LayerNorm", g)
    for i in range(cross_layers):
        p = f"bert.addlayer.{i}"
        sd |= _attention(f"{p}.visual_attention", "att", g)
        for stream in ("lang", "visn"):
            sd |= _attention(f"{p}.{stream}_self_att", "self", g)
            sd |= _linear(f"{p}.{stream}_inter.dense", INTER, HIDDEN, g)
            sd |= _linear(f"{p}.{stream}_output.dense", HIDDEN, INTER, g) | _norm(
                f"{p}.{stream}_output.LayerNorm", g
            )
    sd |= _linear("bert.vision_encoder.visn_fc", HIDDEN, IMG + angle, g) | _norm(
        "bert.vision_encoder.visn_layer_norm", g
    )
    sd |= _linear("bert.pooler.dense", HIDDEN, HIDDEN, g)
    sd |= _linear("next_action.linear", 36, HIDDEN, g)
    sd |= _linear("mlmhead.predictions.transform.dense", HIDDEN, HIDDEN, g)
    sd |= _norm("mlmhead.predictions.transform.LayerNorm", g)
    sd["mlmhead.predictions.bias"] = torch.randn(VOCAB, generator=g)
    sd["mlmhead.predictions.decoder.weight"] = words
    return sd


def test_rename_follows_the_documented_table():
    assert (
        rename("bert.lalayer.3.attention.self.query.weight")
        == "encoder.text_layers.3.attention.self.query.weight"
    )
    assert (
        rename("bert.addlayer.1.visual_attention.att.key.bias")
        == "encoder.cross_layers.1.cross_attention.self.key.bias"
    )
    assert (
        rename("bert.addlayer.0.visn_output.LayerNorm.gamma")
        == "encoder.cross_layers.0.vision_output.LayerNorm.weight"
    )
    assert rename("module.bert.vision_encoder.visn_fc.weight") == "encoder.vision_projection.proj.weight"
    assert rename("mlmhead.predictions.transform.LayerNorm.beta") == "mlm_head.layer_norm.bias"
    assert rename("next_action.linear.weight") is None


def test_every_encoder_tensor_comes_from_its_original_tensor():
    original = original_state_dict()
    model, report = convert_state_dict(original, num_attention_heads=2, angle_feature_size=ANGLE)
    config = model.config
    assert (config.text_layers, config.cross_layers, config.hidden_size) == (2, 2, HIDDEN)
    assert (config.intermediate_size, config.vocab_size, config.max_text_length) == (INTER, VOCAB, POS)
    assert (config.image_feature_size, config.angle_feature_size) == (IMG, ANGLE)
    state = model.state_dict()
    projection = "bert.vision_encoder.visn_fc.weight"
    for old, new in report.mapped.items():
        if old != projection:
            assert torch.equal(state[new], original[old]), (old, new)
    # The vision projection keeps its image columns; its orientation columns are the original's,
    # reordered (which order is right is checked against the original's forward pass below).
    converted = state["encoder.vision_projection.proj.weight"]
    assert torch.equal(converted[:, :IMG], original[projection][:, :IMG])
    assert sorted(map(tuple, converted[:, IMG:].T.tolist())) == sorted(
        map(tuple, original[projection][:, IMG:].T.tolist())
    )
    assert projection in report.rearranged
    encoder_keys = {k for k in state if k.startswith(("encoder.", "mlm_head."))}
    assert set(report.mapped.values()) == encoder_keys  # every encoder tensor, each exactly once
    assert len(set(report.mapped.values())) == len(report.mapped)
    assert set(report.skipped) == {
        "next_action.linear.weight",
        "next_action.linear.bias",
        "mlmhead.predictions.decoder.weight",
    }


def test_converted_encoder_runs_and_uses_the_shared_cross_attention():
    original = original_state_dict()
    model, _ = convert_state_dict(original, num_attention_heads=2, angle_feature_size=ANGLE)
    model.eval()
    ids = torch.randint(5, VOCAB, (2, 7))
    out = model.encoder(ids, torch.ones_like(ids, dtype=torch.bool), torch.randn(2, 5, IMG + ANGLE))
    assert out.pooled.shape == (2, HIDDEN) and torch.isfinite(out.pooled).all()
    # Changing the original's shared cross-attention query changes the converted model's output.
    original["bert.addlayer.0.visual_attention.att.query.weight"] = (
        original["bert.addlayer.0.visual_attention.att.query.weight"] * 3
    )
    other, _ = convert_state_dict(original, num_attention_heads=2, angle_feature_size=ANGLE)
    other.eval()
    out2 = other.encoder(ids, torch.ones_like(ids, dtype=torch.bool), torch.randn(2, 5, IMG + ANGLE))
    assert not torch.allclose(out.text_states, out2.text_states)


def test_tensorflow_layer_norm_names_and_dataparallel_prefix_are_accepted():
    original = {f"module.{k}": v for k, v in original_state_dict(tf_names=True).items()}
    model, report = convert_state_dict(original, num_attention_heads=2, angle_feature_size=ANGLE)
    key = "module.bert.embeddings.LayerNorm.gamma"
    assert torch.equal(model.state_dict()["encoder.embeddings.LayerNorm.weight"], original[key])


def test_missing_and_misshapen_tensors_are_clear_errors():
    original = original_state_dict()
    del original["bert.addlayer.1.lang_inter.dense.bias"]
    with pytest.raises(UserError, match="lacks 1 encoder tensors"):
        convert_state_dict(original, num_attention_heads=2, angle_feature_size=ANGLE)
    original = original_state_dict()
    original["bert.lalayer.1.output.dense.weight"] = torch.zeros(HIDDEN, INTER + 1)
    with pytest.raises(UserError, match="bert.lalayer.1.output.dense.weight has shape"):
        convert_state_dict(original, num_attention_heads=2, angle_feature_size=ANGLE)
    with pytest.raises(UserError, match="not a PREVALENT checkpoint"):
        convert_state_dict({"foo.weight": torch.zeros(2)})


def test_cli_writes_a_bundle_that_reloads_and_never_overwrites(tmp_path, capsys):
    original = original_state_dict()
    torch.save({"state_dict": original}, tmp_path / "prevalent.pt")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(VOCAB - 5)]) + "\n"
    )
    args = [
        "--checkpoint",
        str(tmp_path / "prevalent.pt"),
        "--output",
        str(tmp_path / "out"),
        "--vocab",
        str(vocab),
    ]
    assert main([*args, "--num-attention-heads", "2", "--angle-feature-size", str(ANGLE)]) == 0
    assert "skipped" in capsys.readouterr().out
    model, tokenizer = load_bundle(tmp_path / "out")
    assert torch.equal(
        model.state_dict()["encoder.pooler.dense.weight"], original["bert.pooler.dense.weight"]
    )
    assert tokenizer.vocab_size == VOCAB
    before = (tmp_path / "out" / "model.safetensors").read_bytes()
    assert main([*args, "--num-attention-heads", "2", "--angle-feature-size", str(ANGLE)]) == 2
    assert "already holds a bundle" in capsys.readouterr().err
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == before
    assert main(["--checkpoint", str(tmp_path / "missing.pt")]) == 2


# ------------------------------------------------------------------------------------------------
# The original's forward pass and inputs, rebuilt from PREVALENT_R2R's code (not from this package)


def original_block_angle_feature(heading: float, elevation: float, size: int) -> np.ndarray:
    """The orientation feature as the original pretraining data built it (``batch_loader.py``):
    ``size/4`` copies of sin(heading), then of cos(heading), sin(elevation), cos(elevation)."""
    copies = size // 4
    values = (math.sin(heading), math.cos(heading), math.sin(elevation), math.cos(elevation))
    return np.repeat(np.array(values, dtype=np.float32), copies)


def original_panorama_angle_features(view_index: int, size: int) -> np.ndarray:
    """``build_viewpoint_loc_embedding(viewIndex)`` of the original: each of the 36 views' heading
    relative to the agent's view, in 30° steps counted clockwise, and the view row's elevation."""
    rows = []
    for absolute in range(36):
        relative = (absolute - view_index) % 12 + (absolute // 12) * 12
        heading = (relative % 12) * math.pi / 6
        elevation = (relative // 12 - 1) * math.pi / 6
        rows.append(original_block_angle_feature(heading, elevation, size))
    return np.stack(rows)


def _dense(sd, prefix, x):
    return x @ sd[f"{prefix}.weight"].T + sd[f"{prefix}.bias"]


def _layer_norm(sd, prefix, x):
    return F.layer_norm(x, x.shape[-1:], sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], eps=1e-12)


def _gelu(x):  # the original's erf GELU
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _attend(sd, prefix, x, context, additive_mask, heads):
    """BertSelfAttention / BertOutAttention: multi-head scaled dot-product attention of x over context."""

    def split(t):
        return t.view(*t.shape[:2], heads, -1).transpose(1, 2)

    q, k, v = (
        split(_dense(sd, f"{prefix}.{name}", src))
        for name, src in (("query", x), ("key", context), ("value", context))
    )
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + additive_mask
    out = torch.softmax(scores, dim=-1) @ v
    return out.transpose(1, 2).reshape(*x.shape[:2], -1)


def _residual(sd, prefix, update, x):  # BertSelfOutput / BertOutput: LayerNorm(dense(update) + x)
    return _layer_norm(sd, f"{prefix}.LayerNorm", _dense(sd, f"{prefix}.dense", update) + x)


def _feed_forward(sd, inter, out, x):
    return _residual(sd, out, _gelu(_dense(sd, f"{inter}.dense", x)), x)


def _self_attention_block(sd, prefix, x, mask, heads):  # BertAttention
    return _residual(sd, f"{prefix}.output", _attend(sd, f"{prefix}.self", x, x, mask, heads), x)


def original_dic_model(sd, input_ids, text_mask, img_feats, heads):
    """``DicModel.forward`` of the original (text layers, vision encoder, LXRTXLayers, pooler)."""
    length = input_ids.shape[1]
    text = (
        sd["bert.embeddings.word_embeddings.weight"][input_ids]
        + sd["bert.embeddings.position_embeddings.weight"][:length]
        + sd["bert.embeddings.token_type_embeddings.weight"][0]
    )
    text = _layer_norm(sd, "bert.embeddings.LayerNorm", text)
    text_add = (1.0 - text_mask.float())[:, None, None, :] * -10000.0
    layer = 0
    while f"bert.lalayer.{layer}.attention.self.query.weight" in sd:
        p = f"bert.lalayer.{layer}"
        attended = _self_attention_block(sd, f"{p}.attention", text, text_add, heads)
        text = _feed_forward(sd, f"{p}.intermediate", f"{p}.output", attended)
        layer += 1
    vision = _layer_norm(
        sd, "bert.vision_encoder.visn_layer_norm", _dense(sd, "bert.vision_encoder.visn_fc", img_feats)
    )
    vision_add = torch.zeros(vision.shape[0], 1, 1, vision.shape[1])  # every view token is valid
    layer = 0
    while f"bert.addlayer.{layer}.visual_attention.att.query.weight" in sd:
        p = f"bert.addlayer.{layer}"

        def cross(x, context, mask, p=p):  # BertXAttention: the same weights in both directions
            attended = _attend(sd, f"{p}.visual_attention.att", x, context, mask, heads)
            return _residual(sd, f"{p}.visual_attention.output", attended, x)

        text_x, vision_x = cross(text, vision, vision_add), cross(vision, text, text_add)
        text_s = _self_attention_block(sd, f"{p}.lang_self_att", text_x, text_add, heads)
        vision_s = _self_attention_block(sd, f"{p}.visn_self_att", vision_x, vision_add, heads)
        text = _feed_forward(sd, f"{p}.lang_inter", f"{p}.lang_output", text_s)
        vision = _feed_forward(sd, f"{p}.visn_inter", f"{p}.visn_output", vision_s)
        layer += 1
    pooled = torch.tanh(_dense(sd, "bert.pooler.dense", text[:, 0]))
    return text, vision, pooled


def test_converted_encoder_computes_what_the_original_computes_on_its_own_inputs():
    angle, heads = 128, 2  # the paper's orientation width
    original = original_state_dict(angle=angle, seed=3)
    # Tame the random weights (N(0, 1) everywhere) so that no softmax saturates and float32
    # rounding stays far below the tolerance.
    original = {
        k: v * 0.3 if k.endswith(".weight") and "LayerNorm" not in k else v for k, v in original.items()
    }
    original["mlmhead.predictions.decoder.weight"] = original["bert.embeddings.word_embeddings.weight"]
    model, _ = convert_state_dict(original, num_attention_heads=heads, angle_feature_size=angle)
    model.eval()

    rng = np.random.default_rng(0)
    batch, views_per_item = 2, 36 + 3
    agent_views = [5, 19]  # the agent's current view index (heading step 5, and 7 one row up)
    candidate_directions = rng.uniform([-math.pi, -0.5], [math.pi, 0.5], size=(batch, 3, 2))
    image = rng.standard_normal((batch, views_per_item, IMG)).astype(np.float32)
    ids = torch.from_numpy(rng.integers(5, VOCAB, size=(batch, 9)))
    text_mask = torch.ones(batch, 9, dtype=torch.bool)
    text_mask[1, 6:] = False  # a padded instruction

    # The original's inputs: block-layout orientation features, its panorama convention.
    original_angles = np.stack(
        [
            np.concatenate(
                [
                    original_panorama_angle_features(agent_views[b], angle),
                    np.stack([original_block_angle_feature(h, e, angle) for h, e in candidate_directions[b]]),
                ]
            )
            for b in range(batch)
        ]
    )
    # This package's inputs for the same raw headings and elevations.
    own_angles = np.stack(
        [
            np.concatenate(
                [
                    panorama_angle_features(float(VIEW_HEADINGS[agent_views[b] % 12]), angle),
                    angle_feature(candidate_directions[b, :, 0], candidate_directions[b, :, 1], angle),
                ]
            )
            for b in range(batch)
        ]
    )
    assert not np.allclose(original_angles, own_angles)  # the layouts really differ

    expected_text, expected_vision, expected_pooled = original_dic_model(
        original, ids, text_mask, torch.from_numpy(np.concatenate([image, original_angles], -1)), heads
    )
    with torch.no_grad():
        out = model.encoder(ids, text_mask, torch.from_numpy(np.concatenate([image, own_angles], -1)))
    torch.testing.assert_close(out.text_states, expected_text, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.vision_states, expected_vision, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.pooled, expected_pooled, atol=1e-4, rtol=1e-4)

    # A checkpoint already trained on interleaved features is copied as it is: converted that way,
    # it reads this package's inputs exactly as the original reads interleaved ones.
    as_is, report = convert_state_dict(
        original, num_attention_heads=heads, angle_feature_size=angle, angle_layout="interleaved"
    )
    assert not report.rearranged
    as_is.eval()
    with torch.no_grad():
        plain = as_is.encoder(ids, text_mask, torch.from_numpy(np.concatenate([image, own_angles], -1)))
    _, _, interleaved_pooled = original_dic_model(
        original, ids, text_mask, torch.from_numpy(np.concatenate([image, own_angles], -1)), heads
    )
    torch.testing.assert_close(plain.pooled, interleaved_pooled, atol=1e-4, rtol=1e-4)


def test_cli_records_the_angle_layout_and_refuses_unknown_ones(tmp_path, capsys):
    torch.save(original_state_dict(), tmp_path / "prevalent.pt")
    base = ["--checkpoint", str(tmp_path / "prevalent.pt"), "--num-attention-heads", "2"]
    assert main([*base, "--output", str(tmp_path / "out"), "--angle-feature-size", str(ANGLE)]) == 0
    assert "reordered from the block to the interleaved layout" in capsys.readouterr().out
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["converted_angle_layout"] == "block"
    assert main([*base, "--output", str(tmp_path / "x"), "--angle-layout", "sideways"]) == 2
    assert main([*base, "--output", str(tmp_path / "y"), "--angle-feature-size", "6"]) == 2
    assert "multiple of 4" in capsys.readouterr().err
