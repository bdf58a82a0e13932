"""optimus-claim: its held-out probes, the two-stage arms, reuse keyed by options, and the table."""

from __future__ import annotations

import json
import shlex

import pytest

from dgm_core import cli
from dgm_core.errors import UserError
from optimus import claim as claim_module
from optimus.claim import ClaimConfig, interpolation_pairs, run_claim, tense_analogies
from optimus.grammar import read_attributes

TENSE_WORDS = {"will", "yesterday", "today", "tomorrow", "was", "is", "be"}


def test_interpolation_pairs_differ_in_topic_and_sentiment():
    pairs = interpolation_pairs(30)
    assert len(pairs) == 30
    assert all(a.topic != b.topic and a.sentiment != b.sentiment for a, b in pairs)
    assert interpolation_pairs(30) == pairs  # fixed held-out set


def test_tense_analogies_change_only_the_tense_words():
    triples = tense_analogies(40)
    for a, b, c in triples:
        assert a.tense != b.tense and c.tense == a.tense
        assert (a.sentiment, a.topic) == (b.sentiment, b.topic)
        assert read_attributes(a.text)["tense"] == a.tense and read_attributes(b.text)["tense"] == b.tense
        # With the tense-bearing words removed (auxiliaries, time words, the verb's form) the two
        # sentences have the same length and the same other words.
        a_words, b_words = a.text.split(), b.text.split()
        a_rest = [w for w in a_words if w not in TENSE_WORDS]
        b_rest = [w for w in b_words if w not in TENSE_WORDS]
        assert len(a_rest) == len(b_rest)
        assert sum(x != y for x, y in zip(a_rest, b_rest)) <= 2  # at most the verbs of two clauses
    assert len({a.tense + b.tense for a, b, _ in triples}) == 6  # every ordered pair of tenses


TINY_TRAIN = "--scratch-hidden 32 --scratch-layers 1 --vocab-size 300 --batch-size 16 --eval-sentences 16"


def tiny_claim(tmp_path, **changes) -> ClaimConfig:
    values = dict(
        out_dir=str(tmp_path / "claim"),
        seeds=[0, 1],
        kl_thresholds=[0.5],
        ae_steps=6,
        vae_steps=4,
        corpus_size=300,
        test_sentences=8,
        iw_samples=2,
        probe_sentences=8,
        interpolation_pairs=3,
        interpolation_points=3,
        analogies=4,
        guided_samples=4,
        shots=["1", "all"],
        repeats=1,
        extra_train_args=TINY_TRAIN,
    )
    values.update(changes)
    return ClaimConfig(**values)


@pytest.mark.slow
def test_claim_trains_both_arms_reuses_them_and_writes_the_table(tmp_path, monkeypatch):
    cfg = tiny_claim(tmp_path)
    results = run_claim(cfg)
    root = tmp_path / "claim"
    # Two seeds x (stage one, the continued autoencoder, two λ) models, each in a digest-named folder.
    models = sorted(p.parent.parent.name.rsplit("-", 1)[0] for p in root.glob("*/model/config.json"))
    assert models == sorted(
        f"{name}_seed{seed}"
        for seed in (0, 1)
        for name in ("stage1_autoencoder", "autoencoder", "vae_lambda0.5")
    )
    # The second stage starts from the first: its config names stage one's model.
    vae_config = json.loads(next(root.glob("vae_lambda0.5_seed0-*/config.json")).read_text())
    assert "stage1_autoencoder_seed0-" in json.dumps(vae_config)
    assert set(results["per_seed"]) == {"autoencoder", "vae_lambda0.5"}
    assert "lm" not in results["per_seed"]["autoencoder"][0]  # PPL of a deterministic code is meaningless
    assert set(results["per_seed"]["vae_lambda0.5"][0]["lm"]) == {"ppl", "kl", "mi", "au"}
    assert len(results["per_seed"]["vae_lambda0.5"][0]["guided"]) == 2 + 4 + 3
    table = (root / "claim.md").read_text()
    first_line = table.splitlines()[0].strip("`")
    assert cli.parse_config(ClaimConfig, shlex.split(first_line)[1:], prog="optimus-claim") == cfg
    assert "VAE λ=0.5 − autoencoder" in table and "| all |" in table

    # Reuse: the same options train nothing and measure nothing again.
    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(claim_module, "train", refuse)
    monkeypatch.setattr(claim_module, "evaluate_model", refuse)
    assert run_claim(cfg)["per_seed"] == results["per_seed"]
    # Any training option changed is a new run (the digest), not a stale reuse.
    with pytest.raises(AssertionError, match="trained again"):
        run_claim(tiny_claim(tmp_path, vae_steps=5))


def test_claim_refuses_one_seed_and_a_reference_outside_the_sweep(tmp_path):
    with pytest.raises(UserError, match="at least 2 seeds"):
        run_claim(tiny_claim(tmp_path, seeds=[0]))
    with pytest.raises(UserError, match="reference-lambda"):
        run_claim(tiny_claim(tmp_path, kl_thresholds=[1.0]))
    with pytest.raises(UserError, match="unrecognized arguments"):
        run_claim(tiny_claim(tmp_path, extra_train_args="--no-such-flag"))
