"""``optimus-claim``: the paper's claims in miniature, on the embedded corpus, over several seeds.

The recipe is the paper's in small: first the halves learn together without the VAE objective
(an autoencoder, ``--ae-steps``; it stands in for Optimus's pre-trained BERT and GPT-2), then the
VAE is fine-tuned from it with the paper's fine-tuning schedule (one zero-linear β cycle, λ
thresholding; ``--vae-steps``), once per λ in ``--kl-thresholds``. The autoencoder arm continues
the same autoencoder for the same ``--vae-steps`` without KL, so both arms train equally long.
Trained from scratch in one stage, the VAE's decoder learns to ignore ``z`` (see the README).

Measured on every model of every seed (held-out sentences of the embedded grammar, whose checker
reads sentiment, topic and tense back from words):

* language modelling: PPL (importance-weighted), KL, MI, AU — VAE models only;
* reconstruction: greedy decoding of the posterior mean keeps each attribute / all three;
* interpolation between sentences that differ in topic and sentiment: distinct sentences on the
  path, and whether its ends read as the two sentences' topic and sentiment;
* analogies ``a : b :: c : ?`` where ``a``/``b`` differ only in tense: share of outputs in ``b``'s
  tense, and in ``b``'s tense while keeping ``c``'s topic and sentiment;
* guided generation: prior samples plus ``--guidance-scale`` × the attribute vector, accuracy per
  attribute value (and the worst value) against the same samples unsteered;
* low-resource classification (``--attribute``, N per class): the VAE's latent means vs the
  autoencoder's vs the VAE encoder's pooled features.

Every number is a mean with a 95 % Student-t interval over seeds; differences between arms are
paired by seed. Runs live in ``<out_dir>/<name>-<digest of their options>``, so changing any option
trains anew while finished runs and measurements are reused. Results go to ``claim.json`` and
``claim.md`` (which starts with the command line that made it).
"""

from __future__ import annotations

import json
import random
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from dgm_core import cli
from dgm_core.claims import mean_interval, options_digest, paired_difference, results_table
from dgm_core.cli import option
from dgm_core.errors import UserError
from optimus.classify import accuracy_curve, parse_shots
from optimus.corpora import embedded_test_texts
from optimus.evaluation import evaluate_model
from optimus.generate import attribute_reconstruction, attribute_vectors
from optimus.grammar import (
    ATTRIBUTES,
    SENTIMENTS,
    TENSES,
    TOPICS,
    GrammarSentence,
    generate_corpus,
    generate_sentence,
    read_attributes,
)
from optimus.latents import DecodingOptions, decode_latents, pooled_features, posterior_means
from optimus.saved_model import load_trained
from optimus.train import SCRATCH_LR, OptimusTrainConfig, train

PROG = "optimus-claim"
LM_METRICS = ("ppl", "kl", "mi", "au")
# Seeds of the held-out sentence sets; disjoint from the training corpus (seed 0) and the
# evaluation sets train.py holds out.
_PROBE_SEED, _PAIR_SEED, _ANALOGY_SEED, _POOL_SEED, _HELD_SEED = 10_001, 80_000, 90_000, 60_000, 70_000
_MODEL_BUILDING = ("encoder", "decoder", "scratch_hidden", "scratch_layers", "vocab_size")
_REFERENCE_SEED = 20_000  # the labelled sentences that define attribute vectors (as optimus-generate)


