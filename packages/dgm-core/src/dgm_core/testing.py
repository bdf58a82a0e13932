"""Helpers for the packages' tests: distributed code on a CPU-only machine (gloo, spawned processes)
and the round trip every exported model must survive."""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on localhost that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str, fn: Callable, args: tuple) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
        }
    )
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        with open(Path(out_dir) / f"rank{rank}.pkl", "wb") as handle:
            pickle.dump(result, handle)
        # Tear down only when every rank is done: a rank that leaves while a peer still has gloo
        # work in flight can kill that peer ("terminate called without an active exception").
        if dist.is_initialized():
            dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_distributed(fn: Callable[..., Any], world_size: int = 2, *args: Any) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` gloo processes; return their results by rank.

    ``fn`` must be importable at module level (processes are spawned) and its
    result picklable. An exception in any worker is re-raised here.
    """
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(world_size, free_port(), out_dir, fn, args), nprocs=world_size, join=True)
        results = []
        for rank in range(world_size):
            with open(Path(out_dir) / f"rank{rank}.pkl", "rb") as handle:
                results.append(pickle.load(handle))
        return results


def check_pretrained_round_trip(
    model: torch.nn.Module,
    save: Callable[[Path], Any],
    load: Callable[[Path], torch.nn.Module],
    folder: str | os.PathLike,
    forward: Callable[[torch.nn.Module], Any] | None = None,
) -> torch.nn.Module:
    """Save ``model`` with ``save(folder)``, reload with ``load(folder)`` and check that nothing was lost.

    Every package's exported models share these checks (a diffusers-style tester):

    * the folder is a dgm-core model folder (``config.json`` + ``model.safetensors``) and holds no
      pickle files (``*.bin``, ``*.pt``, ``*.pkl``), and no temporary folder is left beside it;
    * the reloaded ``state_dict`` has the same names, shapes, dtypes and values, bit for bit;
    * parameters tied in ``model`` (one tensor under two names) are tied again after loading;
    * with ``forward`` given, both models (in eval mode) give the same outputs for it;
    * saving the reloaded model again gives the same ``model.safetensors`` bytes.

    Returns the reloaded model. Raises ``AssertionError`` naming the first difference.
    """
    from dgm_core.pretrained import CONFIG_FILE, WEIGHTS_FILE

    folder = Path(folder)
    save(folder)
    assert (folder / CONFIG_FILE).is_file(), f"{folder} has no {CONFIG_FILE}"
    assert (folder / WEIGHTS_FILE).is_file(), f"{folder} has no {WEIGHTS_FILE}"
    pickles = [p.name for p in folder.rglob("*") if p.suffix in (".bin", ".pt", ".pkl", ".pickle")]
    assert not pickles, f"{folder} holds pickle files: {pickles}"
    leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith((".tmp-", ".old-"))]
    assert not leftovers, f"temporary folders left beside {folder}: {leftovers}"

    loaded = load(folder)
    before, after = model.state_dict(), loaded.state_dict()
    assert sorted(before) == sorted(after), (
        f"tensor names differ: only saved {sorted(set(before) - set(after))[:3]}, "
        f"only loaded {sorted(set(after) - set(before))[:3]}"
    )
    for name, tensor in before.items():
        other = after[name]
        assert tensor.shape == other.shape and tensor.dtype == other.dtype, (
            f"{name}: {tuple(tensor.shape)} {tensor.dtype} saved, {tuple(other.shape)} {other.dtype} loaded"
        )
        assert torch.equal(tensor.cpu(), other.cpu()), f"{name}: values differ after loading"
    for group in _tied_groups(model):
        pointers = {after_param.data_ptr() for after_param in _named_params(loaded, group)}
        assert len(pointers) == 1, f"tied parameters {sorted(group)} are no longer tied after loading"

    if forward is not None:
        was_training = (model.training, loaded.training)
        model.eval(), loaded.eval()
        with torch.no_grad():
            _assert_same_outputs(forward(model), forward(loaded), "output")
        model.train(was_training[0]), loaded.train(was_training[1])

    again = folder.parent / f"{folder.name}-resaved"
    save_folder_bytes = (folder / WEIGHTS_FILE).read_bytes()
    try:
        _resave(save, loaded, model, again)
        assert (again / WEIGHTS_FILE).read_bytes() == save_folder_bytes, "re-saving changes the weights file"
    finally:
        shutil.rmtree(again, ignore_errors=True)
    return loaded


def _resave(
    save: Callable[[Path], Any], loaded: torch.nn.Module, original: torch.nn.Module, to: Path
) -> None:
    """Save ``loaded`` with the same ``save`` function: swap its state into ``original`` for the call."""
    state = {k: v.clone() for k, v in original.state_dict().items()}
    original.load_state_dict(loaded.state_dict())
    try:
        save(to)
    finally:
        original.load_state_dict(state)


def _tied_groups(model: torch.nn.Module) -> list[set[str]]:
    by_pointer: dict[int, set[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if param.numel():  # empty tensors share the null pointer without being tied
            by_pointer.setdefault(param.data_ptr(), set()).add(name)
    return [names for names in by_pointer.values() if len(names) > 1]


def _named_params(model: torch.nn.Module, names: set[str]) -> list[torch.Tensor]:
    params = dict(model.named_parameters(remove_duplicate=False))
    return [params[name] for name in names if name in params]


def _assert_same_outputs(a: Any, b: Any, where: str) -> None:
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.shape == b.shape, f"{where}: shapes differ"
        assert torch.equal(a, b), f"{where}: values differ (max |diff| {(a.float() - b.float()).abs().max()})"
    elif isinstance(a, dict) or hasattr(a, "__dataclass_fields__"):
        items = a.items() if isinstance(a, dict) else vars(a).items()
        other = b if isinstance(b, dict) else vars(b)
        for key, value in items:
            _assert_same_outputs(value, other[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_outputs(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"
