"""The original Optimus's checkpoint format and forward pass, written out independently for the tests.

Sources (ChunyuanLI/Optimus): ``code/pytorch_transformers/modeling_bert.py``
(``BertForLatentConnector``), ``code/pytorch_transformers/modeling_gpt2.py`` (``GPT2Model`` with
``linear`` / ``linear_emb``, ``GPT2ForLatentConnector``), ``code/examples/big_ae/modules/vae.py``
(``connect``: ``encoder.linear(pooled).chunk(2, -1)`` → mean, logvar) and
``code/examples/big_ae/run_lm_vae_training.py`` (``save_checkpoint``: ``checkpoint-encoder-N`` /
``checkpoint-decoder-N`` via ``save_pretrained``; ``<PAD> <BOS> <EOS>`` added to GPT-2's tokenizer).

Nothing here uses ``transformers`` models or ``optimus``: the checkpoints are state dicts of random
tensors under the original's key names and shapes, and the forward passes follow the original's
code line by line in plain tensor algebra, so the converted model is checked against the
original's definition, not against itself.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import pre_tokenizers
from transformers import BertTokenizer, GPT2Tokenizer

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "rug", "big", "small", "."]


def write_bert_tokenizer(folder: Path) -> Path:
    """A cased WordPiece tokenizer with BERT's special tokens and a dozen words ([PAD] = 0)."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=False).save_pretrained(folder)
    return folder


def write_gpt2_tokenizer(folder: Path) -> Path:
    """A byte-level BPE tokenizer shaped like GPT-2's: 256 bytes, two merges, ``<|endoftext|>`` last."""
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["Ġt"] = len(vocab)
    vocab["he"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    GPT2Tokenizer(vocab=vocab, merges=[("Ġ", "t"), ("h", "e")]).save_pretrained(folder)
    return folder


GPT2_BASE_VOCAB = 259  # the tokenizer above: 256 bytes + 2 merges + <|endoftext|>
BERT_VOCAB = 5 + len(WORDS)


def _random(generator: torch.Generator, *shape: int, scale: float = 0.1) -> torch.Tensor:
    return torch.randn(*shape, generator=generator) * scale


def _layer_norm_params(generator: torch.Generator, prefix: str, width: int) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": 1.0 + _random(generator, width),
        f"{prefix}.bias": _random(generator, width),
    }


def original_encoder_state(generator, hidden, layers, intermediate, vocab, positions, latent) -> dict:
    """``BertForLatentConnector.state_dict()``: BERT's names at the top level plus ``linear.weight``."""
    state = {
        "embeddings.word_embeddings.weight": _random(generator, vocab, hidden, scale=0.5),
        "embeddings.position_embeddings.weight": _random(generator, positions, hidden),
        "embeddings.token_type_embeddings.weight": _random(generator, 2, hidden),
        **_layer_norm_params(generator, "embeddings.LayerNorm", hidden),
    }
    for layer in range(layers):
        p = f"encoder.layer.{layer}."
        for name in ("query", "key", "value"):
            state[p + f"attention.self.{name}.weight"] = _random(generator, hidden, hidden, scale=0.3)
            state[p + f"attention.self.{name}.bias"] = _random(generator, hidden)
        state[p + "attention.output.dense.weight"] = _random(generator, hidden, hidden, scale=0.3)
        state[p + "attention.output.dense.bias"] = _random(generator, hidden)
        state.update(_layer_norm_params(generator, p + "attention.output.LayerNorm", hidden))
        state[p + "intermediate.dense.weight"] = _random(generator, intermediate, hidden, scale=0.3)
        state[p + "intermediate.dense.bias"] = _random(generator, intermediate)
        state[p + "output.dense.weight"] = _random(generator, hidden, intermediate, scale=0.3)
        state[p + "output.dense.bias"] = _random(generator, hidden)
        state.update(_layer_norm_params(generator, p + "output.LayerNorm", hidden))
    state["pooler.dense.weight"] = _random(generator, hidden, hidden, scale=0.3)
    state["pooler.dense.bias"] = _random(generator, hidden)
    state["linear.weight"] = _random(generator, 2 * latent, hidden, scale=0.3)
    return state


