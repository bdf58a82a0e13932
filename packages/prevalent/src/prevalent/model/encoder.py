"""The PREVALENT vision-and-language encoder (Hao et al., CVPR 2020).

Two streams built from Hugging Face BERT blocks:

- **text**: BERT embeddings, then ``text_layers`` self-attention layers (9 in the paper);
- **vision**: each panoramic view (and each navigable candidate) is an image feature
  concatenated with an orientation feature (2048 + 128 = 2176 in the paper), projected to the
  hidden size and layer-normalised;

then ``cross_layers`` LXMERT-style layers (4 in the paper): one cross-attention block shared by
both directions (language attends to vision and vision to language), then self-attention and a
feed-forward block per stream. A BERT pooler reads the cross-attended ``[CLS]``.

The text stream before the cross layers does not depend on the panorama, so an agent that
re-encodes "instruction + current panorama" at every step computes :meth:`encode_text` once per
episode and :meth:`cross_encode` at every step; :meth:`forward` chains the two.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import (
    BertAttention,
    BertEmbeddings,
    BertIntermediate,
    BertLayer,
    BertOutput,
    BertPooler,
)

#: The encoder sizes a CLI's options set (pretrain and finetune share the option names); the others
#: follow from the tokenizer (vocab_size, pad_token_id) and the feature store (image_feature_size).
SIZE_OPTIONS = (
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
    "text_layers",
    "cross_layers",
    "angle_feature_size",
    "max_text_length",
    "dropout",
)


def size_options(options: object) -> dict:
    """The values of :data:`SIZE_OPTIONS` in a CLI's options."""
    return {name: getattr(options, name) for name in SIZE_OPTIONS}


@dataclass
class EncoderConfig:
    """Sizes of the encoder. Defaults are small enough to train on two CPU cores in minutes.

    The paper's sizes are ``hidden_size=768, num_attention_heads=12, intermediate_size=3072,
    text_layers=9, cross_layers=4, image_feature_size=2048, angle_feature_size=128``
    (:meth:`paper`).
    """

    vocab_size: int
    hidden_size: int = 64
    num_attention_heads: int = 4
    intermediate_size: int = 128
    text_layers: int = 2
    cross_layers: int = 1
    image_feature_size: int = 2048
    angle_feature_size: int = 128
    max_text_length: int = 80
    type_vocab_size: int = 2
    dropout: float = 0.1
    attention_dropout: float = 0.0
    pad_token_id: int = 0
    layer_norm_eps: float = 1e-12

    @classmethod
    def paper(cls, vocab_size: int = 30522) -> EncoderConfig:
        """The sizes of the released PREVALENT encoder (BERT-base text stream)."""
        return cls(
            vocab_size=vocab_size,
            hidden_size=768,
            num_attention_heads=12,
            intermediate_size=3072,
            text_layers=9,
            cross_layers=4,
            max_text_length=512,
        )

    @classmethod
    def from_options(cls, options: object, *, vocab_size: int, pad_token_id: int, image_feature_size: int):
        """The config a CLI's size options describe (pretrain and finetune share the option names)."""
        return cls(
            vocab_size=vocab_size,
            pad_token_id=pad_token_id,
            image_feature_size=image_feature_size,
            **size_options(options),
        )

    @property
    def vision_input_size(self) -> int:
        """Width of one view token before projection: image feature ⊕ orientation feature."""
        return self.image_feature_size + self.angle_feature_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> EncoderConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def bert_config(self) -> BertConfig:
        """The transformers ``BertConfig`` the BERT blocks are built from."""
        config = BertConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.text_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            hidden_dropout_prob=self.dropout,
            # BERT used 0.1; 0 by default here because dropout on the (B, heads, L, L) attention
            # maps is a large share of a small model's CPU time.
            attention_probs_dropout_prob=self.attention_dropout,
            max_position_embeddings=self.max_text_length,
            type_vocab_size=self.type_vocab_size,
            pad_token_id=self.pad_token_id,
            layer_norm_eps=self.layer_norm_eps,
        )
        # Plain eager attention with additive masks: identical on every device and under autocast.
        config._attn_implementation = "eager"
        return config


@dataclass
class EncoderOutput:
    """What the encoder returns.

    ``text_states`` (B, L, H) and ``vision_states`` (B, V, H) are the cross-attended streams;
    ``pooled`` (B, H) is the pooler on the cross-attended ``[CLS]``.
    """

    text_states: torch.Tensor
    vision_states: torch.Tensor
    pooled: torch.Tensor


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) bool/0-1 validity mask -> (B, 1, 1, L) additive mask (0 keep, dtype-min drop)."""
    keep = mask.to(torch.bool)[:, None, None, :]
    return torch.zeros(keep.shape, dtype=dtype, device=mask.device).masked_fill(~keep, torch.finfo(dtype).min)


class VisionProjection(nn.Module):
    """Image feature ⊕ orientation feature -> hidden size, then LayerNorm and dropout."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.proj = nn.Linear(config.vision_input_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.layer_norm(self.proj(views)))


