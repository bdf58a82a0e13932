"""``python -m optimus.claim``: the paper's claim in miniature, on the embedded corpus.

At one training budget and for every seed:

1. KL thresholding λ ∈ {0, 0.1, 0.5, 1.0} → PPL (importance-weighted), KL, MI and AU on held-out sentences;
2. low-resource accuracy (N labelled sentences per class) from the VAE's latent means vs from the
   latent of the same networks trained as a plain autoencoder (no VAE objective) at the same budget;
3. a few interpolations and analogies, and attribute-guided generation, from the first seed's λ = 0.5 model.

Every run lives in ``<out_dir>/<name>`` (resumable: finished runs are reused). Results go to
``<out_dir>/claim.json`` and a markdown summary to ``<out_dir>/claim.md``.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from dgm_core import cli
from dgm_core.cli import option
from optimus.classify import accuracy_curve, parse_shots
from optimus.corpora import embedded_test_texts
from optimus.evaluation import evaluate_model
from optimus.generate import analogy, guided_generation, interpolate
from optimus.grammar import ATTRIBUTES, generate_corpus
from optimus.latents import DecodingOptions, posterior_means
from optimus.saved_model import load_trained
from optimus.train import OptimusTrainConfig, train


@dataclass
class ClaimConfig:
    out_dir: str = option("runs/optimus-claim", help="Folder of the runs and the results.")
    seeds: list[int] = option(default_factory=lambda: [0, 1], help="Training seeds (>= 2 for a spread).")
    kl_thresholds: list[float] = option(
        default_factory=lambda: [0.0, 0.1, 0.5, 1.0], help="λ values compared."
    )
    steps: int = option(1200, help="Training steps of every run (the equal budget).")
    corpus_size: int = option(10000, help="Embedded training sentences.")
    test_sentences: int = option(500, help="Held-out sentences for PPL/KL/MI/AU.")
    iw_samples: int = option(50, help="Importance samples per sentence for PPL.")
    attribute: str = option("topic", help="Attribute for the low-resource curve.", choices=tuple(ATTRIBUTES))
    shots: list[str] = option(
        default_factory=lambda: ["1", "10", "100", "all"], help="Labelled examples per class."
    )
    repeats: int = option(3, help="Random draws per N.")
    device: str = option("cpu", help="Device for training and evaluation.")
    extra_train_args: list[str] = option(
        default_factory=list, help="Extra optimus-train flags (e.g. --word-dropout=0.3)."
    )


def _train_once(cfg: ClaimConfig, name: str, seed: int, **overrides) -> Path:
    run_dir = Path(cfg.out_dir) / name
    if (run_dir / "model" / "config.json").is_file():
        return run_dir / "model"
    base = cli.parse_config(OptimusTrainConfig, cfg.extra_train_args, prog="optimus-claim")
    train_cfg = replace(
        base,
        run_dir=str(run_dir),
        seed=seed,
        steps=cfg.steps,
        corpus_size=cfg.corpus_size,
        eval_every=0,
        checkpoint_every=0,
        progress=False,
        device=cfg.device,
        **overrides,
    )
    train(train_cfg)
    return run_dir / "model"


def _mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def run_claim(cfg: ClaimConfig) -> dict:
    device = torch.device(cfg.device)
    test_texts = embedded_test_texts(cfg.test_sentences, seed=99)
    pool = generate_corpus(2000, seed=60_000)
    held = generate_corpus(1000, seed=70_000)
    values = ATTRIBUTES[cfg.attribute]
    pool_y = [values.index(getattr(s, cfg.attribute)) for s in pool]
    held_y = [values.index(getattr(s, cfg.attribute)) for s in held]
    shots = parse_shots(cfg.shots)

    def curve(model_dir: Path, seed: int) -> list[dict]:
        model, codec = load_trained(model_dir, device)
        train_x = posterior_means(model, codec, [s.text for s in pool], device).cpu()
        test_x = posterior_means(model, codec, [s.text for s in held], device).cpu()
        return accuracy_curve(train_x, pool_y, test_x, held_y, shots, cfg.repeats, "linear", seed)

    results: dict = {"config": cli.config_to_dict(cfg), "lm": {}, "classification": {}}
    for kl_threshold in cfg.kl_thresholds:
        rows = []
        for seed in cfg.seeds:
            model_dir = _train_once(
                cfg, f"vae_lambda{kl_threshold:g}_seed{seed}", seed, kl_threshold=kl_threshold
            )
            model, codec = load_trained(model_dir, device)
            torch.manual_seed(seed)
            metrics = evaluate_model(model, codec, test_texts, device, cfg.iw_samples)
            metrics["curve"] = curve(model_dir, seed)
            rows.append(metrics)
        results["lm"][f"{kl_threshold:g}"] = {
            key: _mean_std([r[key] for r in rows])
            for key in ("ppl", "nll", "neg_elbo", "reconstruction", "kl", "mi", "au")
        }
        results["classification"][f"vae_lambda{kl_threshold:g}"] = _curve_stats([r["curve"] for r in rows])
    ae_curves = [
        curve(_train_once(cfg, f"autoencoder_seed{seed}", seed, autoencoder=True), seed) for seed in cfg.seeds
    ]
    results["classification"]["autoencoder"] = _curve_stats(ae_curves)

    # Qualitative: the first seed's λ = 0.5 model (or the first λ when 0.5 is not in the grid).
    chosen = 0.5 if 0.5 in cfg.kl_thresholds else cfg.kl_thresholds[0]
    model, codec = load_trained(
        Path(cfg.out_dir) / f"vae_lambda{chosen:g}_seed{cfg.seeds[0]}" / "model", device
    )
    options = DecodingOptions(max_length=40)
    torch.manual_seed(0)
    a, b, c = (s.text for s in generate_corpus(3, seed=80_000))
    results["qualitative"] = {
        "model": f"lambda {chosen:g}, seed {cfg.seeds[0]}",
        "interpolation": interpolate(model, codec, a, b, 6, options, device),
        "analogies": [
            {"a": x, "b": y, "c": w, "d": analogy(model, codec, x, y, w, options, device)}
            for x, y, w in [
                (
                    "the chef cooked the soup .",
                    "the chef will cook the soup .",
                    "the singer recorded the album .",
                ),
                (
                    "the great pizza was delightful .",
                    "the awful pizza was terrible .",
                    "the lovely song was great .",
                ),
                (a, b, c),
            ]
        ],
        "guided": [
            {
                k: v
                for k, v in guided_generation(
                    model, codec, attribute, value, 50, options, device, scale
                ).items()
                if k != "sentences"
            }
            for attribute, value, scale in [
                ("sentiment", "positive", 2.0),
                ("topic", "music", 2.0),
                ("tense", "future", 2.0),
            ]
        ],
    }
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "claim.json").write_text(json.dumps(results, indent=2))
    (out / "claim.md").write_text(format_markdown(results))
    print(format_markdown(results))
    return results


def _curve_stats(curves: list[list[dict]]) -> list[dict]:
    rows = []
    for index, row in enumerate(curves[0]):
        accuracies = [c[index]["accuracy"] for c in curves]
        rows.append({"shots": row["shots"], **_mean_std(accuracies)})
    return rows


def format_markdown(results: dict) -> str:
    cfg = results["config"]
    lines = [
        f"Embedded corpus, {cfg['steps']} steps per run, seeds {cfg['seeds']}, mean ± std over seeds.",
        "",
        "| λ | PPL | NLL | −ELBO | KL | MI | AU |",
        "|---|---|---|---|---|---|---|",
    ]
    for lam, m in results["lm"].items():
        cells = [
            f"{m[k]['mean']:.2f} ± {m[k]['std']:.2f}" for k in ("ppl", "nll", "neg_elbo", "kl", "mi", "au")
        ]
        lines.append(f"| {lam} | " + " | ".join(cells) + " |")
    lines += ["", f"Low-resource {cfg['attribute']} accuracy (linear head on latent means):", ""]
    names = list(results["classification"])
    lines.append("| N/class | " + " | ".join(names) + " |")
    lines.append("|---" * (len(names) + 1) + "|")
    for index, row in enumerate(results["classification"][names[0]]):
        cells = [
            f"{results['classification'][n][index]['mean']:.3f} ± "
            f"{results['classification'][n][index]['std']:.3f}"
            for n in names
        ]
        lines.append(f"| {row['shots']} | " + " | ".join(cells) + " |")
    if "qualitative" in results:
        q = results["qualitative"]
        lines += ["", f"Interpolation ({q['model']}):", ""]
        lines += [f"- {p['t']:.1f}: {p['text']}" for p in q["interpolation"]]
        lines += ["", "Analogies (a : b :: c : d):", ""]
        lines += [f"- {x['a']} : {x['b']} :: {x['c']} : **{x['d']}**" for x in q["analogies"]]
        lines += [
            "",
            "Guided generation (attribute vector × scale added to prior samples; checker accuracy):",
            "",
        ]
        lines += [
            f"- {g['attribute']}={g['value']} (scale {g['scale']}): {g['accuracy']:.2f} "
            f"(unsteered {g['baseline_accuracy']:.2f})"
            for g in q["guided"]
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return cli.run(
        run_claim,
        ClaimConfig,
        argv,
        prog="optimus-claim",
        description="The Optimus claim in miniature on the embedded corpus.",
    )


if __name__ == "__main__":
    sys.exit(main())
