"""Device selection, seeding and RNG state capture."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from dgm_core.errors import UserError


def resolve_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """Turn ``auto | cpu | cuda | cuda:N`` into a ``torch.device``.

    ``auto`` and bare ``cuda`` pick ``cuda:<local_rank>`` so that each torchrun
    worker lands on its own GPU; ``auto`` falls back to the CPU.
    """
    spec = spec.strip().lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"device '{spec}' asked for, but CUDA is not available here; use --device cpu")
        index = local_rank if spec == "cuda" else _parse_index(spec)
        if index >= torch.cuda.device_count():
            raise UserError(
                f"device cuda:{index} does not exist ({torch.cuda.device_count()} CUDA device(s))"
            )
        return torch.device("cuda", index)
    raise UserError(f"unknown device '{spec}': expected auto, cpu, cuda or cuda:N")


def _parse_index(spec: str) -> int:
    try:
        return int(spec.split(":", 1)[1])
    except ValueError:
        raise UserError(f"unknown device '{spec}': expected cuda:N with an integer N") from None


def seed_everything(seed: int, rank: int = 0, deterministic: bool = False) -> int:
    """Seed python, numpy and torch with ``seed + rank`` and return that value.

    The per-rank offset keeps dropout and sampling noise independent across
    workers while the whole run stays reproducible. ``deterministic`` turns on
    torch's deterministic algorithms (slower; ops without one raise).
    """
    value = seed + rank
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)
    if deterministic:
        # cuBLAS needs this workspace setting before its first call to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    return value


def set_deterministic_algorithms(enabled: bool) -> None:
    """Turn torch's deterministic algorithms on or off, only when that changes the setting.

    (Setting it, even to its current value, costs seconds in recent torch releases: it imports the
    compiler stack.)
    """
    if torch.are_deterministic_algorithms_enabled() != enabled:
        torch.use_deterministic_algorithms(enabled)


def capture_rng_state() -> dict:
    """Every RNG this process uses, as tensors and plain values (safe for weights_only loading)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    python_state = state["python"]
    # weights_only loading turns the inner tuple into a list; random.setstate wants tuples.
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
