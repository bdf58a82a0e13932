"""The Optimus VAE: a BERT encoder and a GPT-2 decoder joined by a Gaussian latent ``z``.

Encoder: ``BertModel`` pooled output (BERT's pooler, or optionally the mean of the last hidden
states) → ``Linear(hidden, 2·latent, bias=False)`` → mean and log-variance (optionally fixed at 0,
the original's deterministic connect); ``z`` is a reparameterised sample.

Decoder: ``GPT2LMHeadModel`` with ``z`` injected in two switchable ways (both on by default):

* **memory** — ``Linear(latent, n_layer·hidden, bias=False)`` gives one vector per layer, reshaped
  to the heads and used as both key and value of one extra attended position. It enters through
  the model's own key/value cache (a ``DynamicCache`` pre-filled with that one position), so the
  decoder is an unmodified ``GPT2LMHeadModel``: the attention mask covers the slot and the token
  positions start after it (position ids ``1..T``), exactly as if the slot were a past token.
* **embedding** — ``Linear(latent, hidden, bias=False)`` added to every token's input embedding.

Generation runs with the KV cache: the memory slot is the cache's first entry and each new token
costs one single-position forward pass.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel, DynamicCache, GPT2Config, GPT2LMHeadModel

from dgm_core.errors import UserError
from dgm_core.pretrained import CONFIG_FILE, ExtraFile, PretrainedError, load_pretrained, save_pretrained

# transformers 5.x renamed the ``past_key_values`` argument/output to ``cache`` (the old name
# still works there with a deprecation warning); pick whichever the installed version declares.
_CACHE_ARG = (
    "cache" if "cache" in inspect.signature(GPT2LMHeadModel.forward).parameters else "past_key_values"
)


def _output_cache(output) -> DynamicCache:
    return output[_CACHE_ARG] if _CACHE_ARG in output else output["past_key_values"]


@dataclass
class OptimusConfig:
    """Everything needed to rebuild an :class:`OptimusVAE` (saved as ``config.json``)."""

    latent_size: int = 32
    memory_injection: bool = True
    embedding_injection: bool = True
    encoder: dict = field(default_factory=dict)  # BertConfig.to_dict()
    decoder: dict = field(default_factory=dict)  # GPT2Config.to_dict()
    model_type: str = "optimus"
    # Longest token sequence (either half) the model was trained for and is evaluated with;
    # 0: the most its position embeddings allow. Folders saved before this field read back as 0.
    block_size: int = 0
    # What the latent head reads (folders saved before these fields read back as the original):
    # "pooler" is BERT's tanh-[CLS] pooler, as in the original; "mean" the masked mean of the last
    # hidden states, which depends on the input far more in a small encoder trained from scratch.
    encoder_pooling: str = "pooler"
    # The original's --use_deterministic_connect: the posterior's variance is fixed at 1 (the
    # head's log-variance half is unused), so z = mean + ε and the KL is ‖mean‖²/2. The decoder
    # cannot escape the noise by shrinking the variance; information has to go into the mean.
    unit_variance: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def tiny_encoder_config(vocab_size: int, pad_token_id: int = 0, **overrides) -> BertConfig:
    """The from-scratch default: a 2-layer, 128-wide BERT."""
    values = dict(
        vocab_size=vocab_size,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=512,
        max_position_embeddings=128,
        pad_token_id=pad_token_id,
    )
    values.update(overrides)
    return BertConfig(**values)


def tiny_decoder_config(vocab_size: int, bos_id: int, eos_id: int, pad_id: int, **overrides) -> GPT2Config:
    """The from-scratch default: a 2-layer, 128-wide GPT-2 (weights tied to the input embedding)."""
    values = dict(
        vocab_size=vocab_size,
        n_embd=128,
        n_layer=2,
        n_head=4,
        n_positions=128,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=True,
    )
    values.update(overrides)
    return GPT2Config(**values)


@dataclass
class VAEOutput:
    """Per-sample pieces of the objective (the loss itself is built in :mod:`optimus.objective`)."""

    reconstruction_nll: torch.Tensor  # [B] summed token NLL of -log p(x|z)
    num_tokens: torch.Tensor  # [B] predicted tokens per sentence
    mean: torch.Tensor  # [B, D]
    logvar: torch.Tensor  # [B, D]
    z: torch.Tensor  # [B, D]


POOLINGS = ("pooler", "mean")


class OptimusVAE(nn.Module):
    """BERT encoder + Gaussian latent + GPT-2 decoder (see the module docstring)."""

    def __init__(
        self,
        config: OptimusConfig,
        encoder: BertModel | None = None,
        decoder: GPT2LMHeadModel | None = None,
    ):
        super().__init__()
        if not config.memory_injection and not config.embedding_injection:
            raise UserError("the decoder needs z somewhere: enable memory and/or embedding injection")
        self.config = config
        self.encoder = encoder if encoder is not None else BertModel(BertConfig(**config.encoder))
        self.decoder = decoder if decoder is not None else GPT2LMHeadModel(GPT2Config(**config.decoder))
        config.encoder = self.encoder.config.to_dict()
        config.decoder = self.decoder.config.to_dict()
        if config.encoder_pooling not in POOLINGS:
            raise UserError(
                f"encoder_pooling must be one of {', '.join(POOLINGS)}, got {config.encoder_pooling!r}"
            )
        if config.encoder_pooling == "pooler" and self.encoder.pooler is None:
            raise UserError("the encoder must have BERT's pooler (add_pooling_layer=True)")
        enc_hidden = self.encoder.config.hidden_size
        dec = self.decoder.config
        self.latent_head = nn.Linear(enc_hidden, 2 * config.latent_size, bias=False)
        self.memory_projection = (
            nn.Linear(config.latent_size, dec.n_layer * dec.n_embd, bias=False)
            if config.memory_injection
            else None
        )
        self.embedding_projection = (
            nn.Linear(config.latent_size, dec.n_embd, bias=False) if config.embedding_injection else None
        )
        for layer in (self.latent_head, self.memory_projection, self.embedding_projection):
            if layer is not None:
                nn.init.normal_(layer.weight, std=0.02)
        if config.block_size < 0 or config.block_size > self.max_block_size:
            raise UserError(
                f"block_size {config.block_size} does not fit the model: its positions allow at most "
                f"{self.max_block_size} tokens"
            )

    # -- special ids -------------------------------------------------------------------------
    @property
    def latent_size(self) -> int:
        return self.config.latent_size

    @property
    def bos_id(self) -> int:
        return self.decoder.config.bos_token_id

    @property
    def eos_id(self) -> int:
        return self.decoder.config.eos_token_id

    @property
    def pad_id(self) -> int:
        return self.decoder.config.pad_token_id

    @property
    def max_block_size(self) -> int:
        """The longest sequence both halves can position: BERT's positions, GPT-2's less the memory slot."""
        slot = 1 if self.memory_projection is not None else 0
        return min(self.encoder.config.max_position_embeddings, self.decoder.config.n_positions - slot)

    @property
    def block_size(self) -> int:
        """The block size recorded in the config (what the model was trained with), else the maximum."""
        return self.config.block_size or self.max_block_size

    # -- encoder -----------------------------------------------------------------------------
    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior ``q(z|x)`` parameters: mean and log-variance, each ``[B, latent]``."""
        pooled = self.encoder_features(input_ids, attention_mask)
        mean, logvar = self.latent_head(pooled).float().chunk(2, dim=-1)
        if self.config.unit_variance:
            logvar = torch.zeros_like(logvar)
        return mean, logvar

    def encoder_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """What the latent head reads: the pooled encoder output (``config.encoder_pooling``)."""
        output = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        if self.config.encoder_pooling == "pooler":
            return output.pooler_output
        mask = attention_mask.unsqueeze(-1).to(output.last_hidden_state.dtype)
        return (output.last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)

    @staticmethod
    def reparameterize(mean: torch.Tensor, logvar: torch.Tensor, num_samples: int = 0) -> torch.Tensor:
        """``z = mean + σ·ε``; ``[B, D]`` when ``num_samples == 0``, else ``[B, num_samples, D]``."""
        std = (0.5 * logvar).exp()
        if num_samples == 0:
            return mean + std * torch.randn_like(std)
        eps = torch.randn(mean.shape[0], num_samples, mean.shape[1], device=mean.device, dtype=mean.dtype)
        return mean.unsqueeze(1) + std.unsqueeze(1) * eps

    # -- decoder injection -------------------------------------------------------------------
    def memory_cache(self, z: torch.Tensor) -> DynamicCache | None:
        """A cache holding one memory position per layer: key = value = the layer's slice of ``W_m z``."""
        if self.memory_projection is None:
            return None
        dec = self.decoder.config
        head_dim = dec.n_embd // dec.n_head
        memory = self.memory_projection(z.to(self.memory_projection.weight.dtype))
        # [B, n_layer·hidden] → per layer [B, heads, 1, head_dim]: the layout of one cached position.
        memory = memory.view(z.shape[0], dec.n_layer, dec.n_head, 1, head_dim)
        cache = DynamicCache()
        for layer in range(dec.n_layer):
            cache.update(memory[:, layer], memory[:, layer], layer)
        return cache

    def _decoder_forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        z: torch.Tensor,
        cache: DynamicCache | None,
        past_length: int,
        use_cache: bool,
    ):
        """One decoder call with ``z`` injected; ``past_length`` counts the memory slot and earlier tokens."""
        embeds = self.decoder.get_input_embeddings()(input_ids)
        if self.embedding_projection is not None:
            embeds = embeds + self.embedding_projection(z.to(embeds.dtype)).unsqueeze(1)
        seq = input_ids.shape[1]
        # Positions continue from the cache; with the memory slot the first token sits at 1.
        position_ids = torch.arange(past_length, past_length + seq, device=input_ids.device).unsqueeze(0)
        position_ids = position_ids.expand(input_ids.shape[0], -1)
        kwargs = {_CACHE_ARG: cache} if cache is not None else {}
        return self.decoder(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **kwargs,
        )

    def decoder_logits(
        self, z: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Teacher-forced next-token logits ``[B, T, V]`` of the decoder conditioned on ``z``."""
        cache = self.memory_cache(z)
        if cache is not None:
            slot = attention_mask.new_ones(attention_mask.shape[0], 1)
            attention_mask = torch.cat([slot, attention_mask], dim=1)
        past = 1 if cache is not None else 0
        return self._decoder_forward(input_ids, attention_mask, z, cache, past, use_cache=False).logits

    def reconstruction_nll(
        self,
        z: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        decoder_inputs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``-log p(x|z)`` summed over each sentence's predicted tokens, and those token counts.

        ``input_ids`` is ``<BOS> tokens <EOS> <PAD>…``; the first token is never predicted.
        ``decoder_inputs`` (same shape) replaces the teacher-forced inputs, e.g. with word dropout.
        """
        inputs = input_ids if decoder_inputs is None else decoder_inputs
        logits = self.decoder_logits(z, inputs, attention_mask)[:, :-1].float()
        targets = input_ids[:, 1:]
        mask = attention_mask[:, 1:].to(logits.dtype)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
        nll = (nll.view_as(targets) * mask).sum(dim=1)
        return nll, mask.sum(dim=1)

    # -- the whole model ---------------------------------------------------------------------
    def forward(
        self,
        encoder_ids: torch.Tensor,
        encoder_mask: torch.Tensor,
        decoder_ids: torch.Tensor,
        decoder_mask: torch.Tensor,
        sample: bool = True,
        decoder_inputs: torch.Tensor | None = None,
    ) -> VAEOutput:
        """Encode, sample ``z`` (the mean when ``sample=False``) and score the reconstruction."""
        mean, logvar = self.encode(encoder_ids, encoder_mask)
        z = self.reparameterize(mean, logvar) if sample else mean
        nll, num_tokens = self.reconstruction_nll(z, decoder_ids, decoder_mask, decoder_inputs)
        return VAEOutput(nll, num_tokens, mean, logvar, z)

    # -- generation --------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        z: torch.Tensor,
        max_length: int = 32,
        strategy: str = "greedy",
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sentences decoded from ``z`` ``[B, D]``: token ids ``[B, ≤max_length]`` after ``<BOS>``.

        ``strategy`` is ``greedy`` or ``sample`` (with ``temperature``, ``top_k``, ``top_p``).
        With ``use_cache`` each step feeds one token through the KV cache (whose first position is
        the memory slot); without it every step re-runs the whole prefix (the reference's loop,
        kept for benchmarking). Finished rows keep emitting ``<EOS>``.
        """
        if strategy not in ("greedy", "sample"):
            raise UserError(f"unknown decoding strategy '{strategy}': expected greedy or sample")
        slot = 1 if self.memory_projection is not None else 0
        longest = self.decoder.config.n_positions - slot
        if not 1 <= max_length <= longest:
            raise UserError(
                f"max_length must be between 1 and {longest} (the decoder's positions), got {max_length}"
            )
        batch = z.shape[0]
        device = z.device
        tokens = torch.full((batch, 1), self.bos_id, dtype=torch.long, device=device)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        cache = self.memory_cache(z) if use_cache else None
        step_input = tokens
        generated = []
        for _ in range(max_length):
            if use_cache:
                past = slot + len(generated)
                mask = torch.ones(batch, past + step_input.shape[1], dtype=torch.long, device=device)
                out = self._decoder_forward(step_input, mask, z, cache, past, use_cache=True)
                cache = _output_cache(out)
                logits = out.logits[:, -1]
            else:
                prefix = torch.cat([tokens, *generated], dim=1) if generated else tokens
                logits = self.decoder_logits(z, prefix, torch.ones_like(prefix))[:, -1]
            next_token = _pick_next_token(logits.float(), strategy, temperature, top_k, top_p, generator)
            next_token = torch.where(finished, torch.full_like(next_token, self.eos_id), next_token)
            finished |= next_token == self.eos_id
            generated.append(next_token.unsqueeze(1))
            step_input = next_token.unsqueeze(1)
            if bool(finished.all()):
                break
        return torch.cat(generated, dim=1) if generated else tokens[:, :0]

    # -- persistence -------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, extra_files: Mapping[str, ExtraFile] | None = None) -> Path:
        """``config.json`` + ``model.safetensors`` (GPT-2's tied head stored once), written atomically.

        ``extra_files`` go into the same folder in the same atomic step (e.g. the tokenizers:
        :meth:`optimus.tokenization.SentenceCodec.as_extra_files`).
        """
        return save_pretrained(folder, self, self.config.to_dict(), extra_files)

    @classmethod
    def from_pretrained(cls, folder: str | Path, map_location: str | torch.device = "cpu") -> OptimusVAE:
        """The model of a folder written by :meth:`save_pretrained`, on ``map_location``."""

        def build(config: dict) -> OptimusVAE:
            if config.get("model_type") != "optimus":
                raise PretrainedError(
                    f"'{Path(folder) / CONFIG_FILE}' is not an Optimus config "
                    f"(model_type={config.get('model_type')!r})"
                )
            return cls(OptimusConfig(**config))

        model, _ = load_pretrained(folder, build, device=map_location)
        return model


def word_dropout(input_ids: torch.Tensor, rate: float, replacement_id: int, generator=None) -> torch.Tensor:
    """Teacher-forced decoder inputs with a fraction ``rate`` of tokens (never the first) replaced.

    Word dropout (Bowman et al., 2016) weakens the decoder's language model so that it must read z.
    """
    if rate <= 0:
        return input_ids
    drop = torch.rand(input_ids.shape, device=input_ids.device, generator=generator) < rate
    drop[:, 0] = False
    return input_ids.masked_fill(drop, replacement_id)


def _pick_next_token(
    logits: torch.Tensor,
    strategy: str,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    if strategy == "greedy":
        return logits.argmax(dim=-1)
    logits = logits / max(temperature, 1e-5)
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the mass before it already reaches top_p (the first token always stays).
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, -math.inf)
        logits = torch.full_like(logits, -math.inf).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
