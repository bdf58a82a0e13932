"""Learning-rate schedules shared by the training recipes."""

from __future__ import annotations

import torch


def warmup_linear_decay(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` then linear decay to 0 at ``total_steps``.

    The factor of the update after ``k`` scheduler steps is ``(k + 1) / warmup_steps`` during the
    warm-up and ``(total_steps - k) / (total_steps - warmup_steps)`` after it — the schedule of
    BERT's and GPT-2's fine-tuning scripts (``get_linear_schedule_with_warmup``), as the
    original Optimus and PREVALENT code use it. ``warmup_steps = 0`` starts at the full rate.
    """
    if warmup_steps < 0 or total_steps < 1:
        raise ValueError(f"need warmup_steps >= 0 and total_steps >= 1, got {warmup_steps}, {total_steps}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