def original_decoder_state(generator, hidden, layers, vocab, positions, latent) -> dict:
    """``GPT2ForLatentConnector.state_dict()``: ``transformer.*`` (with its mask buffers), ``lm_head``."""
    wte = _random(generator, vocab, hidden, scale=0.5)
    state = {"transformer.wte.weight": wte, "transformer.wpe.weight": _random(generator, positions, hidden)}
    for layer in range(layers):
        p = f"transformer.h.{layer}."
        state.update(_layer_norm_params(generator, p + "ln_1", hidden))
        # The causal mask is a registered buffer of the original's Attention: it is in the state dict.
        state[p + "attn.bias"] = torch.tril(torch.ones(positions, positions)).view(1, 1, positions, positions)
        state[p + "attn.c_attn.weight"] = _random(
            generator, hidden, 3 * hidden, scale=0.3
        )  # Conv1D: [in, out]
        state[p + "attn.c_attn.bias"] = _random(generator, 3 * hidden)
        state[p + "attn.c_proj.weight"] = _random(generator, hidden, hidden, scale=0.3)
        state[p + "attn.c_proj.bias"] = _random(generator, hidden)
        state.update(_layer_norm_params(generator, p + "ln_2", hidden))
        state[p + "mlp.c_fc.weight"] = _random(generator, hidden, 4 * hidden, scale=0.3)
        state[p + "mlp.c_fc.bias"] = _random(generator, 4 * hidden)
        state[p + "mlp.c_proj.weight"] = _random(generator, 4 * hidden, hidden, scale=0.3)
        state[p + "mlp.c_proj.bias"] = _random(generator, hidden)
    state.update(_layer_norm_params(generator, "transformer.ln_f", hidden))
    # One vector per layer for the memory, one for the embeddings (GPT2Model.__init__ makes both).
    state["transformer.linear.weight"] = _random(generator, layers * hidden, latent, scale=0.5)
    state["transformer.linear_emb.weight"] = _random(generator, hidden, latent, scale=0.5)
    state["lm_head.weight"] = wte  # tied
    return state


def write_original_checkpoints(
    root: Path,
    latent: int = 32,
    hidden: int = 16,
    layers: int = 2,
    heads: int = 2,
    seed: int = 0,
    legacy=False,
) -> dict:
    """The ``checkpoint-{encoder,decoder}-7`` folders as the original's ``save_pretrained`` writes them."""
    generator = torch.Generator().manual_seed(seed)
    positions = 40
    decoder_vocab = GPT2_BASE_VOCAB + 3  # + <PAD> <BOS> <EOS>, then resize_token_embeddings
    encoder = original_encoder_state(generator, hidden, layers, 2 * hidden, BERT_VOCAB, positions, latent)
    decoder = original_decoder_state(generator, hidden, layers, decoder_vocab, positions, latent)
    # The config fields of pytorch_transformers 1.x (BertConfig / GPT2Config.to_json_string).
    common = {"finetuning_task": None, "num_labels": 2, "output_attentions": False,
              "output_hidden_states": False, "torchscript": False, "pruned_heads": {}}  # fmt: skip
    encoder_config = {
        **common, "vocab_size": BERT_VOCAB, "hidden_size": hidden, "num_hidden_layers": layers,
        "num_attention_heads": heads, "hidden_act": "gelu", "intermediate_size": 2 * hidden,
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "max_position_embeddings": positions,
        "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12,
    }  # fmt: skip
    decoder_config = {
        **common, "vocab_size": decoder_vocab, "n_ctx": positions, "n_positions": positions, "n_embd": hidden,
        "n_layer": layers, "n_head": heads, "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1,
        "layer_norm_epsilon": 1e-5, "initializer_range": 0.02, "summary_type": "cls_index",
        "summary_use_proj": True, "summary_activation": None, "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True, "latent_size": latent,
    }  # fmt: skip
    paths = {}
    for half, state, config in (("encoder", encoder, encoder_config), ("decoder", decoder, decoder_config)):
        folder = root / f"checkpoint-{half}-7"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        torch.save(state, folder / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy)
        paths[half] = folder
    return {
        "paths": paths,
        "encoder": encoder,
        "decoder": decoder,
        "encoder_config": encoder_config,
        "decoder_config": decoder_config,
    }


# ----------------------------------------------------------------------------- reference forward


def _linear(x, state, prefix):
    return x @ state[prefix + ".weight"].T + state[prefix + ".bias"]


def _conv1d(x, state, prefix):  # GPT-2's Conv1D: x @ W + b with W [in, out]
    return x @ state[prefix + ".weight"] + state[prefix + ".bias"]


