"""Test-only fault injection: prove that a torchrun restart recovers from the last checkpoint."""

from __future__ import annotations

import logging
import os


def maybe_crash(step: int, fault_at_step: int, rank: int, world_size: int, logger: logging.Logger) -> None:
    """On the first attempt only, the last rank dies (exit code 17) at ``fault_at_step``."""
    if fault_at_step <= 0 or step != fault_at_step:
        return
    first_attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0
    if first_attempt and rank == world_size - 1:
        logger.error("injected fault at step %d on rank %d (--fault-at-step)", step, rank)
        for handler in logger.handlers:
            handler.flush()
        os._exit(17)
