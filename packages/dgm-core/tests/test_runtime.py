"""Device, precision, seeding, distributed helpers and the step-indexed sampler."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from dgm_core.errors import UserError
from dgm_core.runtime import capture_rng_state, resolve_device, restore_rng_state, seed_everything
from dgm_core.runtime.distributed import all_gather_object, all_reduce_sum, gather_for_metrics, wrap_ddp
from dgm_core.runtime.precision import Precision
from dgm_core.sampler import ShardedBatchSampler
from dgm_core.testing import run_distributed


def test_device_resolution_and_errors():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_fp16_on_cpu_is_a_clear_error_and_bf16_autocast_works():
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        Precision("fp16", torch.device("cpu"))
    precision = Precision("bf16", torch.device("cpu"))
    layer = torch.nn.Linear(8, 8)
    with precision.autocast():
        out = layer(torch.randn(2, 8))
    assert out.dtype == torch.bfloat16
    assert layer.weight.dtype == torch.float32  # parameters stay fp32
    precision.backward(out.float().sum())
    assert layer.weight.grad.dtype == torch.float32
    assert precision.scaler is None


def test_fp32_autocast_is_a_no_op_and_step_clips():
    precision = Precision("fp32", torch.device("cpu"))
    layer = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.0)
    with precision.autocast():
        loss = (layer(torch.full((3, 4), 100.0)) ** 2).sum()
    precision.backward(loss)
    norm = precision.step(optimizer, max_grad_norm=1.0)
    assert norm > 1.0
    clipped = torch.sqrt(sum(p.grad.pow(2).sum() for p in layer.parameters()))
    assert clipped == pytest.approx(1.0, rel=1e-4)


def test_rng_state_round_trip_reproduces_every_generator():
    seed_everything(3)
    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_seed_offsets_by_rank():
    seed_everything(5, rank=0)
    a = torch.rand(1)
    seed_everything(5, rank=1)
    b = torch.rand(1)
    seed_everything(5, rank=0)
    assert torch.equal(torch.rand(1), a) and not torch.equal(a, b)


def test_sampler_is_a_function_of_the_step():
    sampler = ShardedBatchSampler(20, 4, seed=1)
    stream = iter(sampler)
    first_eight = [next(stream) for _ in range(8)]
    resumed = iter(ShardedBatchSampler(20, 4, seed=1, start_step=5))
    assert [next(resumed) for _ in range(3)] == first_eight[5:8]
    epoch0 = sorted(i for batch in first_eight[:5] for i in batch)
    assert epoch0 == list(range(20))  # each epoch visits every item once
    assert ShardedBatchSampler(20, 4, seed=1).batch_for_step(6) != ShardedBatchSampler(
        20, 4, seed=1
    ).batch_for_step(1)


def test_sampler_shards_ranks_disjointly():
    ranks = [ShardedBatchSampler(24, 3, seed=0, rank=r, world_size=2) for r in range(2)]
    for step in range(1, 5):
        a, b = (s.batch_for_step(step) for s in ranks)
        assert len(a) == len(b) == 3 and not set(a) & set(b)


def test_length_bucketed_batches_group_similar_lengths_and_still_shuffle():
    lengths = [i % 50 for i in range(400)]
    sampler = ShardedBatchSampler(400, 8, seed=0, lengths=lengths, bucket_pool=50)
    batches = [sampler.batch_for_step(s) for s in range(1, 51)]
    spreads = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    assert np.mean(spreads) <= 2  # a random batch of 8 would spread ~38
    assert sorted(i for b in batches for i in b) == list(range(400))
    order = [lengths[b[0]] for b in batches]
    assert order != sorted(order)  # batches are shuffled, not served shortest first


def test_sampler_rejects_datasets_smaller_than_a_batch():
    with pytest.raises(UserError, match="fewer than one global batch"):
        ShardedBatchSampler(3, 2, world_size=2)


def _collectives(rank: int, world_size: int) -> dict:
    total = all_reduce_sum(torch.tensor([float(rank + 1)]))
    gathered = gather_for_metrics(torch.arange(rank + 1, dtype=torch.float32))
    objects = all_gather_object({"rank": rank})
    return {"total": total.item(), "gathered": gathered.tolist(), "objects": objects}


def test_collectives_across_two_gloo_processes():
    results = run_distributed(_collectives, 2)
    for result in results:
        assert result["total"] == 3.0
        assert result["gathered"] == [0.0, 0.0, 1.0]
        assert result["objects"] == [{"rank": 0}, {"rank": 1}]


def _slow_preparation_under_a_short_timeout(rank: int, world_size: int, port: int) -> dict:
    """Rank 0 prepares for longer than the process group's timeout while rank 1 waits."""
    import datetime
    import os
    import time

    import torch.distributed as dist

    from dgm_core.runtime.distributed import main_process_first

    dist.destroy_process_group()
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=2))
    order = []
    with main_process_first():
        if rank == 0:
            time.sleep(5)
        order.append(time.time())
    short_barrier_fails = False
    if rank == 1:  # the process group's own barrier does time out while rank 0 sleeps
        try:
            dist.barrier()
        except RuntimeError:
            short_barrier_fails = True
    else:
        time.sleep(5)
    dist.destroy_process_group()
    return {"finished_at": order[0], "short_barrier_fails": short_barrier_fails}


def test_ranks_wait_for_preparation_longer_than_the_process_group_timeout():
    from dgm_core.testing import free_port

    rank0, rank1 = run_distributed(_slow_preparation_under_a_short_timeout, 2, free_port())
    assert rank1["finished_at"] >= rank0["finished_at"]  # rank 1 ran its block after rank 0's
    assert rank1["short_barrier_fails"]  # so the 2 s timeout was real, and main_process_first outlived it


def _ddp_step(rank: int, world_size: int) -> list:
    torch.manual_seed(0)  # same initial weights on both ranks
    model = wrap_ddp(torch.nn.Linear(4, 1), torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(100 + rank)  # different data on each rank
    loss = model(torch.randn(8, 4)).pow(2).mean()
    loss.backward()
    optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def test_ddp_step_leaves_identical_parameters_on_both_ranks():
    rank0, rank1 = run_distributed(_ddp_step, 2)
    for a, b in zip(rank0, rank1):
        assert torch.equal(a, b)
    torch.manual_seed(0)
    untouched = torch.nn.Linear(4, 1)
    assert not torch.equal(rank0[0], untouched.weight.detach())
