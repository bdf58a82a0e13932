"""EMAQuantizer on 2 gloo processes: one dictionary on all ranks, equal to one process on the full batch."""

from __future__ import annotations

import pytest
import torch

from dgm_core.quantization import EMAQuantizer, QuantizationInputError
from dgm_core.testing import run_distributed

DIM, CODES, STEPS, BATCH = 12, 20, 3, 96


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return [torch.randn(BATCH, DIM, generator=g) * 1.3 + 0.2 for _ in range(STEPS)]


def _fresh_quantizer(**kwargs) -> EMAQuantizer:
    torch.manual_seed(0)
    return EMAQuantizer(DIM, CODES, **kwargs)


def train_on_half_batches(rank: int, world_size: int, kwargs: dict) -> dict[str, torch.Tensor]:
    quantizer = _fresh_quantizer(**kwargs)
    usage = []
    for batch in _batches():
        half = batch.chunk(world_size)[rank]
        torch.manual_seed(100 + rank)  # ranks draw differently: revival/k-means seeds must come from rank 0
        usage.append(quantizer(half).usage)
    return {**{k: v.clone() for k, v in quantizer.state_dict().items()}, "usage": torch.stack(usage)}


def nan_on_rank_one(rank: int) -> dict[str, object]:
    quantizer = _fresh_quantizer()
    before = quantizer.codebook.clone()
    x = torch.randn(10, DIM)
    if rank == 1:
        x[3, 0] = float("nan")
    try:
        quantizer(x)
        message = ""
    except QuantizationInputError as error:
        message = str(error)
    return {"message": message, "unchanged": bool(torch.equal(quantizer.codebook, before))}


SCENARIOS = {"reference": {}, "revival+kmeans": {"dead_code_threshold": 1, "kmeans_init": True}}


def all_scenarios(rank: int, world_size: int) -> dict[str, object]:
    """Every scenario in one process group: spawning workers costs far more than the checks."""
    torch.set_num_threads(1)
    results: dict[str, object] = {
        name: train_on_half_batches(rank, world_size, kw) for name, kw in SCENARIOS.items()
    }
    results["nan"] = nan_on_rank_one(rank)
    return results


@pytest.fixture(scope="module")
def ranks() -> list[dict[str, object]]:
    return run_distributed(all_scenarios, 2)


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_two_ranks_keep_bit_identical_dictionaries_equal_to_one_process(ranks, scenario):
    rank0, rank1 = ranks[0][scenario], ranks[1][scenario]
    for name in ("codebook", "cluster_size", "embed_avg", "unused_steps", "usage"):
        assert torch.equal(rank0[name], rank1[name]), f"{name} differs between ranks"
    if SCENARIOS[scenario]:
        return  # revival/k-means draw on rank 0's half only, so a single process differs by design
    single = _fresh_quantizer()
    for batch in _batches():
        single(batch)
    torch.testing.assert_close(rank0["cluster_size"], single.cluster_size, rtol=1e-6, atol=0)
    torch.testing.assert_close(rank0["embed_avg"], single.embed_avg, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rank0["codebook"], single.codebook, rtol=1e-6, atol=1e-6)
    assert rank0["usage"].sum(1).tolist() == [float(BATCH)] * STEPS


@pytest.mark.slow
def test_nonfinite_features_on_one_rank_raise_on_every_rank_without_update(ranks):
    results = [r["nan"] for r in ranks]
    assert "NaN or inf" in results[1]["message"] and "row 3" in results[1]["message"]
    assert "another rank" in results[0]["message"]
    assert all(r["unchanged"] for r in results)