def _norm(x, state, prefix, eps):
    return F.layer_norm(x, x.shape[-1:], state[prefix + ".weight"], state[prefix + ".bias"], eps)


def original_posterior(state, config, ids, mask):
    """``VAE.connect``'s mean and logvar: ``BertForLatentConnector`` → pooled → ``linear`` → chunk(2)."""
    eps, heads = config["layer_norm_eps"], config["num_attention_heads"]
    batch, length = ids.shape
    x = (
        state["embeddings.word_embeddings.weight"][ids]
        + state["embeddings.position_embeddings.weight"][torch.arange(length)]
        + state["embeddings.token_type_embeddings.weight"][torch.zeros_like(ids)]
    )
    x = _norm(x, state, "embeddings.LayerNorm", eps)
    additive_mask = (1.0 - mask[:, None, None, :].float()) * -10000.0  # BertModel's extended mask
    head_dim = x.shape[-1] // heads
    for layer in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{layer}."

        def split(t):
            return t.view(batch, length, heads, head_dim).transpose(1, 2)

        q, k, v = (split(_linear(x, state, p + f"attention.self.{n}")) for n in ("query", "key", "value"))
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim) + additive_mask
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, -1)
        x = _norm(
            _linear(context, state, p + "attention.output.dense") + x,
            state,
            p + "attention.output.LayerNorm",
            eps,
        )
        inner = _linear(x, state, p + "intermediate.dense")
        inner = inner * 0.5 * (1.0 + torch.erf(inner / math.sqrt(2.0)))  # the original's BERT gelu
        x = _norm(_linear(inner, state, p + "output.dense") + x, state, p + "output.LayerNorm", eps)
    pooled = torch.tanh(_linear(x[:, 0], state, "pooler.dense"))
    mean, logvar = (pooled @ state["linear.weight"].T).chunk(2, -1)
    return mean, logvar


def original_decoder_logits(state, config, ids, z, memory=True, embedding=True):
    """``GPT2ForLatentConnector(input_ids, past=z)`` logits, as ``GPT2Model.forward`` computes them.

    Memory: ``linear(z)`` split into ``n_layer`` slices of ``hidden``, each the past key and value
    of its layer (split into heads like any key/value), so ``past_length`` is 1 and the tokens sit
    at positions 1..T. Embedding: ``linear_emb(z)`` added to every token's embedding. The causal
    mask is the registered ``bias`` buffer sliced ``[ns - nd : ns, :ns]``, applied as ``w*b - 1e4*(1-b)``.
    """
    hidden, heads, layers = config["n_embd"], config["n_head"], config["n_layer"]
    eps = config["layer_norm_epsilon"]
    batch, length = ids.shape
    head_dim = hidden // heads
    past_length = 1 if memory else 0
    h = (
        state["transformer.wte.weight"][ids]
        + state["transformer.wpe.weight"][torch.arange(past_length, past_length + length)]
    )
    if embedding:
        h = h + (z @ state["transformer.linear_emb.weight"].T).unsqueeze(1)
    past = (
        torch.split((z @ state["transformer.linear.weight"].T).unsqueeze(1), hidden, dim=2)
        if memory
        else None
    )

    def split(t):
        return t.view(batch, t.shape[1], heads, head_dim).transpose(1, 2)

    for layer in range(layers):
        p = f"transformer.h.{layer}."
        q, k, v = _conv1d(_norm(h, state, p + "ln_1", eps), state, p + "attn.c_attn").split(hidden, dim=2)
        if past is not None:
            k = torch.cat([past[layer], k], dim=1)
            v = torch.cat([past[layer], v], dim=1)
        q, k, v = split(q), split(k), split(v)
        w = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
        nd, ns = w.shape[-2], w.shape[-1]
        b = state[p + "attn.bias"][:, :, ns - nd : ns, :ns]
        w = w * b - 1e4 * (1 - b)
        a = (w.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, hidden)
        h = h + _conv1d(a, state, p + "attn.c_proj")
        m = _conv1d(_norm(h, state, p + "ln_2", eps), state, p + "mlp.c_fc")
        m = (
            0.5 * m * (1 + torch.tanh(math.sqrt(2 / math.pi) * (m + 0.044715 * torch.pow(m, 3))))
        )  # GPT-2's gelu
        h = h + _conv1d(m, state, p + "mlp.c_proj")
    h = _norm(h, state, "transformer.ln_f", eps)
    return h @ state["transformer.wte.weight"].T
