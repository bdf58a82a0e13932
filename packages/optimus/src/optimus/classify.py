"""``optimus-classify``: low-resource classification on frozen Optimus features.

For each N in ``--shots`` (labelled examples per class; ``all`` for every training example) and each
of ``--repeats`` random draws, a head (``linear`` or a one-hidden-layer ``mlp``) is trained on the
frozen features of the N·C drawn sentences and scored on the test set. Two feature sets are
compared: the latent means ``E[z|x]`` (``latent``) and the encoder's pooled output (``pooled``).
Features are standardised with the statistics of the whole (unlabelled) training pool.
``--precision bf16|fp16`` runs the model's forward passes (feature extraction) in that precision.

Data: ``--train-file``/``--test-file`` with ``label<TAB>text`` lines or JSONL ``{"text","label"}``;
by default the embedded corpus labelled by ``--attribute``. Test labels never seen in training
are an error.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass

import torch
from torch import nn

from dgm_core import cli
from dgm_core.cli import option
from dgm_core.errors import UserError
from optimus.data import read_sentences
from optimus.grammar import ATTRIBUTES, generate_corpus
from optimus.latents import pooled_features, posterior_means
from optimus.saved_model import SavedModelConfig, beside_model, open_saved_model, write_result

# The frozen features a head can be trained on: latent means E[z|x], or the encoder's pooled output.
FEATURE_SETS = {"latent": posterior_means, "pooled": pooled_features}


def train_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    head: str = "linear",
    epochs: int = 200,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> nn.Module:
    """A classifier head fitted full-batch with Adam (features are small and frozen)."""
    torch.manual_seed(seed)
    dim = features.shape[1]
    if head == "linear":
        module: nn.Module = nn.Linear(dim, num_classes)
    elif head == "mlp":
        module = nn.Sequential(nn.Linear(dim, 128), nn.ReLU(), nn.Linear(128, num_classes))
    else:
        raise UserError(f"unknown head '{head}': expected linear or mlp")
    optimizer = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        optimizer.zero_grad()
        nn.functional.cross_entropy(module(features), labels).backward()
        optimizer.step()
    return module.eval()


def draw_shots(labels: list[int], shots: int | None, rng: random.Random) -> list[int]:
    """Indices of ``shots`` examples per class (all examples when ``None``)."""
    if shots is None:
        return list(range(len(labels)))
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    chosen = []
    for members in by_class.values():
        chosen += rng.sample(members, min(shots, len(members)))
    return chosen


def accuracy_curve(
    train_features: torch.Tensor,
    train_labels: list[int],
    test_features: torch.Tensor,
    test_labels: list[int],
    shots: list[int | None],
    repeats: int = 3,
    head: str = "linear",
    seed: int = 0,
) -> list[dict]:
    """Mean and spread of test accuracy for each N (``None`` = all) over ``repeats`` draws."""
    mean, std = train_features.mean(0), train_features.std(0).clamp(min=1e-6)
    train_x, test_x = (train_features - mean) / std, (test_features - mean) / std
    num_classes = max(max(train_labels), max(test_labels)) + 1
    test_y = torch.tensor(test_labels)
    rows = []
    for n in shots:
        accuracies = []
        for repeat in range(repeats if n is not None else 1):
            rng = random.Random(seed * 1000 + repeat)
            chosen = draw_shots(train_labels, n, rng)
            module = train_head(
                train_x[chosen],
                torch.tensor([train_labels[i] for i in chosen]),
                num_classes,
                head,
                seed=seed + repeat,
            )
            with torch.no_grad():
                accuracies.append(float((module(test_x).argmax(1) == test_y).float().mean()))
        acc = torch.tensor(accuracies)
        rows.append(
            {
                "shots": "all" if n is None else n,
                "accuracy": float(acc.mean()),
                "std": float(acc.std()) if len(accuracies) > 1 else 0.0,
                "repeats": len(accuracies),
            }
        )
    return rows


def parse_shots(values: list[str]) -> list[int | None]:
    shots: list[int | None] = []
    for value in values:
        if value == "all":
            shots.append(None)
            continue
        try:
            n = int(value)
        except ValueError:
            raise UserError(f"--shots takes positive integers or 'all', got {value!r}") from None
        if n < 1:
            raise UserError(f"--shots takes positive integers or 'all', got {value!r}")
        shots.append(n)
    return shots


@dataclass
class ClassifyConfig(SavedModelConfig):
    train_file: str = option(
        "", help="Labelled training pool (label<TAB>text or JSONL); empty: embedded corpus."
    )
    test_file: str = option(
        "", help="Labelled test set; empty: embedded corpus (needs no --train-file either)."
    )
    attribute: str = option(
        "sentiment", help="Embedded corpus: the attribute to classify.", choices=tuple(ATTRIBUTES)
    )
    pool_size: int = option(2000, help="Embedded training pool size.")
    test_size: int = option(1000, help="Embedded test set size.")
    shots: list[str] = option(
        default_factory=lambda: ["1", "10", "100", "all"],
        help="Labelled examples per class (integers or 'all').",
    )
    features: list[str] = option(
        default_factory=lambda: list(FEATURE_SETS), help="Feature sets: latent, pooled."
    )
    head: str = option("linear", help="Classifier head.", choices=("linear", "mlp"))
    repeats: int = option(5, help="Random draws per N (their mean and std are reported).")
    output: str = option(
        "", help="Where to write the JSON curve (default: next to the model, classify.json)."
    )


def classify(cfg: ClassifyConfig) -> dict:
    if bool(cfg.train_file) != bool(cfg.test_file):
        raise UserError("give both --train-file and --test-file, or neither (embedded corpus)")
    if cfg.repeats < 1:
        raise UserError(f"repeats must be at least 1, got {cfg.repeats}")
    unknown_features = [kind for kind in cfg.features if kind not in FEATURE_SETS]
    if unknown_features:
        raise UserError(
            f"unknown feature set '{unknown_features[0]}': expected one of {', '.join(FEATURE_SETS)}"
        )
    shots = parse_shots(cfg.shots)
    runtime, model, codec = open_saved_model(cfg)
    if cfg.train_file:
        train, test = (
            read_sentences(cfg.train_file, require_labels=True),
            read_sentences(cfg.test_file, require_labels=True),
        )
        train_texts, train_names, test_texts, test_names = train.texts, train.labels, test.texts, test.labels
        source = cfg.train_file
    else:
        pool = generate_corpus(cfg.pool_size, seed=40_000 + cfg.seed)
        held = generate_corpus(cfg.test_size, seed=50_000 + cfg.seed)
        train_texts, train_names = [s.text for s in pool], [getattr(s, cfg.attribute) for s in pool]
        test_texts, test_names = [s.text for s in held], [getattr(s, cfg.attribute) for s in held]
        source = f"embedded:{cfg.attribute}"
    classes = sorted(set(train_names))  # type: ignore[arg-type]
    unknown = sorted(set(test_names) - set(classes))  # type: ignore[arg-type]
    if unknown:
        raise UserError(
            f"test labels {unknown[:5]} never occur in the training data (labels: {classes[:10]})"
        )
    if len(classes) < 2:
        raise UserError(f"classification needs at least 2 labels, the training data has {classes}")
    index = {name: i for i, name in enumerate(classes)}
    train_y = [index[n] for n in train_names]  # type: ignore[union-attr]
    test_y = [index[n] for n in test_names]  # type: ignore[union-attr]
    result = {"source": source, "classes": classes, "head": cfg.head, "curves": {}}
    for kind in cfg.features:
        features_of = FEATURE_SETS[kind]
        # The model's forward passes run in --precision; the heads train on float32 copies on the CPU.
        with runtime.precision.autocast():
            train_x = features_of(model, codec, train_texts, runtime.device).cpu()
            test_x = features_of(model, codec, test_texts, runtime.device).cpu()
        result["curves"][kind] = accuracy_curve(
            train_x, train_y, test_x, test_y, shots, cfg.repeats, cfg.head, cfg.seed
        )
    print(format_curves(result))
    output = write_result(result, cfg.output or beside_model(cfg.model, "classify.json"))
    print(f"wrote {output}")
    return result


def format_curves(result: dict) -> str:
    kinds = list(result["curves"])
    header = f"{'N/class':>8}  " + "  ".join(f"{k:>16}" for k in kinds)
    lines = [f"{result['source']} ({len(result['classes'])} classes, {result['head']} head)", header]
    for row_index, row in enumerate(result["curves"][kinds[0]]):
        cells = []
        for kind in kinds:
            r = result["curves"][kind][row_index]
            cells.append(f"{r['accuracy']:.3f} ± {r['std']:.3f}".rjust(16))
        lines.append(f"{row['shots']!s:>8}  " + "  ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return cli.run(
        classify,
        ClassifyConfig,
        argv,
        prog="optimus-classify",
        description="Low-resource classification accuracy curve on frozen latent / encoder features.",
    )


if __name__ == "__main__":
    sys.exit(main())
