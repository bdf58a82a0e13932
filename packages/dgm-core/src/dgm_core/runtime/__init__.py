"""Runtime building blocks: device, precision, distributed, checkpoints, logging."""

from dgm_core.runtime.checkpoint import CheckpointError, CheckpointManager
from dgm_core.runtime.device import capture_rng_state, resolve_device, restore_rng_state, seed_everything
from dgm_core.runtime.distributed import (
    DistInfo,
    all_gather_object,
    all_reduce_mean,
    all_reduce_sum,
    average_gradients,
    broadcast_object,
    broadcast_parameters,
    gather_for_metrics,
    get_dist_info,
    init_distributed,
    is_main_process,
    main_process_first,
    unwrap_model,
    wait_for_everyone,
    wrap_ddp,
)
from dgm_core.runtime.logging import RunLogger
from dgm_core.runtime.precision import PRECISIONS, Precision

__all__ = [
    "PRECISIONS",
    "CheckpointError",
    "CheckpointManager",
    "DistInfo",
    "Precision",
    "RunLogger",
    "all_gather_object",
    "all_reduce_mean",
    "all_reduce_sum",
    "average_gradients",
    "broadcast_parameters",
    "broadcast_object",
    "capture_rng_state",
    "gather_for_metrics",
    "get_dist_info",
    "init_distributed",
    "is_main_process",
    "main_process_first",
    "resolve_device",
    "restore_rng_state",
    "seed_everything",
    "unwrap_model",
    "wait_for_everyone",
    "wrap_ddp",
]
