"""``optimus-train``: pre-train or fine-tune the Optimus VAE (torchrun DDP, AMP and resume via dgm-core).

With no arguments it builds a tiny BERT and a tiny GPT-2 from scratch, trains their tokenizers on
the embedded grammar corpus, trains for a few minutes on a CPU and saves the model to
``runs/optimus/model`` — the folder ``optimus-eval``, ``optimus-generate`` and ``optimus-classify``
read by default. ``--encoder``/``--decoder`` start from local Hugging Face checkpoints instead
(a folder, or a name already in the local HF cache; never a network call); ``--init-from`` from
a whole saved or converted Optimus (``optimus-convert``), with a fresh optimizer, learning-rate
schedule and step counter.

Presets follow the original's scripts: ``ptb``, ``yelp``, ``yahoo``, ``snli`` (fine-tuning) and
``wikipedia`` (pre-training); see :data:`DATASET_PRESETS` and the README's table.

Each evaluation writes ``samples/step_XXXXXX.jsonl`` (reconstructions of held-out sentences and
samples from the prior) and logs reconstruction, KL, MI and active units of the held-out set.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from dgm_core import cli
from dgm_core.cli import option
from dgm_core.errors import UserError
from dgm_core.runtime.distributed import unwrap_model, wait_for_everyone
from dgm_core.runtime.schedules import warmup_linear_decay
from dgm_core.training import TrainingConfig, TrainingRun
from optimus.building import ModelOptions, build_model, open_or_build_codec, parameter_groups
from optimus.corpora import (
    corpus_fingerprint,
    tokenizer_corpus_fingerprint,
    tokenizer_training_texts,
    training_and_held_out_texts,
)
from optimus.data import FORMATS, ReadStats, ShardDecoder, collate, open_or_build_token_cache
from optimus.evaluation import evaluate_model, write_samples
from optimus.objective import BETA_SCHEDULES, KL_MODES, BetaSchedule, LossTerms, vae_loss
from optimus.saved_model import save_trained
from optimus.tokenization import DECODER_SUBFOLDER, load_tokenizer
from optimus.vae import POOLINGS, OptimusVAE, VAEOutput, word_dropout

PRETRAINED_LR = 5e-5  # the paper's AdamW learning rate for pretrained BERT/GPT-2
SCRATCH_LR = 1e-3  # tiny from-scratch models learn nothing in minutes at 5e-5


@dataclass
class OptimusTrainConfig(TrainingConfig):
    """Options of ``optimus-train``."""

    run_dir: str = option("runs/optimus", help="Run directory; the final model goes to <run_dir>/model.")
    steps: int = option(1200, help="Optimizer steps in total (across resumes); see also --epochs.")
    epochs: float = option(
        0.0,
        help="Train for this many passes over the training corpus instead of --steps (0: use --steps); "
        "steps = epochs x (sentences // (batch size x grad accum x processes)).",
    )
    log_every: int = option(50, help="Log training metrics every N steps.")
    checkpoint_every: int = option(400, help="Checkpoint every N steps (0: only at the end).")
    # data
    train_file: str = option(
        "",
        help="Training text: a file or a folder of shards (text, label<TAB>text, JSONL, or the "
        "original's .json shards). Empty: the embedded grammar corpus. Malformed lines are skipped "
        "and counted.",
    )
    eval_file: str = option(
        "",
        help="Held-out sentences; empty: embedded held-out set, or every 20th "
        "sentence (up to 500) of --train-file.",
    )
    data_format: str = option(
        "auto",
        help="Input format (auto: see optimus.data; tab-separated lines that are not label<TAB>text "
        "must be named).",
        choices=FORMATS,
    )
    shard_tokenizer: str = option(
        "",
        help="GPT-2 tokenizer (folder or cached name) that decodes the original's .json shards; "
        "empty: the decoder tokenizer of --init-from, else --decoder.",
    )
    corpus_size: int = option(10000, help="Sentences of the embedded corpus (when no --train-file).")
    block_size: int = option(64, help="Longest token sequence; longer sentences are truncated and counted.")
    batch_size: int = option(32, help="Sentences per batch per process.")
    # model
    init_from: str = option(
        "",
        help="Start from a saved or converted Optimus model (folder or run directory): its encoder, "
        "decoder, latent head, injections and tokenizers; fresh optimizer, schedule and step counter.",
    )
    encoder: str = option("", help="Pretrained BERT folder or cached name; empty: a tiny BERT from scratch.")
    decoder: str = option(
        "", help="Pretrained GPT-2 folder or cached name; empty: a tiny GPT-2 from scratch."
    )
    latent_size: int = option(32, help="Dimensions of z (32 in the paper; 768 for sentence manipulation).")
    memory_injection: bool = option(True, help="Inject z as an extra attended key/value slot in every layer.")
    embedding_injection: bool = option(True, help="Add a projection of z to every token embedding.")
    encoder_pooling: str = option(
        "pooler",
        help="What the latent head reads: BERT's [CLS] pooler (the original) or the mean of the last "
        "hidden states.",
        choices=POOLINGS,
    )
    unit_variance: bool = option(
        False,
        help="Fix the posterior variance at 1 (the original's --use_deterministic_connect): KL = |mean|^2/2.",
    )
    scratch_hidden: int = option(128, help="Width of from-scratch BERT/GPT-2.")
    scratch_layers: int = option(2, help="Layers of from-scratch BERT/GPT-2.")
    vocab_size: int = option(1000, help="Vocabulary of tokenizers trained from scratch.")
    # objective
    beta_schedule: str = option("cyclical", help="β schedule.", choices=BETA_SCHEDULES)
    beta_max: float = option(1.0, help="Largest β.")
    n_cycle: int = option(1, help="Cycles of the cyclical schedule (paper: 10 pre-training, 1 fine-tuning).")
    ratio_zero: float = option(0.5, help="Fraction of each cycle at β = 0.")
    ratio_increase: float = option(0.25, help="Fraction of each cycle ramping β up.")
    kl_threshold: float = option(
        0.5, help="λ: KL thresholding level (paper grid 0.05, 0.1, 0.25, 0.5, 1.0; 0: off)."
    )
    kl_mode: str = option(
        "per_dim", help="per_dim (the reference's rule) or free_bits (batch-averaged).", choices=KL_MODES
    )
    length_weighted: bool = option(False, help="Divide each sentence's reconstruction loss by its length.")
    word_dropout: float = option(
        0.0,
        help="Fraction of teacher-forced decoder inputs replaced by <PAD> "
        "(Bowman et al., 2016; not in the reference; 0: off).",
    )
    autoencoder: bool = option(
        False,
        help="Baseline without the VAE objective: z = posterior mean and no KL "
        "term (a plain autoencoder with the same networks).",
    )
    # optimisation
    lr: float = option(
        0.0,
        help=f"AdamW learning rate of the decoder and latent layers; 0: {PRETRAINED_LR} with a pretrained "
        f"decoder, {SCRATCH_LR} for one built from scratch.",
    )
    weight_decay: float = option(0.0, help="AdamW weight decay.")
    encoder_lr: float = option(
        0.0,
        help=f"Learning rate of the BERT encoder; 0: {PRETRAINED_LR} for a pretrained encoder, else --lr.",
    )
    warmup_steps: int = option(0, help="Linear learning-rate warm-up steps (then linear decay to 0).")
    max_grad_norm: float = option(1.0, help="Gradient clipping norm (0: off).")
    # evaluation during training
    eval_every: int = option(400, help="Evaluate and write sample texts every N steps (0: only at the end).")
    eval_sentences: int = option(256, help="Held-out sentences used by each evaluation.")
    num_samples: int = option(8, help="Reconstructions and prior samples written per evaluation (0: none).")


# The original's recipes (ChunyuanLI/Optimus). Fine-tuning: run_lm_vae_training.py as its Philly
# job files run it (code/scripts/scripts_philly/train_vae_{penn,yelp,yahoo,snli}.yaml): per-GPU
# batch on a 4-GPU node (DataParallel, so 4x per optimizer step: here batch_size x grad_accum 4),
# block size, epochs; one zero-linear beta cycle (n_cycle=1 in the script), ratio_zero 0.5,
# ratio_increase 0.25, beta 1.0, AdamW 5e-5 without warm-up or weight decay, clipping 1.0. lambda
# (dim_target_kl, applied whenever beta > 0) is 0.5 as in the public fine-tuning script
# (scripts_local/run_ft_lm_vae_optimus.sh) and the SNLI instructions; the job files sweep
# 0.01-1.0. Pre-training: run_lm_vae_pretraining_phdist_beta.py as scripts_hpc/rr3_wiki_beta.json
# runs it: 16 per GPU on 16 GPUs, block 128, one epoch over wikipedia_json_64_filtered, 10 beta
# cycles, dim_target_kl 1.0. The latent size is 32 throughout (the released 768 models: --latent-size 768).
_FINETUNE = {
    "latent_size": 32,
    "beta_schedule": "cyclical",
    "beta_max": 1.0,
    "n_cycle": 1,
    "ratio_zero": 0.5,
    "ratio_increase": 0.25,
    "kl_threshold": 0.5,
    "kl_mode": "per_dim",
    "lr": 5e-5,
    "encoder_lr": 5e-5,
    "warmup_steps": 0,
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "grad_accum": 4,
}
DATASET_PRESETS = {
    "ptb": {**_FINETUNE, "batch_size": 4, "block_size": 100, "epochs": 1.0, "data_format": "text"},
    "yelp": {**_FINETUNE, "batch_size": 4, "block_size": 300, "epochs": 1.0, "data_format": "labeled"},
    "yahoo": {**_FINETUNE, "batch_size": 4, "block_size": 512, "epochs": 1.0, "data_format": "text"},
    "snli": {**_FINETUNE, "batch_size": 10, "block_size": 100, "epochs": 20.0, "data_format": "text"},
    "wikipedia": {
        **_FINETUNE,
        "n_cycle": 10,
        "kl_threshold": 1.0,
        "batch_size": 16,
        "grad_accum": 16,
        "block_size": 128,
        "epochs": 1.0,
        "data_format": "optimus_json",
    },
}

PRESETS = {
    # The paper's two regimes in short: 10 cycles and lambda 1.0 for pre-training (the original's
    # Wikipedia run), 1 cycle for fine-tuning (beta_max 1, lambda at its default 0.5).
    "pretrain": {
        "n_cycle": 10,
        "beta_max": 1.0,
        "ratio_zero": 0.5,
        "ratio_increase": 0.25,
        "kl_threshold": 1.0,
    },
    "finetune": {"n_cycle": 1, "beta_max": 1.0, "ratio_zero": 0.5, "ratio_increase": 0.25},
    **DATASET_PRESETS,
    # A fast smoke run of the whole path (tests, demos).
    "smoke": {
        "steps": 30,
        "corpus_size": 400,
        "eval_every": 0,
        "eval_sentences": 32,
        "checkpoint_every": 0,
        "log_every": 10,
        "scratch_hidden": 32,
        "vocab_size": 400,
        "num_samples": 2,
        "progress": False,
    },
    # `nox -s demo`: the default path, shortened to about two minutes on a 2-core CPU. At 300 steps
    # the posterior had not left the prior yet (AU 0, constant interpolations); 600 steps gave
    # AU 27/32, MI 1.5 nats and interpolations that move through the corpus (2026-11-25, 2-core VM).
    "demo": {
        "steps": 600,
        "corpus_size": 3000,
        "eval_every": 300,
        "checkpoint_every": 300,
        "eval_sentences": 128,
    },
}


@dataclass
class TrainResult:
    """The trained model (on every rank) and the last held-out evaluation (rank 0; empty elsewhere)."""

    model: OptimusVAE
    evaluation: dict


class _StepTotals:
    """Sums over a step's micro-batches, so logged values are those of the whole step batch.

    Kept as tensors on the device (no host sync per micro-batch); read on logging steps only.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.micro_batches = 0
        self.means: list[torch.Tensor] = []

    def add(self, out: VAEOutput, terms: LossTerms) -> None:
        for name, value in (
            ("loss", terms.loss),
            ("reconstruction", terms.reconstruction),
            ("kl", terms.kl),
            ("kl_term", terms.kl_term),
            ("nll_sum", out.reconstruction_nll.sum()),
            ("tokens", out.num_tokens.sum()),
        ):
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.micro_batches += 1
        self.means.append(out.mean.detach().float())

    def metrics(self) -> dict[str, float]:
        n = self.micro_batches  # equal-sized micro-batches: the step's means are means of their means
        sums = {name: float(value) for name, value in self.sums.items()}
        metrics = {
            "loss": sums["loss"] / n,
            "reconstruction": sums["reconstruction"] / n,
            "token_nll": sums["nll_sum"] / max(sums["tokens"], 1.0),
            "kl": sums["kl"] / n,
            "kl_term": sums["kl_term"] / n,
        }
        means = torch.cat(self.means)
        # The batch's active units: a cheap running estimate of the evaluation's AU.
        if means.shape[0] > 1:
            metrics["au_batch"] = float((means.var(dim=0) >= 0.01).sum())
        return metrics


