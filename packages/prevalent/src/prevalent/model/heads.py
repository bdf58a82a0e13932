"""PREVALENT's two self-supervised heads and the pretraining model that sums their losses.

- **Attended masked language modelling**: BERT's MLM head (dense + GELU + LayerNorm, then a
  decoder tied to the word embeddings plus a per-token bias) read on the *cross-attended* text,
  so recovering a masked word may use the panorama.
- **Action prediction**: from the pooled ``[CLS]`` (or, in the agent, a recurrent state of the
  same width) over the panoramic candidates, where index 0 is STOP and index ``k >= 1`` is
  candidate ``k``. Candidate ``k`` is scored by a scaled dot product between a projection of the
  query and the candidate's cross-attended vision token; STOP has its own linear score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from prevalent.model.encoder import EncoderConfig, EncoderOutput, PrevalentEncoder

IGNORE_INDEX = -100
"""Label value that a loss ignores (unmasked tokens, steps without a teacher action)."""


class MaskedLanguageModelHead(nn.Module):
    """BERT's MLM prediction head; the decoder weight is the encoder's word-embedding matrix."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = ACT2FN["gelu"]
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, text_states: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, L, H) cross-attended text -> (B, L, vocab) logits."""
        hidden = self.layer_norm(self.activation(self.dense(text_states)))
        return F.linear(hidden, word_embeddings, self.bias)


class ActionPredictionHead(nn.Module):
    """Scores STOP (index 0) and every candidate (index 1..K) from one query vector per item."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.stop = nn.Linear(config.hidden_size, 1)
        self.scale = 1.0 / math.sqrt(config.hidden_size)

    def forward(
        self, query: torch.Tensor, candidate_states: torch.Tensor, candidate_mask: torch.Tensor
    ) -> torch.Tensor:
        """query (B, H), candidate_states (B, K, H), candidate_mask (B, K) -> logits (B, 1 + K).

        Padded candidates get ``-inf`` so they can never be chosen; STOP is always valid.
        """
        scores = torch.einsum("bh,bkh->bk", self.query(query), candidate_states) * self.scale
        scores = scores.masked_fill(~candidate_mask.to(torch.bool), float("-inf"))
        return torch.cat([self.stop(query), scores], dim=1)


@dataclass
class PretrainingOutput:
    """Losses and logits of one pretraining forward pass.

    ``loss = mlm_loss + action_loss`` (the paper sums the two objectives with equal weight).
    ``mlm_logits`` (N, vocab) are for the N chosen tokens only, in row-major order of
    ``mlm_labels != IGNORE_INDEX``.
    """

    loss: torch.Tensor
    mlm_loss: torch.Tensor
    action_loss: torch.Tensor
    mlm_logits: torch.Tensor
    action_logits: torch.Tensor
    encoded: EncoderOutput


def _cross_entropy_or_zero(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # A batch where nothing is masked (short texts) must give a zero loss, not NaN.
    valid = labels != IGNORE_INDEX
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[valid].float(), labels[valid])


class PrevalentPretrainingModel(nn.Module):
    """Encoder + attended-MLM head + action-prediction head.

    The vision stream holds the panorama's view tokens followed by the candidate tokens;
    ``num_candidates`` (K) says how many of the last vision tokens are candidates.
    """

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.encoder = PrevalentEncoder(config)
        self.mlm_head = MaskedLanguageModelHead(config)
        self.action_head = ActionPredictionHead(config)
        self.mlm_head.apply(PrevalentEncoder._init_weights)
        self.action_head.apply(PrevalentEncoder._init_weights)

    def forward(
        self,
        input_ids: torch.Tensor,
        text_mask: torch.Tensor,
        views: torch.Tensor,
        vision_mask: torch.Tensor,
        num_candidates: int,
        mlm_labels: torch.Tensor,
        action_labels: torch.Tensor,
    ) -> PretrainingOutput:
        """``mlm_labels`` (B, L) and ``action_labels`` (B,) use :data:`IGNORE_INDEX` for "no target"."""
        encoded = self.encoder(input_ids, text_mask, views, vision_mask)
        # Only the chosen tokens need vocabulary logits: 15% of the work of scoring every position.
        targets = mlm_labels != IGNORE_INDEX
        mlm_logits = self.mlm_head(encoded.text_states[targets], self.encoder.word_embeddings.weight)
        candidate_states = encoded.vision_states[:, views.shape[1] - num_candidates :]
        candidate_mask = vision_mask[:, views.shape[1] - num_candidates :]
        action_logits = self.action_head(encoded.pooled, candidate_states, candidate_mask)
        mlm_loss = _cross_entropy_or_zero(mlm_logits, mlm_labels[targets])
        action_loss = _cross_entropy_or_zero(action_logits, action_labels)
        return PretrainingOutput(
            loss=mlm_loss + action_loss,
            mlm_loss=mlm_loss,
            action_loss=action_loss,
            mlm_logits=mlm_logits,
            action_logits=action_logits,
            encoded=encoded,
        )
