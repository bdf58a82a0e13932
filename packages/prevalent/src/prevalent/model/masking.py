"""BERT's masked-language-modelling corruption, as PREVALENT uses it on instructions.

Of the non-special tokens, 15% are chosen as prediction targets; of those, 80% become
``[MASK]``, 10% a random ordinary token and 10% stay unchanged. Special tokens
(``[PAD] [CLS] [SEP] [MASK]``) are never chosen and random replacements are never special.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prevalent.model.heads import IGNORE_INDEX


@dataclass(frozen=True)
class MaskingRule:
    """The corruption's probabilities and the token ids it needs."""

    mask_token_id: int
    vocab_size: int
    special_token_ids: tuple[int, ...]
    mask_probability: float = 0.15
    replace_with_mask: float = 0.8
    replace_with_random: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_probability <= 1.0:
            raise ValueError(f"mask_probability must be in [0, 1], got {self.mask_probability}")
        if self.replace_with_mask + self.replace_with_random > 1.0 + 1e-9:
            raise ValueError("replace_with_mask + replace_with_random must not exceed 1")


def mask_tokens(
    input_ids: torch.Tensor, rule: MaskingRule, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt ``input_ids`` (B, L) by ``rule``; returns ``(corrupted_ids, labels)``.

    ``labels`` holds the original id at every chosen position and :data:`IGNORE_INDEX` elsewhere.
    ``input_ids`` is not modified.
    """
    # Corruption runs on CPU (it belongs to the data pipeline; a CPU generator stays reproducible).
    device = input_ids.device
    input_ids = input_ids.cpu()
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for token_id in rule.special_token_ids:
        special |= input_ids == token_id

    def uniform() -> torch.Tensor:
        return torch.rand(input_ids.shape, generator=generator)

    chosen = (uniform() < rule.mask_probability) & ~special
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))

    # One draw decides the fate of each chosen token: [0, 0.8) mask, [0.8, 0.9) random, rest keep.
    fate = uniform()
    to_mask = chosen & (fate < rule.replace_with_mask)
    to_random = (
        chosen & (fate >= rule.replace_with_mask) & (fate < rule.replace_with_mask + rule.replace_with_random)
    )

    corrupted = input_ids.clone()
    corrupted[to_mask] = rule.mask_token_id
    if bool(to_random.any()):
        corrupted[to_random] = _random_ordinary_tokens(int(to_random.sum()), rule, generator)
    return corrupted.to(device), labels.to(device)


def _random_ordinary_tokens(count: int, rule: MaskingRule, generator: torch.Generator | None) -> torch.Tensor:
    # Draw from the vocabulary minus the special ids, uniformly.
    allowed = torch.ones(rule.vocab_size, dtype=torch.bool)
    allowed[list(rule.special_token_ids)] = False
    ordinary = allowed.nonzero().squeeze(1)
    return ordinary[torch.randint(len(ordinary), (count,), generator=generator)]
