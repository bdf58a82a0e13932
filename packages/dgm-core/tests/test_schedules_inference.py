"""Small shared pieces: the warm-up/decay schedule, the inference opening, progress output."""

from __future__ import annotations

import io
import logging

import pytest
import torch

from dgm_core.errors import UserError
from dgm_core.inference import RuntimeConfig, open_inference
from dgm_core.runtime.logging import RunLogger
from dgm_core.runtime.schedules import warmup_linear_decay


def _learning_rates(warmup: int, total: int, base: float = 2.0) -> list[float]:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=base)
    scheduler = warmup_linear_decay(optimizer, warmup, total)
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_warmup_then_linear_decay_matches_the_closed_form():
    warmup, total, base = 4, 10, 2.0
    expected = [base * (k + 1) / warmup for k in range(warmup)]
    expected += [base * (total - k) / (total - warmup) for k in range(warmup, total)]
    assert _learning_rates(warmup, total, base) == pytest.approx(expected)
    # The warm-up reaches the full rate on its last step and the decay ends one step above 0.
    assert expected[warmup - 1] == base and expected[-1] == pytest.approx(base / (total - warmup))


def test_no_warmup_starts_at_the_full_rate():
    rates = _learning_rates(0, 5, base=1.0)
    assert rates == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])


def test_schedule_rejects_impossible_lengths():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError):
        warmup_linear_decay(optimizer, -1, 10)


def test_open_inference_seeds_and_honours_precision():
    runtime = open_inference(RuntimeConfig(device="cpu", precision="bf16", seed=3))
    first = torch.rand(4)
    with runtime.precision.autocast():
        product = torch.ones(2, 2) @ torch.ones(2, 2)
    assert runtime.device == torch.device("cpu") and product.dtype == torch.bfloat16
    open_inference(RuntimeConfig(device="cpu", seed=3))
    assert torch.equal(torch.rand(4), first)
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        open_inference(RuntimeConfig(device="cpu", precision="fp16"))


def test_open_inference_turns_on_deterministic_algorithms():
    try:
        open_inference(RuntimeConfig(device="cpu", deterministic=True))
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_progress_is_log_lines_when_stderr_is_not_a_terminal(tmp_path, monkeypatch):
    # Under pytest stderr is captured, i.e. not a terminal: a SLURM log sees lines, not bar frames.
    fake_stderr = io.StringIO()
    monkeypatch.setattr("sys.stderr", fake_stderr)
    logger = RunLogger(tmp_path, name="progress-test")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.logger.addHandler(handler)
    bar = logger.progress(total=40, initial=0, desc="train")
    for _ in range(40):
        bar.update(1)
    bar.close()
    logger.close()
    messages = [record.getMessage() for record in records]
    assert len(messages) == 20
    assert messages[0].startswith("train: 2/40") and messages[-1].startswith("train: 40/40")
    assert "\r" not in fake_stderr.getvalue()


def test_progress_is_a_bar_on_a_terminal(tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stderr", Terminal())
    logger = RunLogger(tmp_path, name="progress-tty")
    bar = logger.progress(total=3, desc="train", file=io.StringIO())
    try:
        from tqdm.auto import tqdm

        assert isinstance(bar, tqdm)
    finally:
        bar.close()
        logger.close()


def test_a_deterministic_call_does_not_leak_into_the_next_one():
    try:
        open_inference(RuntimeConfig(device="cpu", deterministic=True))
        open_inference(RuntimeConfig(device="cpu"))
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