@dataclass
class ClaimConfig:
    out_dir: str = option("runs/optimus-claim", help="Folder of the runs and the results.")
    seeds: list[int] = option(
        default_factory=lambda: [0, 1, 2, 3, 4], help="Training seeds (>= 2 for an interval)."
    )
    kl_thresholds: list[float] = option(
        default_factory=lambda: [0.0, 0.05, 0.1, 0.25, 0.5, 1.0], help="λ values of the sweep (the paper's)."
    )
    reference_lambda: float = option(
        0.5, help="The λ whose VAE is compared with the autoencoder (the paper's fine-tuning λ)."
    )
    ae_steps: int = option(4000, help="Steps of the first stage (autoencoder: no KL, z = posterior mean).")
    vae_steps: int = option(1000, help="Steps of the second stage (VAE fine-tuning, or more autoencoder).")
    corpus_size: int = option(10000, help="Embedded training sentences.")
    encoder_pooling: str = option("mean", help="What the latent head reads.", choices=("pooler", "mean"))
    test_sentences: int = option(300, help="Held-out sentences for PPL/KL/MI/AU.")
    iw_samples: int = option(20, help="Importance samples per sentence for PPL.")
    probe_sentences: int = option(200, help="Held-out sentences for attribute reconstruction.")
    interpolation_pairs: int = option(50, help="Sentence pairs (different topic and sentiment) interpolated.")
    interpolation_points: int = option(8, help="Points on each interpolation path, ends included.")
    analogies: int = option(100, help="Tense analogies a : b :: c : ? per model.")
    guided_samples: int = option(100, help="Prior samples per attribute value for guided generation.")
    guidance_scale: float = option(2.0, help="Multiple of the attribute vector added to prior samples.")
    attribute: str = option("topic", help="Attribute for the low-resource curve.", choices=tuple(ATTRIBUTES))
    shots: list[str] = option(
        default_factory=lambda: ["1", "10", "100", "all"], help="Labelled examples per class."
    )
    repeats: int = option(5, help="Random draws of the labelled examples per N (averaged per seed).")
    device: str = option("cpu", help="Device for training and evaluation.")
    extra_train_args: str = option(
        "",
        help="Extra optimus-train flags, one string (e.g. --extra-train-args='--scratch-hidden 64'); "
        "model-size flags apply to stage one, whose model stage two continues.",
    )


def _digest(values: dict) -> str:
    return options_digest(values, length=10)


def _train_once(cfg: ClaimConfig, name: str, seed: int, steps: int, **overrides) -> Path:
    """Train (or reuse) one run; its folder name carries a digest of every training option."""
    base = cli.parse_config(OptimusTrainConfig, shlex.split(cfg.extra_train_args), prog=PROG)
    train_cfg = replace(
        base,
        seed=seed,
        steps=steps,
        corpus_size=cfg.corpus_size,
        eval_every=0,
        checkpoint_every=0,
        progress=False,
        device=cfg.device,
        **overrides,
    )
    if overrides.get("init_from"):
        # The model (sizes, halves, tokenizers) comes from stage one; its building flags must go.
        defaults = OptimusTrainConfig()
        train_cfg = replace(train_cfg, **{name: getattr(defaults, name) for name in _MODEL_BUILDING})
    key = {k: v for k, v in cli.config_to_dict(train_cfg).items() if k not in ("run_dir", "progress")}
    run_dir = Path(cfg.out_dir) / f"{name}-{_digest(key)}"
    if not (run_dir / "model" / "config.json").is_file():
        train(replace(train_cfg, run_dir=str(run_dir)))
    return run_dir / "model"


def train_arms(cfg: ClaimConfig, seed: int) -> dict[str, Path]:
    """The seed's models: ``autoencoder`` and ``vae_lambda<λ>`` for every λ (trained or reused)."""
    stage_one = _train_once(
        cfg, f"stage1_autoencoder_seed{seed}", seed, cfg.ae_steps,
        autoencoder=True, encoder_pooling=cfg.encoder_pooling,
    )  # fmt: skip
    # The second stage starts from stage one's weights; the tiny halves need the from-scratch
    # learning rate (init_from would default to the pretrained 5e-5) for the decoder.
    models = {
        "autoencoder": _train_once(
            cfg,
            f"autoencoder_seed{seed}",
            seed,
            cfg.vae_steps,
            init_from=str(stage_one),
            autoencoder=True,
            lr=SCRATCH_LR,
        )  # fmt: skip
    }
    for kl_threshold in cfg.kl_thresholds:
        models[f"vae_lambda{kl_threshold:g}"] = _train_once(
            cfg, f"vae_lambda{kl_threshold:g}_seed{seed}", seed, cfg.vae_steps,
            init_from=str(stage_one), kl_threshold=kl_threshold, lr=SCRATCH_LR,
        )  # fmt: skip
    return models


# --------------------------------------------------------------------------- measures


