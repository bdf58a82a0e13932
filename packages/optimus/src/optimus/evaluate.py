"""``optimus-eval``: language-modelling metrics of a trained Optimus VAE on a test file.

Reports PPL from the importance-weighted bound with K posterior samples (default 100), the bound
per sentence (``nll``), −ELBO, reconstruction, KL, MI and AU — defined in
:mod:`optimus.evaluation`, which computes them. PPL's token count is every token the decoder
predicts (the sentence's tokens plus ``<EOS>``, not ``<BOS>``, never padding); ``num_tokens`` in
the output says how many that was. ``ppl_original`` is the same bound over the original code's
count, which also counts each sentence's ``<BOS>`` (``num_tokens_original``): the number to put
next to the Optimus paper's. Sentences longer than the block size (the model's own unless
``--block-size``) are dropped and counted, as the original's evaluation does, or truncated
(``--long-sentences``). ``--precision bf16|fp16`` runs the forward passes in that precision; the
log-likelihood sums stay float32.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from dgm_core import cli
from dgm_core.cli import option
from dgm_core.errors import UserError
from optimus.corpora import embedded_test_texts
from optimus.data import FORMATS, read_sentences
from optimus.evaluation import LONG_SENTENCES, evaluate_model
from optimus.saved_model import (
    SavedModelConfig,
    beside_model,
    open_saved_model,
    resolve_block_size,
    write_result,
)


@dataclass
class EvalConfig(SavedModelConfig):
    test_file: str = option(
        "", help="Test sentences (text, label<TAB>text or JSONL); empty: embedded held-out corpus."
    )
    data_format: str = option("auto", help="Input format.", choices=FORMATS)
    num_sentences: int = option(500, help="Embedded test sentences when no --test-file is given.")
    iw_samples: int = option(
        100, help="K, the importance samples per sentence for the PPL bound (0: ELBO only)."
    )
    batch_size: int = option(32, help="Sentences per batch.")
    iw_chunk: int = option(
        25,
        help="Importance samples decoded at once: the peak memory is one decoder pass over batch_size x "
        "iw_chunk sequences (its logits: batch_size*iw_chunk*block_size*vocabulary*4 bytes); the "
        "numbers do not depend on it.",
    )
    block_size: int = option(0, help="Longest token sequence (0: the model's own block size).")
    long_sentences: str = option(
        "drop",
        help="Sentences longer than the block size: drop and count them (the original's evaluation) "
        "or truncate them (counted too).",
        choices=LONG_SENTENCES,
    )
    output: str = option("", help="Where to write the JSON (default: <model>/../eval.json).")


def evaluate(cfg: EvalConfig) -> dict:
    runtime, model, codec = open_saved_model(cfg)
    block_size = resolve_block_size(model, cfg.block_size)
    if cfg.test_file:
        # The model's decoder tokenizer reads the original's .json shards (GPT-2 ids) when given one.
        texts = read_sentences(cfg.test_file, cfg.data_format, shard_tokenizer=codec.decoder_tokenizer).texts
    else:
        texts = embedded_test_texts(cfg.num_sentences, cfg.seed)
    if cfg.iw_samples < 0:
        raise UserError(f"iw_samples must be >= 0, got {cfg.iw_samples}")
    if not texts:
        raise UserError("nothing to evaluate: --num-sentences must be at least 1")
    with runtime.precision.autocast():
        result = evaluate_model(
            model,
            codec,
            texts,
            runtime.device,
            cfg.iw_samples,
            cfg.batch_size,
            block_size,
            cfg.long_sentences,
            cfg.iw_chunk,
        )
    result["model"] = str(cfg.model)
    result["test_file"] = cfg.test_file or "embedded"
    result["precision"] = cfg.precision
    output = write_result(result, cfg.output or beside_model(cfg.model, "eval.json"))
    print(format_table(result))
    print(f"wrote {output}")
    return result


def format_table(result: dict) -> str:
    rows = [
        (f"PPL (IW, K={result['iw_samples']})", result.get("ppl", result.get("ppl_elbo"))),
        ("PPL, original's count", result.get("ppl_original", result.get("ppl_elbo_original"))),
        ("NLL / sentence", result.get("nll")),
        ("-ELBO / sentence", result["neg_elbo"]),
        ("reconstruction", result["reconstruction"]),
        ("KL", result["kl"]),
        ("MI", result["mi"]),
        ("AU (delta 0.01)", f"{result['au']} / {result['latent_size']}"),
        ("sentences / tokens", f"{result['num_sentences']} / {result['num_tokens']}"),
        ("tokens, original's count", result["num_tokens_original"]),
        (
            f"block size {result['block_size']}",
            f"{result['dropped']} dropped, {result['truncated']} truncated",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    lines = []
    for name, value in rows:
        if value is None:
            continue
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{name:<{width}}  {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return cli.run(
        evaluate,
        EvalConfig,
        argv,
        prog="optimus-eval",
        description="PPL (importance-weighted), -ELBO, reconstruction, KL, MI and AU of an Optimus model.",
    )


if __name__ == "__main__":
    sys.exit(main())
