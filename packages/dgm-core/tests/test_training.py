"""TrainingRun end to end through a tiny CLI (toy_recipe.py): resume, restarts, DDP, files, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import toy_recipe
from safetensors.torch import load_file

from dgm_core.runtime.logging import read_metrics

HERE = Path(__file__).parent


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    latest = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    return load_file(latest / "model.safetensors")


def run_toy(tmp_path: Path, name: str, *args: str) -> int:
    return toy_recipe.main(["--run-dir", str(tmp_path / name), "--no-progress", "--device", "cpu", *args])


def test_a_run_writes_config_metrics_log_and_checkpoints(tmp_path):
    assert run_toy(tmp_path, "run", "--steps", "6", "--log-every", "2", "--checkpoint-every", "3") == 0
    run_dir = tmp_path / "run"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"] == {"hidden": 16} and config["run"]["steps"] == 6
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [2, 4, 6]
    assert all(set(r) == {"step", "loss", "lr"} for r in records)
    assert [p.name for p in sorted((run_dir / "checkpoints").glob("step_*"))] == [
        "step_000003",
        "step_000006",
    ]
    assert "step 6" in (run_dir / "train.log").read_text()


def test_resume_continues_bit_identically(tmp_path):
    assert run_toy(tmp_path, "straight", "--steps", "10", "--checkpoint-every", "100") == 0
    assert run_toy(tmp_path, "split", "--steps", "5", "--checkpoint-every", "100") == 0
    assert run_toy(tmp_path, "split", "--steps", "10", "--checkpoint-every", "100", "--resume", "auto") == 0
    straight, split = weights(tmp_path / "straight"), weights(tmp_path / "split")
    assert straight.keys() == split.keys()
    for key in straight:
        assert torch.equal(straight[key], split[key]), key
    # and the comparison is not vacuous: a different seed trains differently
    assert run_toy(tmp_path, "other", "--steps", "10", "--seed", "1") == 0
    assert not all(torch.equal(straight[k], v) for k, v in weights(tmp_path / "other").items())


def test_resumed_run_keeps_one_metrics_record_per_step(tmp_path):
    assert run_toy(tmp_path, "run", "--steps", "6", "--log-every", "1", "--checkpoint-every", "4") == 0
    first = tmp_path / "run" / "checkpoints" / "step_000004"
    # resuming from step 4 re-runs steps 5 and 6, which were already logged once
    assert run_toy(tmp_path, "run", "--steps", "8", "--log-every", "1", "--resume", str(first)) == 0
    steps = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert steps == list(range(1, 9))


def test_resume_with_a_different_model_config_is_refused_and_changes_nothing(tmp_path, capsys):
    assert run_toy(tmp_path, "run", "--steps", "3") == 0
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    capsys.readouterr()
    assert run_toy(tmp_path, "run", "--steps", "6", "--hidden", "32") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model config differs (hidden: 16 in checkpoint vs 32 now)" in err[0]
    after = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert after == before


def test_resume_none_refuses_a_run_dir_with_checkpoints(tmp_path, capsys):
    assert run_toy(tmp_path, "run", "--steps", "2") == 0
    assert run_toy(tmp_path, "run", "--steps", "4", "--resume", "none") == 2
    assert "already holds checkpoints" in capsys.readouterr().err


def test_corrupt_checkpoint_on_resume_is_a_one_line_error(tmp_path, capsys):
    assert run_toy(tmp_path, "run", "--steps", "2") == 0
    state = next((tmp_path / "run" / "checkpoints").glob("step_*")) / "training_state.pt"
    state.write_bytes(state.read_bytes()[:40])
    capsys.readouterr()
    assert run_toy(tmp_path, "run", "--steps", "4") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training_state.pt is corrupt or unreadable" in err[0]


def test_unwritable_run_dir_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert toy_recipe.main(["--run-dir", str(blocker / "run"), "--steps", "1"]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_unknown_config_key_is_a_clear_error(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text("stepz = 3\n")
    assert run_toy(tmp_path, "run", "--config", str(config)) == 2
    assert "unknown key(s) 'stepz'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    status = run_toy(tmp_path, "run", "--steps", "8", "--checkpoint-every", "2", "--nan-at-step", "5")
    assert status == 2
    assert "loss became nan at step 5; the last good checkpoint is" in capsys.readouterr().err
    assert [p.name for p in sorted((tmp_path / "run" / "checkpoints").glob("step_*"))][-1] == "step_000004"


def test_bf16_training_on_cpu_runs_and_keeps_fp32_weights(tmp_path):
    assert run_toy(tmp_path, "run", "--steps", "3", "--precision", "bf16") == 0
    assert all(t.dtype == torch.float32 for t in weights(tmp_path / "run").values())


def _toy_command(*args: str) -> tuple[list[str], dict[str, str]]:
    """The toy CLI as a subprocess command line, with this folder importable and one thread."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    return [sys.executable, "-m", "toy_recipe", "--no-progress", "--device", "cpu", *args], env


