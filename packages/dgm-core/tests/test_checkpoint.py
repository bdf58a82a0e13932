"""Checkpoints: round trips (tied weights too), atomic saves, pruning, and clear errors on bad files."""

from __future__ import annotations

import pytest
import torch

from dgm_core.runtime.checkpoint import STATE_FILE, WEIGHTS_FILE, CheckpointError, CheckpointManager


class TiedModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # tied, as GPT-2's LM head


def test_round_trip_restores_weights_and_keeps_ties(tmp_path):
    torch.manual_seed(0)
    source, other = TiedModel(), torch.nn.Linear(3, 2)
    manager = CheckpointManager(tmp_path)
    path = manager.save(5, {"tied": source, "other": other}, {"model": {"a": 1}}, {"step": 5})
    target, other2 = TiedModel(), torch.nn.Linear(3, 2)
    CheckpointManager.load_weights(path, {"tied": target, "other": other2})
    assert torch.equal(target.embed.weight, source.embed.weight)
    assert target.head.weight is target.embed.weight
    assert torch.equal(other2.weight, other.weight)
    assert CheckpointManager.read_config(path) == {"model": {"a": 1}}
    assert CheckpointManager.load_training_state(path) == {"step": 5}


def test_keeps_only_the_newest_checkpoints(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (1, 2, 3, 4):
        manager.save(step, {"m": torch.nn.Linear(2, 2)}, {}, {"step": step})
    assert [p.name for p in manager.list()] == ["step_000003", "step_000004"]
    assert manager.latest().name == "step_000004"


def test_a_crash_mid_save_leaves_previous_checkpoints_intact(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep_last=1)
    good = manager.save(1, {"m": torch.nn.Linear(2, 2)}, {}, {"step": 1})
    before = (good / WEIGHTS_FILE).read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        manager.save(2, {"m": torch.nn.Linear(2, 2)}, {}, {"step": 2})
    assert [p.name for p in manager.list()] == ["step_000001"]
    assert (good / WEIGHTS_FILE).read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_resaving_a_step_replaces_it_whole(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save(3, {"m": torch.nn.Linear(2, 2)}, {"v": 1}, {"step": 3})
    manager.save(3, {"m": torch.nn.Linear(2, 2)}, {"v": 2}, {"step": 3})
    assert CheckpointManager.read_config(manager.latest()) == {"v": 2}
    assert len(list(tmp_path.iterdir())) == 1


def test_corrupt_weights_are_a_clear_error(tmp_path):
    path = CheckpointManager(tmp_path).save(1, {"m": torch.nn.Linear(2, 2)}, {}, {"step": 1})
    data = (path / WEIGHTS_FILE).read_bytes()
    (path / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        CheckpointManager.load_weights(path, {"m": torch.nn.Linear(2, 2)})


def test_truncated_training_state_is_a_clear_error(tmp_path):
    path = CheckpointManager(tmp_path).save(
        1, {"m": torch.nn.Linear(2, 2)}, {}, {"step": 1, "x": torch.ones(100)}
    )
    data = (path / STATE_FILE).read_bytes()
    (path / STATE_FILE).write_bytes(data[:50])
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        CheckpointManager.load_training_state(path)


def test_weights_that_do_not_fit_name_the_mismatch(tmp_path):
    path = CheckpointManager(tmp_path).save(1, {"m": torch.nn.Linear(2, 2)}, {}, None)
    with pytest.raises(CheckpointError, match="do not fit the model"):
        CheckpointManager.load_weights(path, {"m": torch.nn.Linear(3, 2)})
    with pytest.raises(CheckpointError, match=r"missing 1 tensor\(s\), e.g. n.weight"):
        CheckpointManager.load_weights(
            path, {"m": torch.nn.Linear(2, 2), "n": torch.nn.Linear(1, 1, bias=False)}
        )


def test_training_state_is_loaded_without_unpickling_code(tmp_path):
    path = CheckpointManager(tmp_path).save(1, {"m": torch.nn.Linear(2, 2)}, {}, {"step": 1})
    torch.save({"evil": TiedModel()}, path / STATE_FILE)  # a pickled module is code, not data
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        CheckpointManager.load_training_state(path)


def test_resolve_accepts_run_dirs_and_checkpoint_dirs(tmp_path):
    manager = CheckpointManager(tmp_path / "run" / "checkpoints")
    manager.save(1, {"m": torch.nn.Linear(2, 2)}, {}, None)
    last = manager.save(2, {"m": torch.nn.Linear(2, 2)}, {}, None)
    assert CheckpointManager.resolve(tmp_path / "run") == last
    assert CheckpointManager.resolve(last) == last
    with pytest.raises(CheckpointError, match="not found"):
        CheckpointManager.resolve(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        CheckpointManager.resolve(tmp_path / "empty")
