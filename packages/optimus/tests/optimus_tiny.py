"""Tiny models and codecs shared by the optimus tests (imported as a sibling module)."""

from __future__ import annotations

from functools import lru_cache

from optimus.grammar import generate_corpus
from optimus.tokenization import SentenceCodec
from optimus.vae import OptimusConfig, OptimusVAE, tiny_decoder_config, tiny_encoder_config


def tiny_vae(
    latent_size: int = 8,
    memory: bool = True,
    embedding: bool = True,
    vocab: int = 40,
    width: int = 16,
    layers: int = 2,
    heads: int = 2,
    attn: str = "eager",
) -> OptimusVAE:
    """A 2-layer, 16-wide BERT + GPT-2 VAE without dropout; ids 0/1/2 are PAD/BOS/EOS."""
    encoder = tiny_encoder_config(
        vocab,
        0,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * width,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    decoder = tiny_decoder_config(
        vocab,
        1,
        2,
        0,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    decoder._attn_implementation = attn
    config = OptimusConfig(latent_size, memory, embedding, encoder.to_dict(), decoder.to_dict())
    model = OptimusVAE(config)
    model.decoder.config._attn_implementation = attn
    return model.eval()


@lru_cache(maxsize=1)
def grammar_codec() -> SentenceCodec:
    """Tokenizers trained on 500 embedded sentences (cached: training takes a moment)."""
    texts = [s.text for s in generate_corpus(500, seed=0)]
    return SentenceCodec.train(texts, encoder_vocab_size=300, decoder_vocab_size=400)
