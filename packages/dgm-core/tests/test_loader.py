"""run.loader: items read in worker processes, batches still a pure function of (seed, step)."""

from __future__ import annotations

import os

import numpy as np
import torch

from dgm_core.loader import default_num_workers
from dgm_core.training import TrainingConfig, TrainingRun


class MemmapRows(torch.utils.data.Dataset):
    """Rows of a .npy file, opened lazily: the object the main process holds is only a path."""

    def __init__(self, path: str):
        self.path = path
        self.length = int(np.load(path, mmap_mode="r").shape[0])
        self._rows = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        if self._rows is None:
            self._rows = np.load(self.path, mmap_mode="r")
        return torch.from_numpy(np.array(self._rows[index])), index, os.getpid()


def _run(tmp_path, name: str, **overrides) -> TrainingRun:
    cfg = TrainingConfig(run_dir=str(tmp_path / name), device="cpu", steps=10, progress=False, **overrides)
    return TrainingRun(cfg, model_config={}, name="loader")


def _collate(items):
    rows, indices, pids = zip(*items)
    return torch.stack(rows), torch.tensor(indices), set(pids)


def test_workers_load_the_batches_the_sampler_names_and_resume_continues_them(tmp_path):
    rows = np.arange(200 * 3, dtype=np.float32).reshape(200, 3)
    np.save(tmp_path / "rows.npy", rows)
    dataset = MemmapRows(str(tmp_path / "rows.npy"))
    with _run(tmp_path, "a", num_workers=2) as run:
        expected = run.sampler(len(dataset), 8)
        loaded = iter(run.loader(dataset, 8, collate_fn=_collate))
        for step in range(1, 7):
            batch, indices, pids = next(loaded)
            assert indices.tolist() == expected.batch_for_step(step)
            assert torch.equal(batch, torch.from_numpy(rows[indices.numpy()]))
            assert os.getpid() not in pids  # read in a worker, not here
        resumed = iter(run.loader(dataset, 8, start_step=4, collate_fn=_collate))
        assert next(resumed)[1].tolist() == expected.batch_for_step(5)
    assert dataset._rows is None  # the main process never opened the data


def test_a_loaded_step_batch_splits_into_micro_batches(tmp_path):
    np.save(tmp_path / "rows.npy", np.zeros((64, 2), dtype=np.float32))
    dataset = MemmapRows(str(tmp_path / "rows.npy"))
    with _run(tmp_path, "b", num_workers=0, grad_accum=4) as run:
        batch, indices, _ = next(iter(run.loader(dataset, 2, collate_fn=_collate)))
        assert batch.shape == (8, 2)  # 4 micro-batches of 2
        chunks = [chunk for chunk, _ in run.micro_batches(torch.nn.Linear(2, 2), (batch, indices))]
        assert [tuple(c[0].shape) for c in chunks] == [(2, 2)] * 4
        assert torch.cat([c[1] for c in chunks]).tolist() == indices.tolist()


def test_default_worker_count_leaves_a_core_per_rank():
    cores = len(os.sched_getaffinity(0))
    assert default_num_workers(1) == max(0, min(8, cores - 1))
    assert default_num_workers(cores) == 0


def test_starting_a_loader_leaves_the_global_random_stream_alone(tmp_path):
    # A resumed run starts its loader at another step than an uninterrupted one; if starting it
    # drew from the global RNG, the two runs' noise would part ways there.
    np.save(tmp_path / "rows.npy", np.zeros((64, 2), dtype=np.float32))
    dataset = MemmapRows(str(tmp_path / "rows.npy"))
    with _run(tmp_path, "c", num_workers=1) as run:
        torch.manual_seed(5)
        expected = torch.rand(3)
        torch.manual_seed(5)
        next(iter(run.loader(dataset, 2, collate_fn=_collate)))
        assert torch.equal(torch.rand(3), expected)
