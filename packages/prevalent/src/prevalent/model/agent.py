"""The navigation agent: the PREVALENT encoder plus a recurrent state, scoring candidates.

At every step the agent re-encodes the instruction with the *current* panorama (the text-only
layers run once per episode, the cross-modal layers every step) and updates a recurrent state
(VLN-BERT's idea of carrying history in a state vector, here a GRU cell over the pooled
``[CLS]`` and the previous action's orientation feature). The action head — the same
:class:`~prevalent.model.heads.ActionPredictionHead` that pretraining trained on ``[CLS]`` —
scores STOP (index 0) and each candidate's cross-attended vision token from that state.

For HANNA the agent also has a help-request head: a logit saying "ask for help now".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prevalent.model.encoder import EncoderConfig, PrevalentEncoder
from prevalent.model.heads import ActionPredictionHead, PrevalentPretrainingModel

ENCODER_TRAINING = ("none", "cross", "all")
"""Which encoder parts fine-tuning updates: frozen, cross-modal layers + pooler + vision
projection only, or everything."""


@dataclass
class AgentStep:
    """One step's outputs: action logits (B, 1 + K) and the new state (B, H)."""

    action_logits: torch.Tensor
    state: torch.Tensor


class NavigationAgent(nn.Module):
    """Encoder + recurrent state + action head (+ help-request head)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.encoder = PrevalentEncoder(config)
        self.action_head = ActionPredictionHead(config)
        hidden = config.hidden_size
        self.previous_action = nn.Linear(config.angle_feature_size, hidden)
        self.state_cell = nn.GRUCell(2 * hidden, hidden)
        self.state_norm = nn.LayerNorm(hidden)
        self.help_head = nn.Linear(hidden, 1)
        self.dropout = nn.Dropout(config.dropout)

    @classmethod
    def from_pretrained(cls, pretrained: PrevalentPretrainingModel) -> NavigationAgent:
        """An agent whose encoder and action head start from a pretrained model."""
        agent = cls(pretrained.config)
        agent.encoder.load_state_dict(pretrained.encoder.state_dict())
        agent.action_head.load_state_dict(pretrained.action_head.state_dict())
        return agent

    def set_encoder_training(self, mode: str) -> list[nn.Parameter]:
        """Freeze the encoder parts ``mode`` leaves fixed; returns the trainable parameters."""
        if mode not in ENCODER_TRAINING:
            raise ValueError(
                f"unknown encoder training mode {mode!r}; choose one of {', '.join(ENCODER_TRAINING)}"
            )
        for p in self.encoder.parameters():
            p.requires_grad_(mode == "all")
        if mode == "cross":
            for part in (self.encoder.cross_layers, self.encoder.pooler, self.encoder.vision_projection):
                for p in part.parameters():
                    p.requires_grad_(True)
        return [p for p in self.parameters() if p.requires_grad]

    def initial_state(self, batch_size: int, device: torch.device) -> torch.Tensor:
        return torch.zeros(batch_size, self.config.hidden_size, device=device)

    def encode_instruction(self, input_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """The text-only stream, computed once per episode (or when a help answer replaces the text)."""
        return self.encoder.encode_text(input_ids, text_mask)

    def forward(
        self,
        text_states: torch.Tensor,
        text_mask: torch.Tensor,
        panorama: torch.Tensor,
        candidates: torch.Tensor,
        candidate_mask: torch.Tensor,
        previous_action: torch.Tensor,
        state: torch.Tensor,
    ) -> AgentStep:
        """One decision.

        Args:
            text_states: (B, L, H) from :meth:`encode_instruction`; text_mask (B, L).
            panorama: (B, 36, D_v) view ⊕ angle features; candidates (B, K, D_v) without STOP;
            candidate_mask: (B, K); previous_action: (B, angle_feature_size) orientation feature
                of the last move (zeros at the start); state: (B, H).
        """
        views = torch.cat([panorama, candidates], dim=1)
        vision_mask = torch.cat(
            [torch.ones(panorama.shape[:2], dtype=torch.bool, device=panorama.device), candidate_mask.bool()],
            dim=1,
        )
        encoded = self.encoder.cross_encode(text_states, text_mask, views, vision_mask)
        step_input = torch.cat([self.dropout(encoded.pooled), self.previous_action(previous_action)], dim=-1)
        state = self.state_norm(self.state_cell(step_input, state))
        candidate_states = encoded.vision_states[:, panorama.shape[1] :]
        # The state enters as a residual on the pooled [CLS], so a pretrained action head (trained
        # on [CLS] alone) starts out scoring candidates the way it learned to.
        logits = self.action_head(encoded.pooled + state, candidate_states, candidate_mask)
        return AgentStep(action_logits=logits, state=state)

    def help_logits(self, state: torch.Tensor) -> torch.Tensor:
        """(B,) logits of "ask for help now" from the recurrent state (HANNA)."""
        return self.help_head(state).squeeze(-1)