def _shard_decoder(cfg: OptimusTrainConfig, options: ModelOptions) -> tuple[ShardDecoder | None, str]:
    """The GPT-2 tokenizer that decodes the original's ``.json`` shards (loaded only if one is read)."""
    if cfg.shard_tokenizer:
        name = cfg.shard_tokenizer
    elif options.init_from:
        name = str(Path(options.init_from) / DECODER_SUBFOLDER)
    else:
        name = options.decoder
    if not name:
        return None, ""
    return ShardDecoder(lambda: load_tokenizer(name, "shard (GPT-2)")), name


def train(cfg: OptimusTrainConfig) -> TrainResult:
    """Train, evaluate, and save ``<run_dir>/model``."""
    if cfg.batch_size < 1 or cfg.block_size < 4 or cfg.latent_size < 1:
        raise UserError("batch_size, latent_size must be >= 1 and block_size >= 4")
    if not 0 <= cfg.word_dropout < 1:
        raise UserError(f"word_dropout must be in [0, 1), got {cfg.word_dropout}")
    if cfg.num_samples < 0:
        raise UserError(f"num_samples must be >= 0 (0: write none), got {cfg.num_samples}")
    if cfg.warmup_steps < 0:
        raise UserError(f"warmup_steps must be >= 0, got {cfg.warmup_steps}")
    if cfg.epochs < 0:
        raise UserError(f"epochs must be >= 0 (0: train for --steps), got {cfg.epochs}")
    options = ModelOptions.from_config(cfg)
    run_dir = Path(cfg.run_dir)
    # The model is built inside the run (after its tokenizers), so a checkpoint is matched against
    # the options that shape the model rather than against the model's full configuration.
    with TrainingRun(cfg, model_config=options.to_dict(), name="optimus") as run:
        device = run.device
        shard_decoder, shard_name = _shard_decoder(cfg, options)
        read_stats = ReadStats()
        train_texts, held_out = training_and_held_out_texts(
            cfg.train_file,
            cfg.eval_file,
            cfg.data_format,
            cfg.corpus_size,
            cfg.eval_sentences,
            cfg.seed,
            shard_decoder,
            read_stats,
        )
        with run.main_process_first():
            # One-time preparation: rank 0 trains and saves the tokenizers (a resumed run reuses
            # them, so token ids never shift) and tokenizes the corpus; the other ranks then
            # find both on disk and only open them. Both are keyed by the corpus they come from.
            codec = open_or_build_codec(
                run_dir / "tokenizers",
                options,
                lambda: tokenizer_training_texts(
                    cfg.train_file, cfg.data_format, cfg.corpus_size, cfg.seed, shard_decoder=shard_decoder
                ),
                allow_rebuild=run.resume_from is None,
                corpus_key=tokenizer_corpus_fingerprint(
                    cfg.train_file, cfg.data_format, cfg.corpus_size, cfg.seed, shard_name
                ),
            )
            corpus_key = corpus_fingerprint(
                cfg.train_file,
                cfg.eval_file,
                cfg.data_format,
                cfg.corpus_size,
                cfg.eval_sentences,
                cfg.seed,
                shard_name,
            )
            corpus = open_or_build_token_cache(
                train_texts, codec, cfg.block_size, run_dir / "token_cache", corpus_key
            )
        if read_stats.sentences:  # the training file was read just now (not a reused cache)
            run.logger.info("read the training data: %s", read_stats.describe())
        if cfg.epochs > 0:
            # --epochs fixes the run's length in optimizer steps; it needs the corpus size, known
            # only now. The run object reads cfg.steps when it loops, so set it before any use.
            step_batch = cfg.batch_size * cfg.grad_accum * run.dist.world_size
            if len(corpus) < step_batch:
                raise UserError(
                    f"{len(corpus)} training sentences are fewer than one step batch ({step_batch})"
                )
            cfg.steps = max(1, int(cfg.epochs * (len(corpus) // step_batch)))
            if run.dist.is_main:
                run.write_json("config.json", run.config_record())
            run.logger.info("%g epoch(s) of %d sentences: %d steps", cfg.epochs, len(corpus), cfg.steps)
        # The same initial weights on every rank, without disturbing the run's per-rank RNG streams.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = build_model(options, codec)
        corpus.check_vocab(model.encoder.config.vocab_size, model.decoder.config.vocab_size)
        if corpus.meta["truncated"]:
            run.logger.warning(
                "%d training sentence(s) truncated to %d tokens", corpus.meta["truncated"], cfg.block_size
            )
        # Auto learning rates: the paper's 5e-5 for pretrained halves (and for a whole pretrained
        # Optimus), 1e-3 for halves built from scratch.
        pretrained_decoder = bool(cfg.decoder or options.init_from)
        pretrained_encoder = bool(cfg.encoder or options.init_from)
        lr = cfg.lr if cfg.lr > 0 else (PRETRAINED_LR if pretrained_decoder else SCRATCH_LR)
        encoder_lr = cfg.encoder_lr if cfg.encoder_lr > 0 else (PRETRAINED_LR if pretrained_encoder else lr)
        run.logger.info(
            "training on %d sentences, %d held out; lr %g (encoder %g)%s",
            len(corpus),
            len(held_out),
            lr,
            encoder_lr,
            f"; initialised from {options.init_from}" if options.init_from else "",
        )

        model = model.to(device)
        # A fresh optimizer and schedule, also with --init-from: only the weights carry over.
        optimizer = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay, encoder_lr), lr=lr)
        scheduler = warmup_linear_decay(optimizer, cfg.warmup_steps, cfg.steps)
        beta = BetaSchedule(
            cfg.beta_schedule, cfg.steps, cfg.beta_max, cfg.n_cycle, cfg.ratio_zero, cfg.ratio_increase
        )
        run.track(models={"model": model}, optimizers={"model": optimizer}, schedulers={"model": scheduler})
        start = run.resume()
        ddp_model = run.wrap(model)
        # Each step's indices hold --grad-accum micro-batches of --batch-size (run.sampler's contract).
        sampler = run.sampler(len(corpus), cfg.batch_size, start_step=start, lengths=corpus.decoder_lengths)
        last_eval: dict = {}
        model.train()
        for step, indices in zip(run.steps(start), sampler):
            beta_now = 0.0 if cfg.autoencoder else beta(step)
            totals = _StepTotals()
            for chunk, sync in run.micro_batches(ddp_model, indices):
                batch = collate([corpus[i] for i in chunk], codec.encoder_pad_id, codec.decoder_pad_id)
                batch = batch.to(device)
                decoder_inputs = word_dropout(batch.decoder_ids, cfg.word_dropout, codec.decoder_pad_id)
                with sync:  # DDP's no_sync() on all but the last micro-batch: one all-reduce per step
                    with run.precision.autocast():
                        out = ddp_model(
                            batch.encoder_ids,
                            batch.encoder_mask,
                            batch.decoder_ids,
                            batch.decoder_mask,
                            sample=not cfg.autoencoder,
                            decoder_inputs=decoder_inputs,
                        )
                    terms = vae_loss(
                        out.reconstruction_nll.float(),
                        out.num_tokens,
                        out.mean,
                        out.logvar,
                        beta_now,
                        cfg.kl_threshold,
                        cfg.kl_mode,
                        cfg.length_weighted,
                    )
                    # The loss is a mean over sentences, so the mean of equal micro-batches' means
                    # is the step batch's mean: the accumulated gradient is that of one big batch.
                    run.precision.backward(terms.loss / cfg.grad_accum)
                totals.add(out, terms)
            grad_norm = run.precision.step(optimizer, max_grad_norm=cfg.max_grad_norm or None)
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if run.should_log(step):
                metrics = totals.metrics()
                run.check_finite(step, {"loss": metrics["loss"]})
                metrics.update(beta=beta_now, lr=scheduler.get_last_lr()[0])
                if grad_norm is not None:
                    metrics["grad_norm"] = grad_norm
                run.log(step, metrics)
            due = cfg.eval_every > 0 and step % cfg.eval_every == 0
            if (due or step == cfg.steps) and held_out:
                if run.dist.is_main:
                    bare = unwrap_model(ddp_model)
                    iw = 10 if step != cfg.steps else 20
                    last_eval = evaluate_model(
                        bare,
                        codec,
                        held_out,
                        device,
                        iw,
                        block_size=cfg.block_size,
                        long_sentences="truncate",
                    )
                    run.logger.log_metrics(
                        step,
                        {k: v for k, v in last_eval.items() if isinstance(v, (int, float))},
                        prefix="eval/",
                    )
                    if cfg.num_samples > 0:
                        write_samples(
                            bare,
                            codec,
                            held_out,
                            run.samples_dir / f"step_{step:06d}.jsonl",
                            device,
                            cfg.num_samples,
                            cfg.block_size,
                        )
                wait_for_everyone()
        if run.dist.is_main:
            model_dir = save_trained(run_dir / "model", unwrap_model(ddp_model), codec)
            if last_eval:
                run.write_json("eval.json", {**last_eval, "step": cfg.steps})
            run.logger.info("saved the model to %s", model_dir)
    return TrainResult(unwrap_model(ddp_model), last_eval)


def main(argv: list[str] | None = None) -> int:
    return cli.run(
        train,
        OptimusTrainConfig,
        argv,
        prog="optimus-train",
        description=__doc__.split("\n\n")[0]
        + "\n\nPresets: pretrain (10 β cycles), finetune (1 cycle), the original's recipes ptb, yelp, "
        "yahoo, snli (fine-tuning) and wikipedia (pre-training), demo (about two minutes), smoke (seconds).",
        presets=PRESETS,
        module="optimus.train",
    )


if __name__ == "__main__":
    sys.exit(main())
