"""Batches loaded in worker processes, still a pure function of (seed, step).

The index batches come from :class:`~dgm_core.sampler.ShardedBatchSampler` in the main process
(cheap: integers only); a ``DataLoader`` hands them to ``num_workers`` worker processes, which
read and decode the items (``dataset[i]``) and collate them. The main process therefore never
holds the dataset — only a handle that each worker opens lazily (a memory-mapped file, a folder
of images) — and the batch of step *s* is the one the sampler names, however many workers load
it and in whatever order they finish (the ``DataLoader`` yields batches in sampler order).

A dataset used this way must make ``dataset[i]`` a function of ``i`` alone: random augmentation
belongs in the train step (seeded by the run), not in ``__getitem__``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from dgm_core.sampler import ShardedBatchSampler


def default_num_workers(local_world_size: int = 1) -> int:
    """One loader process per spare core of this rank's share of the machine (at most 8, at least 0)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores // max(1, local_world_size) - 1))


def _seed_worker(worker_id: int) -> None:
    """Workers need no randomness (``dataset[i]`` depends on ``i`` only); fix it anyway, per worker."""
    info = torch.utils.data.get_worker_info()
    torch.manual_seed(info.seed % 2**63 if info is not None else worker_id)


def step_loader(
    dataset: Dataset,
    sampler: ShardedBatchSampler,
    *,
    num_workers: int,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    pin_memory: bool = False,
    prefetch_batches: int = 2,
) -> DataLoader:
    """A ``DataLoader`` yielding, step after step, the collated items of ``sampler``'s index batches."""
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs.update(
            persistent_workers=True, prefetch_factor=max(1, prefetch_batches), worker_init_fn=_seed_worker
        )
    # A loader draws its workers' base seed when an iterator starts. From the global RNG, that
    # draw would shift the training's random stream by one number at whatever step the loader
    # starts — a resumed run's would differ from the uninterrupted run's. A generator of its own
    # keeps the global stream untouched.
    generator = torch.Generator().manual_seed(sampler.seed * 1_000_003 + sampler.rank)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        generator=generator,
        **kwargs,
    )
