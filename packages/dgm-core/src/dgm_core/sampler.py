"""Batches as a pure function of the step: shuffled, sharded over ranks, exact on resume.

torch's ``DistributedSampler`` shuffles per epoch but cannot start in the middle of
one, so a resumed run sees different batches than an uninterrupted one. Here the
batch of step ``s`` depends only on ``(seed, s)``: epoch ``e`` is a permutation drawn
from ``seed + e``, cut into global batches of ``batch_size * world_size`` items, and
rank ``r`` takes its slice. Resuming at step ``s`` therefore continues exactly.

With ``lengths`` (e.g. token counts) batches are length-bucketed *and* shuffled:
each epoch's permutation is cut into pools of ``bucket_pool`` global batches,
sorted by length inside each pool, batched, and the batches are shuffled again.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from dgm_core.errors import UserError


class ShardedBatchSampler:
    """Deterministic per-step index batches for this rank (an infinite iterable for ``DataLoader``)."""

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
        shuffle: bool = True,
        lengths: Sequence[int] | None = None,
        bucket_pool: int = 50,
    ):
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        global_batch = batch_size * world_size
        if num_items < global_batch:
            raise UserError(
                f"dataset has {num_items} item(s), fewer than one global batch "
                f"({batch_size} per rank x {world_size} rank(s)); use a smaller batch size"
            )
        if lengths is not None and len(lengths) != num_items:
            raise ValueError(f"lengths has {len(lengths)} entries for {num_items} items")
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_step = start_step
        self.shuffle = shuffle
        self.lengths = torch.as_tensor(lengths) if lengths is not None else None
        self.bucket_pool = bucket_pool
        self.batches_per_epoch = num_items // global_batch
        self._epoch_cache: tuple[int, torch.Tensor] | None = None

    def _epoch_batches(self, epoch: int) -> torch.Tensor:
        """All global batches of one epoch as a [batches, global_batch] index tensor."""
        if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        global_batch = self.batch_size * self.world_size
        if self.shuffle:
            order = torch.randperm(self.num_items, generator=generator)
        else:
            order = torch.arange(self.num_items)
        order = order[: self.batches_per_epoch * global_batch]
        if self.lengths is not None:
            pool = global_batch * self.bucket_pool
            pools = []
            for start in range(0, len(order), pool):
                chunk = order[start : start + pool]
                # stable sort keeps the shuffled order among equal lengths
                pools.append(chunk[torch.sort(self.lengths[chunk], stable=True).indices])
            batches = torch.cat(pools).view(self.batches_per_epoch, global_batch)
            if self.shuffle:
                batches = batches[torch.randperm(self.batches_per_epoch, generator=generator)]
        else:
            batches = order.view(self.batches_per_epoch, global_batch)
        self._epoch_cache = (epoch, batches)
        return batches

    def batch_for_step(self, step: int) -> list[int]:
        """This rank's indices for (1-based) training step ``step``."""
        epoch, position = divmod(step - 1, self.batches_per_epoch)
        batch = self._epoch_batches(epoch)[position]
        return batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            step += 1
            yield self.batch_for_step(step)

    def epoch_of(self, step: int) -> int:
        return (step - 1) // self.batches_per_epoch