def interpolation_measure(model, codec, pairs, points: int, options: DecodingOptions, device) -> dict:
    """Decode ``points`` evenly spaced latents between each pair's posterior means.

    ``distinct``: mean number of different sentences on a path; ``ends_match``: share of paths
    whose first and last sentences read as the pair's own topic and sentiment.
    """
    if points < 2:
        raise UserError(f"an interpolation needs at least 2 points, got {points}")
    firsts = posterior_means(model, codec, [a.text for a, _ in pairs], device)
    lasts = posterior_means(model, codec, [b.text for _, b in pairs], device)
    weights = torch.linspace(0, 1, points, device=device).view(1, points, 1)
    paths = (1 - weights) * firsts.unsqueeze(1) + weights * lasts.unsqueeze(1)  # [pairs, points, latent]
    texts = decode_latents(model, codec, paths.flatten(0, 1), options)
    distinct, matched = 0, 0
    for index, (a, b) in enumerate(pairs):
        path = texts[index * points : (index + 1) * points]
        distinct += len(set(path))
        start, end = read_attributes(path[0]), read_attributes(path[-1])
        matched += all(start[k] == getattr(a, k) and end[k] == getattr(b, k) for k in ("topic", "sentiment"))
    return {"distinct": distinct / len(pairs), "ends_match": matched / len(pairs), "example": texts[:points]}


def analogy_measure(model, codec, quadruples, options: DecodingOptions, device) -> dict:
    """``d = decode(z_c + z_b − z_a)`` for ``(a, b, c, target_tense)``: does ``d`` take ``b``'s tense?

    ``transfer``: share of ``d`` read in the target tense; ``transfer_keep``: also keeping ``c``'s
    topic and sentiment.
    """
    texts = [s.text for a, b, c in quadruples for s in (a, b, c)]
    z = posterior_means(model, codec, texts, device).view(len(quadruples), 3, -1)
    outputs = decode_latents(model, codec, z[:, 2] + z[:, 1] - z[:, 0], options)
    transfer = keep = 0
    for (_, b, c), output in zip(quadruples, outputs, strict=True):
        read = read_attributes(output)
        hit = read["tense"] == b.tense
        transfer += hit
        keep += hit and read["topic"] == c.topic and read["sentiment"] == c.sentiment
    count = len(quadruples)
    return {"transfer": transfer / count, "transfer_keep": keep / count, "example": outputs[0]}


def interpolation_pairs(count: int, seed: int = _PAIR_SEED) -> list[tuple[GrammarSentence, GrammarSentence]]:
    """``count`` held-out sentence pairs whose topic and sentiment both differ."""
    # 3 in 8 pairs qualify; the margin covers small counts.
    pool = generate_corpus(count * 8 + 64, seed=seed)
    pairs = [
        (a, b) for a, b in zip(pool[0::2], pool[1::2]) if a.topic != b.topic and a.sentiment != b.sentiment
    ]
    if len(pairs) < count:
        raise UserError(f"could not draw {count} interpolation pairs; ask for fewer")
    return pairs[:count]


def tense_analogies(count: int, seed: int = _ANALOGY_SEED) -> list[tuple[GrammarSentence, ...]]:
    """``count`` triples ``(a, b, c)``: ``a``/``b`` one sentence in two tenses, ``c`` another in ``a``'s.

    The grammar draws the same words for the same random state whatever the tense, so ``a`` and
    ``b`` differ in their tense words only.
    """
    rng = random.Random(seed)
    triples = []
    for _ in range(count):
        source, target = rng.sample(TENSES, 2)
        state = rng.getrandbits(32)
        sentiment, topic = rng.choice(SENTIMENTS), rng.choice(TOPICS)
        a = generate_sentence(random.Random(state), sentiment, topic, source)
        b = generate_sentence(random.Random(state), sentiment, topic, target)
        c = generate_sentence(
            random.Random(rng.getrandbits(32)), rng.choice(SENTIMENTS), rng.choice(TOPICS), source
        )
        triples.append((a, b, c))
    return triples


