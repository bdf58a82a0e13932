"""A 2-process DDP run of the real training loop (gloo on CPU), its one-time preparation done once."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest
import torch

from dgm_core.testing import run_distributed
from optimus import building, data
from optimus.train import PRESETS, OptimusTrainConfig, train


def _train_on_rank(rank: int, world_size: int, run_dir: str) -> dict:
    cfg = OptimusTrainConfig(
        **{**PRESETS["smoke"], "steps": 6, "batch_size": 8, "log_every": 3}, run_dir=run_dir, device="cpu"
    )
    # Count the one-time preparation each rank does itself (rather than finding rank 0's on disk).
    with (
        mock.patch.object(building, "build_codec", wraps=building.build_codec) as build_codec,
        mock.patch.object(data, "build_token_cache", wraps=data.build_token_cache) as build_token_cache,
    ):
        result = train(cfg)
    flat = torch.cat([p.detach().flatten() for p in result.model.parameters()])
    return {
        "checksum": float(flat.double().sum()),
        "first": flat[:5].tolist(),
        "eval": result.evaluation,
        "built": {"tokenizers": build_codec.call_count, "token_cache": build_token_cache.call_count},
    }


@pytest.mark.slow
def test_two_process_ddp_training_keeps_ranks_in_sync_and_saves_once(tmp_path):
    results = run_distributed(_train_on_rank, 2, str(tmp_path))
    assert results[0]["checksum"] == results[1]["checksum"]
    assert results[0]["first"] == results[1]["first"]
    assert results[0]["eval"] and not results[1]["eval"]  # rank 0 evaluates
    # Rank 0 trains the tokenizers and tokenizes the corpus; rank 1 reuses both from the run directory.
    assert results[0]["built"] == {"tokenizers": 1, "token_cache": 1}
    assert results[1]["built"] == {"tokenizers": 0, "token_cache": 0}
    assert (Path(tmp_path) / "model" / "model.safetensors").is_file()
    record = json.loads((Path(tmp_path) / "config.json").read_text())
    assert record["world_size"] == 2
    steps = [json.loads(line)["step"] for line in (Path(tmp_path) / "metrics.jsonl").read_text().splitlines()]
    assert 3 in steps and 6 in steps
