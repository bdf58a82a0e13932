"""The options every training CLI shares (each recipe's config dataclass extends them)."""

from __future__ import annotations

from dataclasses import dataclass

from dgm_core.cli import option
from dgm_core.inference import RuntimeConfig


@dataclass
class TrainingConfig(RuntimeConfig):
    """Options of every training CLI."""

    run_dir: str = option(
        "runs/default", help="Directory for config, logs, metrics, samples and checkpoints."
    )
    steps: int = option(1000, help="Number of optimizer steps to train for (in total, across resumes).")
    grad_accum: int = option(
        1,
        help="Micro-batches per optimizer step: each step sees grad_accum x batch size examples per "
        "rank, with DDP gradients synchronised on the last micro-batch only.",
    )
    num_workers: int = option(
        -1,
        help="Data-loading worker processes per rank for recipes that stream their data "
        "(-1: one per spare core, at most 8; 0: load in the training process).",
    )
    log_every: int = option(10, help="Log metrics every N steps.")
    checkpoint_every: int = option(500, help="Save a checkpoint every N steps (0: only at the end).")
    keep_checkpoints: int = option(3, help="Keep only the newest N checkpoints.")
    resume: str = option(
        "auto",
        help="auto: continue from the newest checkpoint in run_dir if there is one; "
        "none: start fresh (refuses a run_dir that has checkpoints); or a checkpoint/run path.",
    )
    tensorboard: bool = option(False, help="Also log to TensorBoard (needs the tensorboard package).")
    progress: bool = option(
        True, help="Show a progress bar on a terminal (elsewhere, e.g. a SLURM log: periodic log lines)."
    )
    fault_at_step: int = option(
        0,
        help="Testing only: the last rank crashes at this step on the first attempt (0: never).",
        hidden=True,
    )
