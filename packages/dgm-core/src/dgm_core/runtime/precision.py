"""Mixed precision in one object: the dtype, the autocast context and (fp16 only) a GradScaler."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch

from dgm_core.errors import UserError

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """``fp32 | bf16 | fp16`` for one device.

    bf16 works on CPU and on CUDA devices that support it; fp16 needs CUDA and
    brings a GradScaler, because fp16 gradients underflow without loss scaling.
    Parameters and optimizer state stay fp32 in every mode (autocast only
    changes the dtype of the ops it covers).
    """

    def __init__(self, name: str, device: torch.device):
        if name not in PRECISIONS:
            raise UserError(f"unknown precision '{name}': expected one of {', '.join(PRECISIONS)}")
        if name == "fp16" and device.type != "cuda":
            raise UserError("precision fp16 needs a CUDA device; on CPU use --precision bf16 or fp32")
        if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError(
                f"precision bf16 is not supported on {torch.cuda.get_device_name(device)}; use fp16"
            )
        self.name = name
        self.device = device
        self.dtype = _DTYPES[name]
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    @property
    def enabled(self) -> bool:
        return self.name != "fp32"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context to run forward passes in (a no-op for fp32)."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        parameters: Iterable[torch.nn.Parameter] | None = None,
        max_grad_norm: float | None = None,
    ) -> torch.Tensor | None:
        """Unscale (fp16), clip if asked, step and update the scaler. Returns the pre-clip grad norm."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        grad_norm = None
        if max_grad_norm is not None and max_grad_norm > 0:
            if parameters is None:
                parameters = [p for group in optimizer.param_groups for p in group["params"]]
            grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        return grad_norm

    def state_dict(self) -> dict:
        return {"name": self.name, "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
