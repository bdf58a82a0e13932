"""The opening every CLI that runs a model shares: options, device, seed, determinism, precision.

An inference CLI (sample, evaluate, generate, classify) starts with::

    runtime = open_inference(cfg)            # cfg extends RuntimeConfig
    model = load(...).to(runtime.device)
    with torch.no_grad(), runtime.precision.autocast():
        ...

so ``--device``, ``--seed``, ``--deterministic`` and ``--precision`` mean the same thing in every
CLI and each of them is honoured.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dgm_core.cli import option
from dgm_core.runtime.device import resolve_device, seed_everything, set_deterministic_algorithms
from dgm_core.runtime.precision import PRECISIONS, Precision


@dataclass
class RuntimeConfig:
    """Options of every CLI that runs a model."""

    device: str = option(
        "auto", help="Device: auto, cpu, cuda or cuda:N (auto uses cuda:LOCAL_RANK when present)."
    )
    precision: str = option(
        "fp32", help="fp32, bf16 (CPU or CUDA) or fp16 (CUDA, with loss scaling).", choices=PRECISIONS
    )
    seed: int = option(0, help="Random seed; each rank adds its rank.")
    deterministic: bool = option(False, help="Use deterministic algorithms only (slower).")


@dataclass(frozen=True)
class InferenceRuntime:
    """What :func:`open_inference` set up: the device and the precision to run forward passes in."""

    device: torch.device
    precision: Precision


def open_inference(cfg: RuntimeConfig) -> InferenceRuntime:
    """Resolve the device, seed every generator (deterministic algorithms if asked), pick the precision."""
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed, deterministic=cfg.deterministic)
    # Set both ways: in one process (a notebook, the claim commands) a previous --deterministic
    # call must not stay in force for the next one.
    set_deterministic_algorithms(cfg.deterministic)
    return InferenceRuntime(device=device, precision=Precision(cfg.precision, device))
