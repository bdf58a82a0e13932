"""``optimus-train``: pre-train or fine-tune the Optimus VAE (torchrun DDP, AMP and resume via dgm-core).

With no arguments it builds a tiny BERT and a tiny GPT-2 from scratch, trains their tokenizers on
the embedded grammar corpus, trains for a few minutes on a CPU and saves the model to
``runs/optimus/model`` — the folder ``optimus-eval``, ``optimus-generate`` and ``optimus-classify``
read by default. ``--encoder``/``--decoder`` start from local Hugging Face checkpoints instead
(a folder, or a name already in the local HF cache; never a network call).

Each evaluation writes ``samples/step_XXXXXX.jsonl`` (reconstructions of held-out sentences and
samples from the prior) and logs reconstruction, KL, MI and active units of the held-out set.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import BertModel, GPT2LMHeadModel

from dgm_core import cli
from dgm_core.cli import option
from dgm_core.errors import UserError
from dgm_core.runtime.device import seed_everything
from dgm_core.runtime.distributed import unwrap_model, wait_for_everyone
from dgm_core.training import TrainingConfig, TrainingRun
from optimus.data import collate, iter_sentences, open_or_build_token_cache
from optimus.evaluate import embedded_test_texts, evaluate_model
from optimus.grammar import generate_corpus
from optimus.objective import BETA_SCHEDULES, KL_MODES, BetaSchedule, vae_loss
from optimus.tokenization import SentenceCodec, load_tokenizer
from optimus.vae import OptimusConfig, OptimusVAE, tiny_decoder_config, tiny_encoder_config, word_dropout

PRETRAINED_LR = 5e-5  # the paper's AdamW learning rate for pretrained BERT/GPT-2
SCRATCH_LR = 1e-3  # tiny from-scratch models learn nothing in minutes at 5e-5


@dataclass
class OptimusTrainConfig(TrainingConfig):
    """Options of ``optimus-train``."""

    run_dir: str = option("runs/optimus", help="Run directory; the final model goes to <run_dir>/model.")
    steps: int = option(1200, help="Optimizer steps in total (across resumes).")
    log_every: int = option(50, help="Log training metrics every N steps.")
    checkpoint_every: int = option(400, help="Checkpoint every N steps (0: only at the end).")
    # data
    train_file: str = option(
        "",
        help="Training text: a file or a folder of shards (text, label<TAB>text, "
        "JSONL). Empty: the embedded grammar corpus.",
    )
    eval_file: str = option(
        "",
        help="Held-out sentences; empty: embedded held-out set, or every 20th "
        "sentence (up to 500) of --train-file.",
    )
    data_format: str = option("auto", help="Input format.", choices=("auto", "text", "labeled", "jsonl"))
    corpus_size: int = option(10000, help="Sentences of the embedded corpus (when no --train-file).")
    block_size: int = option(64, help="Longest token sequence; longer sentences are truncated and counted.")
    batch_size: int = option(32, help="Sentences per batch per process.")
    # model
    encoder: str = option("", help="Pretrained BERT folder or cached name; empty: a tiny BERT from scratch.")
    decoder: str = option(
        "", help="Pretrained GPT-2 folder or cached name; empty: a tiny GPT-2 from scratch."
    )
    latent_size: int = option(32, help="Dimensions of z (32 in the paper; 768 for sentence manipulation).")
    memory_injection: bool = option(True, help="Inject z as an extra attended key/value slot in every layer.")
    embedding_injection: bool = option(True, help="Add a projection of z to every token embedding.")
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
    num_samples: int = option(8, help="Reconstructions and prior samples written per evaluation.")


PRESETS = {
    # The paper's two regimes: 10 cycles for pre-training, 1 for fine-tuning (β_max 1, λ 0.5).
    "pretrain": {"n_cycle": 10, "beta_max": 1.0, "ratio_zero": 0.5, "ratio_increase": 0.25},
    "finetune": {"n_cycle": 1, "beta_max": 1.0, "ratio_zero": 0.5, "ratio_increase": 0.25},
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


# --------------------------------------------------------------------------- data


def _training_texts(cfg: OptimusTrainConfig) -> tuple[object, list[str]]:
    """The training sentence stream and the held-out sentences."""
    if not cfg.train_file:
        train = [s.text for s in generate_corpus(cfg.corpus_size, seed=cfg.seed)]
        held_out = embedded_test_texts(cfg.eval_sentences, cfg.seed)
        return train, held_out
    if cfg.eval_file:
        from optimus.data import read_sentences

        held_out = read_sentences(cfg.eval_file, cfg.data_format).texts[: cfg.eval_sentences]
        return (text for text, _ in iter_sentences(cfg.train_file, cfg.data_format)), held_out
    # Every 20th of the first sentences is held out (and left out of training).
    held_out_end = 20 * min(500, cfg.eval_sentences)
    held_out: list[str] = []
    for index, (text, _) in enumerate(iter_sentences(cfg.train_file, cfg.data_format)):
        if index >= held_out_end:
            break
        if index % 20 == 0:
            held_out.append(text)

    def stream():
        for index, (text, _) in enumerate(iter_sentences(cfg.train_file, cfg.data_format)):
            if not (index % 20 == 0 and index < held_out_end):
                yield text

    return stream(), held_out


def _tokenizer_texts(cfg: OptimusTrainConfig, limit: int = 200_000) -> list[str]:
    if not cfg.train_file:
        return [s.text for s in generate_corpus(cfg.corpus_size, seed=cfg.seed)]
    texts = []
    for text, _ in iter_sentences(cfg.train_file, cfg.data_format):
        texts.append(text)
        if len(texts) >= limit:
            break
    return texts


# --------------------------------------------------------------------------- model


def _load_pretrained(kind: str, name: str):
    model_class = BertModel if kind == "encoder" else GPT2LMHeadModel
    expected = "bert" if kind == "encoder" else "gpt2"
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"cannot load the {kind} '{name}' offline (a local folder or the local HF cache): {exc}"
        ) from None
    if config.model_type != expected:
        raise UserError(
            f"the {kind} '{name}' is a '{config.model_type}' model; Optimus needs a {expected} {kind}"
        )
    try:
        return model_class.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the {kind} weights from '{name}': {exc}") from None


def build_codec(cfg: OptimusTrainConfig) -> SentenceCodec:
    """Tokenizers: loaded from the pretrained checkpoints, or trained on the training corpus."""
    texts = _tokenizer_texts(cfg) if not (cfg.encoder and cfg.decoder) else []
    from optimus.tokenization import train_decoder_tokenizer, train_encoder_tokenizer

    enc_tok = (
        load_tokenizer(cfg.encoder, "encoder")
        if cfg.encoder
        else train_encoder_tokenizer(texts, cfg.vocab_size)
    )
    dec_tok = (
        load_tokenizer(cfg.decoder, "decoder")
        if cfg.decoder
        else train_decoder_tokenizer(texts, cfg.vocab_size)
    )
    return SentenceCodec(enc_tok, dec_tok)


def build_model(cfg: OptimusTrainConfig, codec: SentenceCodec) -> OptimusVAE:
    """The VAE: pretrained halves where given, tiny from-scratch ones otherwise."""
    width, layers = cfg.scratch_hidden, cfg.scratch_layers
    heads = max(1, width // 32)
    if cfg.encoder:
        encoder = _load_pretrained("encoder", cfg.encoder)
        if codec.encoder_vocab_size > encoder.config.vocab_size:
            raise UserError(
                f"the encoder tokenizer has {codec.encoder_vocab_size} tokens but '{cfg.encoder}' embeds "
                f"{encoder.config.vocab_size}; the tokenizer does not match the model"
            )
    else:
        encoder = BertModel(
            tiny_encoder_config(
                codec.encoder_vocab_size,
                codec.encoder_pad_id,
                hidden_size=width,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                intermediate_size=4 * width,
                max_position_embeddings=max(128, cfg.block_size),
            )
        )
    if cfg.decoder:
        decoder = _load_pretrained("decoder", cfg.decoder)
        if codec.decoder_vocab_size != decoder.config.vocab_size:
            # Optimus's PAD/BOS/EOS were appended to the tokenizer: grow the (tied) embedding to match.
            decoder.resize_token_embeddings(codec.decoder_vocab_size)
        decoder.config.bos_token_id = codec.bos_id
        decoder.config.eos_token_id = codec.eos_id
        decoder.config.pad_token_id = codec.decoder_pad_id
        if cfg.block_size > decoder.config.n_positions - 1:
            raise UserError(
                f"block_size {cfg.block_size} exceeds the decoder's "
                f"{decoder.config.n_positions - 1} positions"
            )
    else:
        decoder = GPT2LMHeadModel(
            tiny_decoder_config(
                codec.decoder_vocab_size,
                codec.bos_id,
                codec.eos_id,
                codec.decoder_pad_id,
                n_embd=width,
                n_layer=layers,
                n_head=heads,
                n_positions=max(128, cfg.block_size + 1),
            )
        )
    config = OptimusConfig(cfg.latent_size, cfg.memory_injection, cfg.embedding_injection)
    return OptimusVAE(config, encoder, decoder)


# --------------------------------------------------------------------------- loop


def _parameter_groups(model: OptimusVAE, weight_decay: float, encoder_lr: float) -> list[dict]:
    """AdamW groups: no decay on biases and LayerNorms; the BERT encoder may have its own learning rate."""
    no_decay = ("bias", "LayerNorm.weight", "ln_")
    groups: dict[tuple[bool, bool], list] = {}
    for name, parameter in model.named_parameters():
        key = (name.startswith("encoder."), any(k in name for k in no_decay))
        groups.setdefault(key, []).append(parameter)
    return [
        {
            "params": params,
            "weight_decay": 0.0 if decay_free else weight_decay,
            **({"lr": encoder_lr} if is_encoder else {}),
        }
        for (is_encoder, decay_free), params in sorted(groups.items())
    ]


def _write_samples(
    model: OptimusVAE, codec: SentenceCodec, texts: list[str], path: Path, device, num: int, block_size: int
) -> None:
    from optimus.data import encode_texts

    model.eval()
    pairs, _ = encode_texts(texts[:num], codec, block_size)
    batch = collate(pairs, codec.encoder_pad_id, codec.decoder_pad_id).to(device)
    with torch.no_grad():
        mean, _ = model.encode(batch.encoder_ids, batch.encoder_mask)
        reconstructions = model.generate(mean, max_length=block_size)
        prior = model.generate(
            torch.randn(len(pairs), model.latent_size, device=device), max_length=block_size
        )
    model.train()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for text, ids in zip(texts[:num], reconstructions):
            handle.write(
                json.dumps({"kind": "reconstruction", "input": text, "output": codec.decode(ids.tolist())})
                + "\n"
            )
        for ids in prior:
            handle.write(json.dumps({"kind": "prior_sample", "output": codec.decode(ids.tolist())}) + "\n")


@dataclass
class TrainResult:
    """The trained model (on every rank) and the last held-out evaluation (rank 0; empty elsewhere)."""

    model: OptimusVAE
    evaluation: dict


def train(cfg: OptimusTrainConfig) -> TrainResult:
    """Train, evaluate, and save ``<run_dir>/model``."""
    if cfg.batch_size < 1 or cfg.block_size < 4 or cfg.latent_size < 1:
        raise UserError("batch_size, latent_size must be >= 1 and block_size >= 4")
    if not 0 <= cfg.word_dropout < 1:
        raise UserError(f"word_dropout must be in [0, 1), got {cfg.word_dropout}")
    run_dir = Path(cfg.run_dir)
    tokenizer_dir = run_dir / "tokenizers"
    # Tokenizers first (a resumed run reuses the saved ones, so token ids never shift).
    codec = (
        SentenceCodec.from_pretrained(tokenizer_dir)
        if (tokenizer_dir / "decoder_tokenizer").is_dir()
        else build_codec(cfg)
    )
    seed_everything(cfg.seed)  # the same initial weights on every rank
    model = build_model(cfg, codec)
    # Auto learning rates: the paper's 5e-5 for pretrained halves, 1e-3 for halves built from scratch.
    lr = cfg.lr if cfg.lr > 0 else (PRETRAINED_LR if cfg.decoder else SCRATCH_LR)
    encoder_lr = cfg.encoder_lr if cfg.encoder_lr > 0 else (PRETRAINED_LR if cfg.encoder else lr)
    with TrainingRun(cfg, model_config=model.config.to_dict(), name="optimus") as run:
        device = run.device
        if run.dist.is_main and not (tokenizer_dir / "decoder_tokenizer").is_dir():
            codec.save_pretrained(tokenizer_dir)
        train_stream, held_out = _training_texts(cfg)
        cache_dir = run_dir / "token_cache" / f"rank{run.dist.rank}"
        corpus = open_or_build_token_cache(train_stream, codec, cfg.block_size, cache_dir)
        corpus.check_vocab(model.encoder.config.vocab_size, model.decoder.config.vocab_size)
        if corpus.meta["truncated"]:
            run.logger.warning(
                "%d training sentence(s) truncated to %d tokens", corpus.meta["truncated"], cfg.block_size
            )
        run.logger.info(
            "training on %d sentences, %d held out; lr %g (encoder %g)",
            len(corpus),
            len(held_out),
            lr,
            encoder_lr,
        )

        model = model.to(device)
        optimizer = torch.optim.AdamW(_parameter_groups(model, cfg.weight_decay, encoder_lr), lr=lr)
        warmup = cfg.warmup_steps

        def linear_decay(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (cfg.steps - step) / max(1, cfg.steps - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_decay)
        beta = BetaSchedule(
            cfg.beta_schedule, cfg.steps, cfg.beta_max, cfg.n_cycle, cfg.ratio_zero, cfg.ratio_increase
        )
        run.track(models={"model": model}, optimizers={"model": optimizer}, schedulers={"model": scheduler})
        start = run.resume()
        ddp_model = run.wrap(model)
        sampler = run.sampler(
            len(corpus), cfg.batch_size, start_step=start, lengths=corpus.decoder_lengths.tolist()
        )
        last_eval: dict = {}
        model.train()
        for step, indices in zip(run.steps(start), sampler):
            batch = collate([corpus[i] for i in indices], codec.encoder_pad_id, codec.decoder_pad_id).to(
                device
            )
            beta_now = 0.0 if cfg.autoencoder else beta(step)
            decoder_inputs = word_dropout(batch.decoder_ids, cfg.word_dropout, codec.decoder_pad_id)
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
            run.precision.backward(terms.loss)
            grad_norm = run.precision.step(optimizer, max_grad_norm=cfg.max_grad_norm or None)
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if run.should_log(step):
                run.check_finite(step, {"loss": terms.loss})
                tokens = out.num_tokens.sum().clamp(min=1)
                metrics = {
                    "loss": terms.loss,
                    "reconstruction": terms.reconstruction,
                    "token_nll": out.reconstruction_nll.sum() / tokens,
                    "kl": terms.kl,
                    "kl_term": terms.kl_term,
                    "beta": beta_now,
                    "lr": scheduler.get_last_lr()[0],
                }
                if grad_norm is not None:
                    metrics["grad_norm"] = grad_norm
                # The batch's active units: a cheap running estimate of the evaluation's AU.
                if out.mean.shape[0] > 1:
                    metrics["au_batch"] = float((out.mean.detach().float().var(dim=0) >= 0.01).sum())
                run.log(step, metrics)
            due = cfg.eval_every > 0 and step % cfg.eval_every == 0
            if (due or step == cfg.steps) and held_out:
                if run.dist.is_main:
                    bare = unwrap_model(ddp_model)
                    iw = 10 if step != cfg.steps else 20
                    last_eval = evaluate_model(bare, codec, held_out, device, iw, block_size=cfg.block_size)
                    run.logger.log_metrics(
                        step,
                        {k: v for k, v in last_eval.items() if isinstance(v, (int, float))},
                        prefix="eval/",
                    )
                    _write_samples(
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
            model_dir = run_dir / "model"
            unwrap_model(ddp_model).save_pretrained(model_dir)
            codec.save_pretrained(model_dir)
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
        + "\n\nPresets: pretrain (10 β cycles), finetune (1 cycle), demo (about two minutes), smoke (seconds).",
        presets=PRESETS,
        module="optimus.train",
    )


if __name__ == "__main__":
    sys.exit(main())
