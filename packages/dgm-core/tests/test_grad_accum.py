"""--grad-accum: micro-batches add up to the gradient of one large batch, DDP syncing once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed.algorithms.ddp_comm_hooks.default_hooks

from dgm_core.errors import UserError
from dgm_core.testing import run_distributed
from dgm_core.training import TrainingConfig, TrainingRun


def _step_gradient(rank: int, world_size: int, run_dir: str, grad_accum: int, batch_size: int):
    """One step's gradient of a linear regression, through TrainingRun's sampler and micro-batches."""
    cfg = TrainingConfig(
        run_dir=str(Path(run_dir) / f"w{world_size}-a{grad_accum}"),
        device="cpu",
        grad_accum=grad_accum,
        steps=1,
        progress=False,
    )
    data = torch.Generator().manual_seed(7)
    inputs, targets = torch.randn(64, 4, generator=data), torch.randn(64, 3, generator=data)
    with TrainingRun(cfg, model_config={}, name="accum") as run:
        torch.manual_seed(0)  # the same initial weights on every rank and in every variant
        model = torch.nn.Linear(4, 3)
        ddp_model = run.wrap(model)
        all_reduces = []
        if world_size > 1:  # count DDP's gradient all-reduces: once per step, not per micro-batch

            def counting_hook(state, bucket):
                all_reduces.append(1)
                return torch.distributed.algorithms.ddp_comm_hooks.default_hooks.allreduce_hook(state, bucket)

            ddp_model.register_comm_hook(None, counting_hook)
        indices = next(iter(run.sampler(64, batch_size)))
        seen = []
        for chunk, sync in run.micro_batches(ddp_model, indices):
            with sync:
                loss = torch.nn.functional.mse_loss(ddp_model(inputs[chunk]), targets[chunk]) / grad_accum
                loss.backward()
            seen.append(len(chunk))
        return model.weight.grad.clone(), model.bias.grad.clone(), seen, sorted(indices), len(all_reduces)


def test_four_micro_batches_of_8_give_the_gradient_of_one_batch_of_32(tmp_path):
    w_big, b_big, seen_big, items_big, _ = _step_gradient(0, 1, str(tmp_path), 1, 32)
    w_acc, b_acc, seen_acc, items_acc, _ = _step_gradient(0, 1, str(tmp_path), 4, 8)
    assert seen_big == [32] and seen_acc == [8, 8, 8, 8] and items_acc == items_big
    torch.testing.assert_close(w_acc, w_big, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(b_acc, b_big, rtol=1e-6, atol=1e-7)
    # not vacuous: one micro-batch alone gives another gradient
    w_one, *_ = _step_gradient(0, 1, str(tmp_path / "one"), 1, 8)
    assert not torch.allclose(w_one, w_big, atol=1e-4)


@pytest.mark.slow
def test_two_ranks_accumulating_4_x_8_match_one_process_with_a_batch_of_64(tmp_path):
    w_ref, b_ref, _, items_ref, _ = _step_gradient(0, 1, str(tmp_path / "ref"), 1, 64)
    results = run_distributed(_step_gradient, 2, str(tmp_path), 4, 8)
    assert sorted(results[0][3] + results[1][3]) == items_ref  # the ranks split the one global batch
    for weight_grad, bias_grad, seen, _, all_reduces in results:
        assert seen == [8, 8, 8, 8] and all_reduces == 1
        torch.testing.assert_close(weight_grad, w_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bias_grad, b_ref, rtol=1e-5, atol=1e-6)


def test_grad_accum_below_one_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="grad_accum must be at least 1"):
        TrainingRun(
            TrainingConfig(run_dir=str(tmp_path), grad_accum=0, device="cpu"), model_config={}, name="x"
        )
