"""What a run tells the user: readable log lines, ``metrics.jsonl``, TensorBoard, a progress bar.

Only the main process writes files or prints progress; other ranks log warnings
and errors only, so a 16-GPU run reads like a 1-GPU run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

_FORMAT = "%(asctime)s %(levelname)s %(name)s | %(message)s"


class _TqdmHandler(logging.StreamHandler):
    """Writes through tqdm so log lines do not break an active progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def get_logger(name: str = "dgm", is_main: bool = True, log_file: str | Path | None = None) -> logging.Logger:
    """A logger printing INFO on the main process (WARNING elsewhere), optionally also to a file."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    console = _TqdmHandler()
    console.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    logger.addHandler(console)
    if log_file is not None and is_main:
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(logging.Formatter(_FORMAT))
        logger.addHandler(file_handler)
    return logger


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _LogLineProgress:
    """The part of tqdm's interface the runtime uses, reporting as occasional log lines."""

    def __init__(
        self,
        logger: logging.Logger,
        iterable: Iterable | None,
        total: int | None,
        initial: int,
        desc: str,
        lines_every: int | None,
    ):
        self.logger, self.iterable, self.total, self.n, self.desc = logger, iterable, total, initial, desc
        self.every = lines_every or max(1, (total or 100) // 20)
        self._start_n, self._clock = initial, time.perf_counter()

    def __iter__(self):
        for item in self.iterable or ():
            yield item
            self.update(1)

    def update(self, count: int = 1) -> None:
        self.n += count
        if self.n % self.every == 0 or (self.total is not None and self.n == self.total):
            rate = (self.n - self._start_n) / max(time.perf_counter() - self._clock, 1e-9)
            of = f"/{self.total}" if self.total is not None else ""
            self.logger.info("%s: %d%s (%.3g it/s)", self.desc, self.n, of, rate)

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _plain(value: Any) -> Any:
    """Tensors and numpy scalars as JSON numbers; NaN/inf as strings (JSON has no such numbers)."""
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class RunLogger:
    """Logs of one run: ``train.log``, ``metrics.jsonl`` (one flushed object per call), TensorBoard."""

    def __init__(
        self, run_dir: str | Path, name: str = "dgm", is_main: bool = True, tensorboard: bool = False
    ):
        self.run_dir = Path(run_dir)
        self.is_main = is_main
        self.logger = get_logger(name, is_main, self.run_dir / "train.log" if is_main else None)
        self._metrics = open(self.run_dir / "metrics.jsonl", "a") if is_main else None  # noqa: SIM115
        self._tensorboard = None
        if tensorboard and is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.logger.warning(
                    "tensorboard is not installed (pip install 'dgm-core[tensorboard]'); skipping it"
                )
            else:
                self._tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"))

    def info(self, message: str, *args: Any) -> None:
        self.logger.info(message, *args)

    def warning(self, message: str, *args: Any) -> None:
        self.logger.warning(message, *args)

    def log_metrics(self, step: int, metrics: Mapping[str, Any], prefix: str = "") -> None:
        """Append ``{"step": step, **metrics}`` to metrics.jsonl, print a line, feed TensorBoard."""
        if not self.is_main:
            return
        record = {"step": step, **{f"{prefix}{k}": _plain(v) for k, v in metrics.items()}}
        assert self._metrics is not None
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        self.logger.info(
            "step %d | %s", step, " | ".join(f"{k} {_format(v)}" for k, v in record.items() if k != "step")
        )
        if self._tensorboard is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(key, value, step)

    def truncate_after(self, step: int) -> None:
        """Drop metrics.jsonl records past ``step``: a resumed run re-logs those steps itself.

        Without this, a run that crashed after logging step 105 but resumed from its step-100
        checkpoint would record steps 101-105 twice.
        """
        if not self.is_main or self._metrics is None:
            return
        path = Path(self._metrics.name)
        self._metrics.close()
        kept = [r for r in read_metrics(path) if not isinstance(r.get("step"), int) or r["step"] <= step]
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(json.dumps(record) + "\n" for record in kept))
        os.replace(tmp, path)
        self._metrics = open(path, "a")  # noqa: SIM115

    def progress(
        self, iterable: Iterable | None = None, total: int | None = None, initial: int = 0, **kwargs
    ):
        """A tqdm bar on the main process when stderr is a terminal.

        Elsewhere (a SLURM or Kubernetes log, a pipe) a bar would fill the log with carriage-return
        frames, so the main process logs a plain progress line every ``lines_every`` updates
        (default: a twentieth of ``total``) instead; other ranks are silent.
        """
        disable = kwargs.pop("disable", False) or not self.is_main
        lines_every = kwargs.pop("lines_every", None)
        if not disable and not _is_terminal(sys.stderr):
            return _LogLineProgress(
                self.logger, iterable, total, initial, kwargs.get("desc", self.logger.name), lines_every
            )
        return tqdm(iterable, total=total, initial=initial, disable=disable, dynamic_ncols=True, **kwargs)

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        for handler in list(self.logger.handlers):
            handler.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl (a torn last line from a crash is ignored)."""
    records = []
    with open(path) as handle:
        for line in handle:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records