def measure_model(cfg: ClaimConfig, model_dir: Path, seed: int, language_model: bool) -> dict:
    """Every measure of one model (cached beside it, keyed by the measuring options)."""
    measure_options = {
        k: getattr(cfg, k)
        for k in (
            "test_sentences", "iw_samples", "probe_sentences", "interpolation_pairs",
            "interpolation_points", "analogies", "guided_samples", "guidance_scale",
            "attribute", "shots", "repeats",
        )
    }  # fmt: skip
    cache = model_dir.parent / f"claim_measures-{_digest({**measure_options, 'lm': language_model})}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    device = torch.device(cfg.device)
    model, codec = load_trained(model_dir, device)
    options = DecodingOptions(max_length=model.block_size - 1)
    torch.manual_seed(seed)
    result: dict = {}
    if language_model:
        lm = evaluate_model(
            model, codec, embedded_test_texts(cfg.test_sentences, seed=99), device, cfg.iw_samples
        )
        result["lm"] = {k: lm[k] for k in LM_METRICS}
    reconstruction = attribute_reconstruction(
        model, codec, generate_corpus(cfg.probe_sentences, seed=_PROBE_SEED), options, device
    )
    reconstruction.pop("outputs")
    result["reconstruction"] = reconstruction
    result["interpolation"] = interpolation_measure(
        model, codec, interpolation_pairs(cfg.interpolation_pairs), cfg.interpolation_points, options, device
    )
    result["analogy"] = analogy_measure(model, codec, tense_analogies(cfg.analogies), options, device)
    # One set of prior samples per model: each value steers the same samples, unsteered they are
    # the baseline. Attribute vectors: mean latent with the value minus mean latent without it.
    reference = generate_corpus(2000, seed=_REFERENCE_SEED)
    generator = torch.Generator(device=device).manual_seed(seed)
    prior = torch.randn(cfg.guided_samples, model.latent_size, device=device, generator=generator)
    unsteered = [read_attributes(t) for t in decode_latents(model, codec, prior, options)]
    guided = {}
    for attribute in ATTRIBUTES:
        labels = [getattr(s, attribute) for s in reference]
        vectors = attribute_vectors(model, codec, [s.text for s in reference], labels, device)
        for value, vector in vectors.items():
            steered = decode_latents(model, codec, prior + cfg.guidance_scale * vector, options)
            guided[f"{attribute}={value}"] = {
                "accuracy": sum(read_attributes(t)[attribute] == value for t in steered) / len(steered),
                "unsteered": sum(r[attribute] == value for r in unsteered) / len(unsteered),
            }
    result["guided"] = guided
    result["guided_worst"] = min(g["accuracy"] for g in guided.values())
    result["classification"] = _classification(cfg, model, codec, device, seed)
    cache.write_text(json.dumps(result, indent=1))
    return result


def _classification(cfg: ClaimConfig, model, codec, device, seed: int) -> dict:
    """Accuracy per N (mean over ``repeats`` draws) from latent means and from pooled features."""
    pool = generate_corpus(2000, seed=_POOL_SEED)
    held = generate_corpus(1000, seed=_HELD_SEED)
    values = ATTRIBUTES[cfg.attribute]
    pool_y = [values.index(getattr(s, cfg.attribute)) for s in pool]
    held_y = [values.index(getattr(s, cfg.attribute)) for s in held]
    shots = parse_shots(cfg.shots)
    curves = {}
    for features, name in ((posterior_means, "latent"), (pooled_features, "pooled")):
        train_x = features(model, codec, [s.text for s in pool], device).cpu()
        test_x = features(model, codec, [s.text for s in held], device).cpu()
        curve = accuracy_curve(train_x, pool_y, test_x, held_y, shots, cfg.repeats, "linear", seed)
        curves[name] = {str(row["shots"]): row["accuracy"] for row in curve}
    return curves


# --------------------------------------------------------------------------- the claim


def run_claim(cfg: ClaimConfig) -> dict:
    if len(cfg.seeds) < 2:
        raise UserError("optimus-claim needs at least 2 seeds for an interval")
    if cfg.reference_lambda not in cfg.kl_thresholds:
        raise UserError(f"--reference-lambda {cfg.reference_lambda:g} is not in --kl-thresholds")
    per_seed: dict[str, list[dict]] = {}
    for seed in cfg.seeds:
        for arm, model_dir in train_arms(cfg, seed).items():
            per_seed.setdefault(arm, []).append(
                measure_model(cfg, model_dir, seed, language_model=arm != "autoencoder")
            )
    results = {
        "command": cli.command_line(PROG, cfg),
        "config": cli.config_to_dict(cfg),
        "per_seed": per_seed,
    }
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "claim.json").write_text(json.dumps(results, indent=1))
    table = format_markdown(results)
    (out / "claim.md").write_text(table)
    print(table)
    return results


def _values(rows: list[dict], *path: str) -> list[float]:
    out = []
    for row in rows:
        for key in path:
            row = row[key]
        out.append(float(row))
    return out


_ROW_MEASURES = (
    ("recon all", ("reconstruction", "all")),
    ("recon sentiment", ("reconstruction", "sentiment")),
    ("recon topic", ("reconstruction", "topic")),
    ("recon tense", ("reconstruction", "tense")),
    ("interp distinct", ("interpolation", "distinct")),
    ("interp ends", ("interpolation", "ends_match")),
    ("analogy tense", ("analogy", "transfer")),
    ("analogy tense+keep", ("analogy", "transfer_keep")),
    ("guided worst value", ("guided_worst",)),
)


