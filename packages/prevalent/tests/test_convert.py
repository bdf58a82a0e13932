"""prevalent-convert on a state dict with the original PREVALENT names and shapes, built here."""

from __future__ import annotations

import pytest
import torch

from dgm_core.errors import UserError
from prevalent.convert import convert_state_dict, main, rename
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


def original_state_dict(text_layers: int = 2, cross_layers: int = 2, tf_names: bool = False, seed: int = 0):
    """The tensor names of the released HugAddActionPreTrain, with tiny shapes."""
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
    sd |= _linear("bert.vision_encoder.visn_fc", HIDDEN, IMG + ANGLE, g) | _norm(
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
    for old, new in report.mapped.items():
        assert torch.equal(state[new], original[old]), (old, new)
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
