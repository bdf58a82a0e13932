"""torchrun/DDP in plain words: ranks, the main process, collectives and model wrapping.

A process started by torchrun finds RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR
and MASTER_PORT in its environment; :func:`init_distributed` reads them and
joins the process group (NCCL on CUDA, gloo on CPU). Without them every helper
here degrades to the single-process case, so model code never branches on
"am I distributed".
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dgm_core.runtime.device import resolve_device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def get_dist_info() -> DistInfo:
    """The current process's place, from the process group if joined, else from torchrun's environment."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo(
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_distributed(device_spec: str = "auto", timeout_s: float = 1800.0) -> tuple[DistInfo, torch.device]:
    """Resolve the device for this worker and join the process group when launched by torchrun."""
    info = get_dist_info()
    device = resolve_device(device_spec, local_rank=info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if info.is_distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=timeout_s)
        device_id = device if device.type == "cuda" else None
        store = _restart_safe_store(info, timeout)
        if store is None:
            dist.init_process_group(
                backend=backend, init_method="env://", timeout=timeout, device_id=device_id
            )
        else:
            dist.init_process_group(
                backend=backend,
                store=store,
                rank=info.rank,
                world_size=info.world_size,
                timeout=timeout,
                device_id=device_id,
            )
    return info, device


def _restart_safe_store(info: DistInfo, timeout: datetime.timedelta) -> dist.Store | None:
    """A store namespaced by torchrun's restart attempt, or None outside torchrun.

    torchrun's agent keeps serving the same store (same MASTER_PORT) across restarts, so the
    process group's keys from a crashed attempt -- e.g. gloo's peer addresses -- are still
    there when the restarted workers rendezvous, and a worker can read a dead peer's address
    (seen as "Gloo connectFullMesh failed ... Connection refused" after --max-restarts).
    A prefix per attempt gives every attempt clean keys.
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        return None
    agent_hosts_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        host_name=os.environ["MASTER_ADDR"],
        port=int(os.environ["MASTER_PORT"]),
        world_size=info.world_size,
        is_master=info.rank == 0 and not agent_hosts_store,
        timeout=timeout,
    )
    return dist.PrefixStore(f"dgm/attempt_{attempt}", store)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        _preparation_groups.clear()
        dist.destroy_process_group()


class ProcessGroupMissing(RuntimeError):
    """A collective or barrier was called in a multi-process launch before the process group exists."""


def _active() -> bool:
    """True when collectives must run; an error when they should but cannot yet.

    Under torchrun (``WORLD_SIZE > 1``) a barrier or collective called before the process group
    is set up would silently do nothing: ranks would race to write the same files, or read one
    before it exists. That is a programming error, reported as such.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        raise ProcessGroupMissing(
            f"a rank helper was called in a {world_size}-process launch before the process group "
            "exists; do one-time preparation inside the TrainingRun (run.main_process_first()) "
            "or call init_distributed() first"
        )
    return False


def is_main_process() -> bool:
    return get_dist_info().is_main


def wait_for_everyone() -> None:
    """A barrier across all ranks (no-op when single-process)."""
    if _active():
        dist.barrier()


# How long the other ranks wait while rank 0 prepares (tokenizing a Wikipedia-size corpus, packing
# ImageNet). Not the process group's timeout (30 minutes), which is sized for collectives; if rank 0
# dies meanwhile, torchrun stops the waiting ranks, so a long wait cannot hang a job.
PREPARATION_TIMEOUT_S = 7 * 24 * 3600.0
_preparation_groups: dict[int, dist.ProcessGroup] = {}


def _preparation_group() -> dist.ProcessGroup:
    """A gloo group of all ranks whose barrier waits up to :data:`PREPARATION_TIMEOUT_S`.

    Made once per process group. Creating it is itself collective: every rank calls this on
    entering :func:`main_process_first`.
    """
    key = id(dist.group.WORLD)
    if key not in _preparation_groups:
        _preparation_groups.clear()  # groups of an earlier, destroyed process group
        _preparation_groups[key] = dist.new_group(
            backend="gloo", timeout=datetime.timedelta(seconds=PREPARATION_TIMEOUT_S)
        )
    return _preparation_groups[key]


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Let rank 0 run the block first (e.g. to build a cache) while the others wait, then the rest.

    The others wait up to :data:`PREPARATION_TIMEOUT_S`, however long the process group's own
    timeout is: preparing a large corpus can take hours.
    """
    if not _active():
        yield
        return
    group = _preparation_group()
    main = is_main_process()
    if not main:
        dist.barrier(group=group)
    try:
        yield
    finally:
        # Also when rank 0's block fails: the others then go on and fail on their own, instead
        # of waiting at the barrier until the timeout.
        if main:
            dist.barrier(group=group)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks, in place, and return it."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over ranks, in place, and return it."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def all_gather_object(obj: object) -> list:
    """Every rank's ``obj``, in rank order (``[obj]`` when single-process)."""
    if not _active():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s ``obj`` on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_for_metrics(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a per-rank tensor along dim 0 across ranks; ranks may hold different lengths."""
    if not _active():
        return tensor
    length = torch.tensor([tensor.shape[0]], device=tensor.device)
    lengths = [torch.zeros_like(length) for _ in range(dist.get_world_size())]
    dist.all_gather(lengths, length)
    longest = int(max(x.item() for x in lengths))
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    chunks = [torch.zeros_like(padded) for _ in lengths]
    dist.all_gather(chunks, padded)
    return torch.cat([chunk[: int(n.item())] for chunk, n in zip(chunks, lengths)])


def broadcast_parameters(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s parameters and buffers (what DDP does at construction)."""
    if _active():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=src)


def average_gradients(module: torch.nn.Module) -> None:
    """Average gradients over ranks in one flat all-reduce (what DDP does during backward).

    For models DDP cannot wrap, e.g. an agent whose rollout calls the model many times before
    one backward pass. Parameters without a gradient on this rank contribute zeros.
    """
    if not _active():
        return
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for param, grad in zip(params, grads):
        count = grad.numel()
        param.grad = flat[offset : offset + count].view_as(param).clone()
        offset += count


def wrap_ddp(model: torch.nn.Module, device: torch.device, **ddp_kwargs) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when running distributed, else ``model`` itself."""
    if not _active():
        return model
    if device.type == "cuda":
        ddp_kwargs.setdefault("device_ids", [device.index])
        ddp_kwargs.setdefault("output_device", device.index)
    return torch.nn.parallel.DistributedDataParallel(model, **ddp_kwargs)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module under DDP (and ``torch.compile``) wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