def toy_subprocess(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    command, env = _toy_command(*args)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)


@pytest.mark.slow
def test_nproc_per_node_relaunches_under_torchrun_with_ddp(tmp_path):
    result = toy_subprocess(tmp_path, "--run-dir", "ddp", "--steps", "4", "--nproc-per-node", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["world_size"] == 2
    assert len(read_metrics(tmp_path / "ddp" / "metrics.jsonl")) == 1  # rank 0 alone writes


@pytest.mark.slow
def test_a_worker_crash_is_recovered_by_torchrun_from_the_last_checkpoint(tmp_path):
    result = toy_subprocess(
        tmp_path,
        *("--run-dir", "elastic", "--steps", "10", "--checkpoint-every", "4", "--log-every", "2"),
        *("--nproc-per-node", "2", "--max-restarts", "1", "--fault-at-step", "6"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "injected fault at step 6" in result.stderr
    assert "at step 4" in (tmp_path / "elastic" / "train.log").read_text()  # resumed from step_000004
    steps = [r["step"] for r in read_metrics(tmp_path / "elastic" / "metrics.jsonl")]
    assert steps[-1] == 10 and 6 in steps
    assert (tmp_path / "elastic" / "checkpoints" / "step_000010").is_dir()


# ----------------------------------------------------------------------------- preemption and disk safety


def _live_toy(tmp_path: Path, *args: str) -> subprocess.Popen:
    command, env = _toy_command(*args)
    return subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for_logged_step(metrics: Path, step: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.exists() and any(r.get("step", 0) >= step for r in read_metrics(metrics)):
            return
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.05)
    raise AssertionError(f"step {step} was never logged")


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command:
            found.append(command)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_checkpoints_the_current_step_and_resume_is_bit_exact(tmp_path, processes):
    common = ("--steps", "30", "--checkpoint-every", "1000", "--log-every", "1")
    launch = ("--nproc-per-node", "2") if processes == 2 else ()
    run_dir = tmp_path / f"stopped{processes}"
    live = _live_toy(tmp_path, "--run-dir", run_dir.name, *common, *launch, "--step-delay", "0.1")
    _wait_for_logged_step(run_dir / "metrics.jsonl", 3, live)
    live.send_signal(signal.SIGTERM)  # to the launcher when processes == 2: it must forward it
    _, err = live.communicate(timeout=120)
    assert live.returncode == 143, err[-3000:]
    saved = sorted((run_dir / "checkpoints").glob("step_*"))
    assert len(saved) == 1 and 3 <= int(saved[0].name[5:]) < 30, saved
    assert not _processes_mentioning(str(run_dir.name) + " "), "workers outlived the launcher"

    resumed = toy_subprocess(tmp_path, "--run-dir", run_dir.name, *common, *launch)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = toy_subprocess(tmp_path, "--run-dir", f"straight{processes}", *common, *launch)
    assert straight.returncode == 0, straight.stderr[-3000:]
    a, b = weights(run_dir), weights(tmp_path / f"straight{processes}")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == list(range(1, 31))


def test_stale_temporary_folders_of_an_interrupted_save_are_removed_at_start(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    (checkpoints / ".tmp-step_000002-abc").mkdir(parents=True)
    (checkpoints / ".tmp-step_000002-abc" / "model.safetensors").write_bytes(b"half")
    (checkpoints / ".old-step_000001-def").mkdir()
    assert run_toy(tmp_path, "run", "--steps", "2") == 0
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_000002"]


def test_resuming_an_older_checkpoint_sets_newer_ones_aside(tmp_path):
    assert run_toy(tmp_path, "run", "--steps", "6", "--checkpoint-every", "2") == 0
    checkpoints = tmp_path / "run" / "checkpoints"
    older = checkpoints / "step_000002"
    assert run_toy(tmp_path, "run", "--steps", "3", "--checkpoint-every", "100", "--resume", str(older)) == 0
    # the abandoned continuation (steps 4 and 6) is kept aside, not pruned and not resumable by accident
    assert sorted(p.name for p in checkpoints.glob("step_*")) == ["step_000002", "step_000003"]
    assert sorted(p.name for p in (checkpoints / "superseded-1").iterdir()) == ["step_000004", "step_000006"]
    assert run_toy(tmp_path, "run", "--steps", "4", "--checkpoint-every", "100") == 0
    assert "at step 3" in (tmp_path / "run" / "train.log").read_text()


def test_a_restart_before_the_first_checkpoint_logs_each_step_once(tmp_path):
    args = ("--steps", "5", "--log-every", "1", "--checkpoint-every", "100")
    assert run_toy(tmp_path, "run", *args, "--nan-at-step", "4") == 2  # steps 1-3 logged, no checkpoint
    assert run_toy(tmp_path, "run", *args) == 0
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3, 4, 5]


def test_checkpoint_files_get_the_usual_permissions(tmp_path):
    assert run_toy(tmp_path, "run", "--steps", "1") == 0
    mask = os.umask(0)
    os.umask(mask)
    checkpoint = tmp_path / "run" / "checkpoints" / "step_000001"
    assert checkpoint.stat().st_mode & 0o777 == 0o777 & ~mask
    assert (checkpoint / "config.json").stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.slow
def test_two_nodes_join_by_c10d_rendezvous_train_in_step_and_only_global_rank_0_writes(tmp_path):
    # Two torchrun agents on this machine play two nodes (one process each), as users launch a
    # multi-node job: the same command on each node with its --node-rank and one rendezvous.
    from dgm_core.testing import free_port

    endpoint = f"127.0.0.1:{free_port()}"
    common = (
        *("--run-dir", "multinode", "--steps", "6", "--log-every", "1", "--checkpoint-every", "3"),
        *("--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d"),
        *("--rdzv-endpoint", endpoint, "--rdzv-id", "dgm-test"),
    )
    nodes = [_live_toy(tmp_path, *common, "--node-rank", str(rank)) for rank in (0, 1)]
    outputs = [node.communicate(timeout=240) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    run_dir = tmp_path / "multinode"
    assert json.loads((run_dir / "config.json").read_text())["world_size"] == 2
    # One writer: one record per step and one checkpoint per cadence, not two.
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert [p.name for p in sorted((run_dir / "checkpoints").glob("step_*"))] == [
        "step_000003",
        "step_000006",
    ]
    # In step: the same two-process run under a single agent gives the same weights.
    single = toy_subprocess(tmp_path, "--run-dir", "one-agent", "--steps", "6", "--nproc-per-node", "2")
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = weights(run_dir), weights(tmp_path / "one-agent")
    assert all(torch.equal(a[k], b[k]) for k in a)
