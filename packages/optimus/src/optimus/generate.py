"""``optimus-generate``: sentences from a trained Optimus VAE.

Modes (``--mode``):

* ``prior`` — decode ``z ~ N(0, I)``;
* ``reconstruct`` — encode each input sentence and decode its posterior mean;
* ``interpolate`` — decode ``z = (1−t)·z_a + t·z_b`` for ``--steps`` even values of ``t`` between two
  sentences;
* ``analogy`` — ``a : b :: c : ?`` decoded from ``z_c + (z_b − z_a)``;
* ``guided`` — sentences with a chosen attribute value: ``z ~ N(0, I)`` plus ``--guidance-scale`` times
  the attribute vector (mean latent of sentences with the value minus the mean latent of the others).
  Labelled sentences come from ``--labeled-file`` (``label<TAB>text`` or JSONL) or, by default, from
  the embedded corpus, whose checker then reads the attribute back and reports the accuracy.

All decoding uses the KV cache (the memory slot is its first entry): greedy or sampling with
temperature/top-k/top-p, up to ``--max-length`` tokens (by default the model's block size).
Input sentences are encoded with the model's own block size. ``--precision bf16|fp16`` runs encoding
and decoding in that precision.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from dgm_core import cli
from dgm_core.cli import option
from dgm_core.errors import UserError
from optimus.data import read_sentences
from optimus.grammar import ATTRIBUTES, GrammarSentence, generate_corpus, read_attributes
from optimus.latents import DecodingOptions, decode_latents, posterior_means
from optimus.saved_model import SavedModelConfig, open_saved_model, write_result
from optimus.tokenization import SentenceCodec
from optimus.vae import OptimusVAE

MODES = ("prior", "reconstruct", "interpolate", "analogy", "guided")


def interpolate(model, codec, a: str, b: str, steps: int, options: DecodingOptions, device) -> list[dict]:
    """Decoded sentences along the straight line between the posterior means of ``a`` and ``b``."""
    if steps < 2:
        raise UserError(f"interpolation needs at least 2 steps, got {steps}")
    z = posterior_means(model, codec, [a, b], device)
    weights = torch.linspace(0, 1, steps, device=device).unsqueeze(1)
    path = (1 - weights) * z[0] + weights * z[1]
    return [
        {"t": float(t), "text": text}
        for t, text in zip(weights.squeeze(1), decode_latents(model, codec, path, options))
    ]


def analogy(model, codec, a: str, b: str, c: str, options: DecodingOptions, device) -> str:
    """``a : b :: c : ?`` as ``decode(z_c + z_b − z_a)``."""
    z = posterior_means(model, codec, [a, b, c], device)
    return decode_latents(model, codec, (z[2] + z[1] - z[0]).unsqueeze(0), options)[0]


def attribute_reconstruction(
    model: OptimusVAE,
    codec: SentenceCodec,
    sentences: list[GrammarSentence],
    options: DecodingOptions,
    device,
) -> dict:
    """How much of each embedded sentence's meaning survives the round trip through ``z``.

    Each sentence is encoded to its posterior mean and decoded (``options``, greedy by default);
    the checker reads sentiment, topic and tense back from the output. Returns, over the
    sentences, the share whose output keeps each attribute (``sentiment``, ``topic``, ``tense``),
    all three at once (``all``), and the share of distinct outputs (``distinct``: a decoder that
    ignores ``z`` writes one template for every input), plus the ``outputs`` themselves.
    """
    if not sentences:
        raise UserError("attribute reconstruction needs at least one sentence")
    z = posterior_means(model, codec, [s.text for s in sentences], device)
    outputs = decode_latents(model, codec, z, options)
    kept = {name: 0 for name in ATTRIBUTES}
    all_kept = 0
    for sentence, output in zip(sentences, outputs, strict=True):
        read = read_attributes(output)
        hits = {name: read[name] == getattr(sentence, name) for name in ATTRIBUTES}
        for name, hit in hits.items():
            kept[name] += hit
        all_kept += all(hits.values())
    count = len(sentences)
    return {
        **{name: hits / count for name, hits in kept.items()},
        "all": all_kept / count,
        "distinct": len(set(outputs)) / count,
        "outputs": outputs,
    }


def attribute_vectors(model, codec, texts: list[str], labels: list[str], device) -> dict[str, torch.Tensor]:
    """Per label: mean latent of its sentences minus the mean latent of all other sentences."""
    z = posterior_means(model, codec, texts, device)
    vectors = {}
    for value in sorted(set(labels)):
        inside = torch.tensor([label == value for label in labels], device=z.device)
        if inside.all() or not inside.any():
            raise UserError(f"attribute value '{value}' needs sentences both with and without it")
        vectors[value] = z[inside].mean(0) - z[~inside].mean(0)
    return vectors


def guided_generation(
    model: OptimusVAE,
    codec: SentenceCodec,
    attribute: str,
    value: str,
    num: int,
    options: DecodingOptions,
    device,
    scale: float = 1.0,
    labeled: tuple[list[str], list[str]] | None = None,
    num_reference: int = 2000,
    generator: torch.Generator | None = None,
) -> dict:
    """Generate ``num`` sentences steered towards ``attribute == value``.

    On the embedded corpus the result includes ``accuracy`` (fraction the checker reads back as
    ``value``) and ``baseline_accuracy`` (the same for unsteered prior samples).
    """
    embedded = labeled is None
    if embedded:
        if attribute not in ATTRIBUTES:
            raise UserError(
                f"unknown attribute '{attribute}': the embedded corpus has {', '.join(ATTRIBUTES)}"
            )
        corpus = generate_corpus(num_reference, seed=20_000)
        labeled = ([s.text for s in corpus], [getattr(s, attribute) for s in corpus])
    texts, labels = labeled
    if value not in set(labels):
        raise UserError(f"unknown label '{value}': the labelled data has {', '.join(sorted(set(labels)))}")
    vector = attribute_vectors(model, codec, texts, labels, device)[value]
    prior = torch.randn(num, model.latent_size, device=device, generator=generator)
    steered = decode_latents(model, codec, prior + scale * vector, options)
    result = {"attribute": attribute, "value": value, "scale": scale, "sentences": steered}
    if embedded:
        plain = decode_latents(model, codec, prior, options)
        result["accuracy"] = sum(read_attributes(t)[attribute] == value for t in steered) / num
        result["baseline_accuracy"] = sum(read_attributes(t)[attribute] == value for t in plain) / num
    return result


@dataclass
class GenerateConfig(SavedModelConfig):
    mode: str = option("prior", help="What to generate.", choices=MODES)
    num: int = option(8, help="Sentences to generate (prior, guided).")
    sentences: list[str] = option(
        default_factory=list,
        help="Input sentences: reconstruct (any number), "
        "interpolate (a b), analogy (a b c). Empty: embedded examples.",
    )
    input_file: str = option("", help="Sentences to reconstruct, one per line (instead of --sentences).")
    steps: int = option(6, help="Interpolation points including both ends.")
    attribute: str = option("sentiment", help="Guided: the attribute (embedded: sentiment, topic, tense).")
    value: str = option("positive", help="Guided: the attribute value (a label) to steer towards.")
    labeled_file: str = option(
        "",
        help="Guided: labelled sentences defining the attribute vectors "
        "(label<TAB>text or JSONL); empty: the embedded corpus.",
    )
    guidance_scale: float = option(1.0, help="Guided: multiple of the attribute vector added to z.")
    strategy: str = option("greedy", help="Decoding.", choices=("greedy", "sample"))
    temperature: float = option(1.0, help="Sampling temperature.")
    top_k: int = option(0, help="Sample among the k most likely tokens (0: all).")
    top_p: float = option(1.0, help="Nucleus sampling mass (1: off).")
    max_length: int = option(
        0, help="Most new tokens per sentence (0: the model's block size, less the <BOS>)."
    )
    output: str = option("", help="Also write the result as JSON here.")


def generate(cfg: GenerateConfig) -> dict:
    if cfg.max_length < 0 or cfg.num < 1:
        raise UserError("max_length must be >= 0 (0: the model's block size) and num at least 1")
    runtime, model, codec = open_saved_model(cfg)
    max_length = cfg.max_length or model.block_size - 1
    options = DecodingOptions(cfg.strategy, cfg.temperature, cfg.top_k, cfg.top_p, max_length)
    with runtime.precision.autocast():
        result, lines = _generate_mode(cfg, model, codec, options, runtime.device)
    print("\n".join(lines))
    if cfg.output:
        write_result(result, cfg.output)
    return result


def _generate_mode(
    cfg: GenerateConfig, model: OptimusVAE, codec: SentenceCodec, options: DecodingOptions, device
) -> tuple[dict, list[str]]:
    """The result of ``--mode`` and the lines that print it."""
    examples = [s.text for s in generate_corpus(3, seed=30_000 + cfg.seed)]
    sentences = list(cfg.sentences)
    if cfg.mode == "prior":
        z = torch.randn(cfg.num, model.latent_size, device=device)
        result = {"mode": "prior", "sentences": decode_latents(model, codec, z, options)}
        return result, result["sentences"]
    if cfg.mode == "reconstruct":
        if cfg.input_file:
            sentences = read_sentences(cfg.input_file).texts
        sentences = sentences or examples
        z = posterior_means(model, codec, sentences, device)
        outputs = decode_latents(model, codec, z, options)
        result = {
            "mode": "reconstruct",
            "pairs": [{"input": a, "output": b} for a, b in zip(sentences, outputs)],
        }
        return result, [f"{a}\n  -> {b}" for a, b in zip(sentences, outputs)]
    if cfg.mode == "interpolate":
        if sentences and len(sentences) != 2:
            raise UserError(f"interpolate needs exactly 2 sentences, got {len(sentences)}")
        a, b = sentences or examples[:2]
        path = interpolate(model, codec, a, b, cfg.steps, options, device)
        result = {"mode": "interpolate", "from": a, "to": b, "path": path}
        return result, [f"{p['t']:.2f}  {p['text']}" for p in path]
    if cfg.mode == "analogy":
        if sentences and len(sentences) != 3:
            raise UserError(f"analogy needs exactly 3 sentences (a b c), got {len(sentences)}")
        a, b, c = sentences or examples
        answer = analogy(model, codec, a, b, c, options, device)
        result = {"mode": "analogy", "a": a, "b": b, "c": c, "d": answer}
        return result, [f"{a} : {b} ::", f"{c} : {answer}"]
    labeled = None
    if cfg.labeled_file:
        records = read_sentences(cfg.labeled_file, require_labels=True)
        labeled = (records.texts, records.labels)
    result = guided_generation(
        model, codec, cfg.attribute, cfg.value, cfg.num, options, device, cfg.guidance_scale, labeled
    )
    result["mode"] = "guided"
    lines = list(result["sentences"])
    if "accuracy" in result:
        lines.append(
            f"attribute accuracy {result['accuracy']:.3f} (unsteered prior samples: "
            f"{result['baseline_accuracy']:.3f})"
        )
    return result, lines


def main(argv: list[str] | None = None) -> int:
    return cli.run(
        generate,
        GenerateConfig,
        argv,
        prog="optimus-generate",
        description="Prior samples, reconstructions, interpolations, analogies, attribute-guided sentences.",
    )


if __name__ == "__main__":
    sys.exit(main())