def format_markdown(results: dict) -> str:
    cfg = results["config"]
    per_seed = results["per_seed"]
    arms = list(per_seed)
    reference = f"vae_lambda{cfg['reference_lambda']:g}"
    lines = [
        f"`{results['command']}`",
        "",
        f"Embedded grammar corpus ({cfg['corpus_size']} sentences); per seed an autoencoder stage of "
        f"{cfg['ae_steps']} steps, then {cfg['vae_steps']} steps of VAE fine-tuning per λ (or of more "
        f"autoencoder training); seeds {', '.join(map(str, cfg['seeds']))}. Mean [95 % interval] over seeds.",
        "",
        "**Language modelling** (held-out sentences; PPL from the importance-weighted bound):",
        "",
    ]
    vae_arms = [a for a in arms if a != "autoencoder"]
    rows = [
        [
            arm.removeprefix("vae_lambda"),
            *(mean_interval(_values(per_seed[arm], "lm", m)).format(2) for m in LM_METRICS),
        ]
        for arm in vae_arms
    ]
    lines += [results_table(rows, ["λ", "PPL", "KL", "MI", "AU"]), ""]
    lines += [
        "**The latent space** (reconstruction of held-out sentences; interpolations between sentences of "
        "different topic and sentiment; tense analogies; guided generation — the worst attribute value):",
        "",
    ]
    rows = [
        [name, *(mean_interval(_values(per_seed[arm], *path)).format(2) for arm in arms)]
        for name, path in _ROW_MEASURES
    ]
    names = ["AE" if a == "autoencoder" else f"VAE λ={a.removeprefix('vae_lambda')}" for a in arms]
    lines += [results_table(rows, ["measure", *names]), ""]
    rows = [
        [
            name,
            paired_difference(
                _values(per_seed[reference], *path), _values(per_seed["autoencoder"], *path)
            ).format(2),
        ]
        for name, path in _ROW_MEASURES
    ]
    lines += [
        f"Paired by seed, VAE λ={cfg['reference_lambda']:g} − autoencoder:",
        "",
        results_table(rows, ["measure", "difference [95 %], t-test p, wins/losses/ties"]),
        "",
        f"**Guided generation** at λ={cfg['reference_lambda']:g} (scale {cfg['guidance_scale']:g}): share of "
        "generated sentences the checker reads as the value, steered vs the same prior samples unsteered:",
        "",
    ]
    guided_keys = list(per_seed[reference][0]["guided"])
    rows = [
        [
            key,
            mean_interval(_values(per_seed[reference], "guided", key, "accuracy")).format(2),
            mean_interval(_values(per_seed[reference], "guided", key, "unsteered")).format(2),
        ]
        for key in guided_keys
    ]
    lines += [results_table(rows, ["value", "steered", "unsteered"]), ""]
    shots = list(per_seed[reference][0]["classification"]["latent"])
    lines += [
        f"**Low-resource {cfg['attribute']} classification** (linear head, N labelled sentences per class, "
        f"mean of {cfg['repeats']} draws per seed): VAE λ={cfg['reference_lambda']:g} latent means, "
        "autoencoder latent means, and the VAE encoder's pooled features:",
        "",
    ]
    rows = []
    for n in shots:
        vae = _values(per_seed[reference], "classification", "latent", n)
        ae = _values(per_seed["autoencoder"], "classification", "latent", n)
        pooled = _values(per_seed[reference], "classification", "pooled", n)
        rows.append(
            [
                n,
                mean_interval(vae).format(3),
                mean_interval(ae).format(3),
                mean_interval(pooled).format(3),
                paired_difference(vae, ae).format(3),
                paired_difference(vae, pooled).format(3),
            ]
        )
    lines.append(
        results_table(rows, ["N/class", "VAE latent", "AE latent", "pooled", "VAE − AE", "VAE − pooled"])
    )
    example = per_seed[reference][0]
    lines += [
        "",
        f"Seed {cfg['seeds'][0]}, λ={cfg['reference_lambda']:g}: an interpolation path — "
        + " → ".join(dict.fromkeys(example["interpolation"]["example"]))
        + f"; an analogy output — {example['analogy']['example']}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return cli.run(
        run_claim,
        ClaimConfig,
        argv,
        prog=PROG,
        description="The Optimus claims in miniature on the embedded corpus, over several seeds.",
    )


if __name__ == "__main__":
    sys.exit(main())
