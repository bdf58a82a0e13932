"""PREVALENT's encoder, its pretraining heads, MLM masking, the WordPiece tokenizer and the agent."""

from prevalent.model.encoder import EncoderConfig, EncoderOutput, PrevalentEncoder
from prevalent.model.heads import (
    IGNORE_INDEX,
    ActionPredictionHead,
    MaskedLanguageModelHead,
    PretrainingOutput,
    PrevalentPretrainingModel,
)
from prevalent.model.masking import MaskingRule, mask_tokens
from prevalent.model.tokenizer import InstructionTokenizer, TokenizedBatch

__all__ = [
    "IGNORE_INDEX",
    "ActionPredictionHead",
    "EncoderConfig",
    "EncoderOutput",
    "InstructionTokenizer",
    "MaskedLanguageModelHead",
    "MaskingRule",
    "PretrainingOutput",
    "PrevalentEncoder",
    "PrevalentPretrainingModel",
    "TokenizedBatch",
    "mask_tokens",
]