class CrossModalLayer(nn.Module):
    """One LXMERT-style cross-modality layer.

    The cross-attention block is shared by both directions (as in LXMERT and PREVALENT): text
    queries attend over vision and vision queries attend over text with the same weights. Each
    stream then has its own self-attention and feed-forward block.
    """

    def __init__(self, bert_config: BertConfig):
        super().__init__()
        self.cross_attention = BertAttention(bert_config, is_cross_attention=True)
        self.text_self_attention = BertAttention(bert_config)
        self.text_intermediate = BertIntermediate(bert_config)
        self.text_output = BertOutput(bert_config)
        self.vision_self_attention = BertAttention(bert_config)
        self.vision_intermediate = BertIntermediate(bert_config)
        self.vision_output = BertOutput(bert_config)

    def forward(
        self,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        vision: torch.Tensor,
        vision_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``text_mask``/``vision_mask`` are additive (B, 1, 1, L) masks."""
        text_x, _ = self.cross_attention(
            text, encoder_hidden_states=vision, encoder_attention_mask=vision_mask
        )
        vision_x, _ = self.cross_attention(
            vision, encoder_hidden_states=text, encoder_attention_mask=text_mask
        )
        text_s, _ = self.text_self_attention(text_x, text_mask)
        vision_s, _ = self.vision_self_attention(vision_x, vision_mask)
        text_out = self.text_output(self.text_intermediate(text_s), text_s)
        vision_out = self.vision_output(self.vision_intermediate(vision_s), vision_s)
        return text_out, vision_out


class PrevalentEncoder(nn.Module):
    """The two-stream PREVALENT encoder (see the module docstring)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(
                f"hidden_size {config.hidden_size} is not a multiple of num_attention_heads "
                f"{config.num_attention_heads}"
            )
        self.config = config
        bert_config = config.bert_config()
        self.embeddings = BertEmbeddings(bert_config)
        self.text_layers = nn.ModuleList(
            [BertLayer(bert_config, layer_idx=i) for i in range(config.text_layers)]
        )
        self.vision_projection = VisionProjection(config)
        self.cross_layers = nn.ModuleList([CrossModalLayer(bert_config) for _ in range(config.cross_layers)])
        self.pooler = BertPooler(bert_config)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, 0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.data.zero_()
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def encode_text(self, input_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Embeddings + the language-only self-attention layers: (B, L) -> (B, L, H)."""
        if input_ids.shape[1] > self.config.max_text_length:
            raise ValueError(
                f"text of {input_ids.shape[1]} tokens is longer than max_text_length "
                f"{self.config.max_text_length}; truncate it in the tokenizer"
            )
        hidden = self.embeddings(input_ids=input_ids)
        mask = additive_mask(text_mask, hidden.dtype)
        for layer in self.text_layers:
            hidden = layer(hidden, mask)
        return hidden

    def cross_encode(
        self,
        text_states: torch.Tensor,
        text_mask: torch.Tensor,
        views: torch.Tensor,
        vision_mask: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """Project the view tokens and run the cross-modality layers and the pooler.

        ``views`` is (B, V, image_feature_size + angle_feature_size); ``vision_mask`` (B, V) marks
        valid view tokens (all valid when omitted).
        """
        if views.shape[-1] != self.config.vision_input_size:
            raise ValueError(
                f"view tokens have {views.shape[-1]} features, the encoder expects "
                f"{self.config.image_feature_size} image + {self.config.angle_feature_size} angle = "
                f"{self.config.vision_input_size}"
            )
        vision = self.vision_projection(views)
        if vision_mask is None:
            vision_mask = torch.ones(views.shape[:2], dtype=torch.bool, device=views.device)
        text_add = additive_mask(text_mask, text_states.dtype)
        vision_add = additive_mask(vision_mask, vision.dtype)
        text = text_states
        for layer in self.cross_layers:
            text, vision = layer(text, text_add, vision, vision_add)
        return EncoderOutput(text_states=text, vision_states=vision, pooled=self.pooler(text))

    def forward(
        self,
        input_ids: torch.Tensor,
        text_mask: torch.Tensor,
        views: torch.Tensor,
        vision_mask: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """Instruction tokens (B, L) + view tokens (B, V, D_v) -> :class:`EncoderOutput`."""
        return self.cross_encode(self.encode_text(input_ids, text_mask), text_mask, views, vision_mask)
