"""Results over seeds, as the "claim in miniature" commands report them.

``fqgan-ablate``, ``optimus-claim`` and ``prevalent-claim`` each train a few seeds per setting and
report a claim (variant A beats B). :func:`mean_interval` gives the Student-t interval of a mean,
:func:`paired_difference` the interval, paired t-test and win count of per-seed differences when the
two settings share seeds and data, and :func:`results_table` lays cells out as a markdown table.

Running them: :func:`options_digest` names a run's folder by its complete option set (so a finished
run is reused and a changed option trains anew), and :func:`run_parallel` executes independent runs
several at a time, one process and one torch thread each (:func:`parallel_jobs` picks how many).
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from scipy import stats

from dgm_core.errors import UserError


def _signed(x: float, digits: int, signed: bool) -> str:
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` values and its confidence interval ``[low, high]``."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def format(self, digits: int = 3, signed: bool = False) -> str:
        """``"0.734 [0.701, 0.767]"``; ``signed`` writes a sign on every number, for differences."""
        numbers = (_signed(x, digits, signed) for x in (self.mean, self.low, self.high))
        return "{} [{}, {}]".format(*numbers)

    def __str__(self) -> str:
        return self.format()


@dataclass(frozen=True)
class PairedDifference:
    """Treatment − control over ``n`` pairs that share a seed and data."""

    difference: Interval
    p_value: float
    wins: int
    losses: int
    ties: int
    n: int

    def format(self, digits: int = 3) -> str:
        """``"+0.052 [+0.011, +0.093], p = 0.021, 5/0/0 (wins/losses/ties)"``.

        A p-value that rounds to zero at ``digits`` is written as a bound (``p < 0.001``).
        """
        floor = 10.0**-digits
        p = f"p < {floor:.{digits}f}" if self.p_value < floor else f"p = {self.p_value:.{digits}f}"
        counts = f"{self.wins}/{self.losses}/{self.ties} (wins/losses/ties)"
        return f"{self.difference.format(digits, signed=True)}, {p}, {counts}"

    def __str__(self) -> str:
        return self.format()


def _finite_values(values: Iterable[float], what: str) -> np.ndarray:
    array = np.asarray(list(values), dtype=np.float64)
    if array.ndim != 1:
        raise UserError(f"{what} must be a flat list of numbers, got shape {array.shape}")
    if array.size == 0:
        raise UserError(f"{what}: no values to summarise (did every run fail or get skipped?)")
    nans, infinities = int(np.isnan(array).sum()), int(np.isinf(array).sum())
    # A diverged seed must be rerun or excluded by the caller, not averaged into a claim.
    if nans or infinities:
        raise UserError(f"{what}: {nans} of {array.size} values are NaN and {infinities} infinite")
    return array


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise UserError(f"confidence must lie strictly between 0 and 1, got {confidence}")


def mean_interval(values: Iterable[float], confidence: float = 0.95) -> Interval:
    """The mean of ``values`` with its Student-t interval ``mean ± t_{(1+c)/2, n-1} · s/√n``.

    ``s`` is the sample standard deviation (ddof = 1). One value gives ``low = high = nan``: a
    single seed says nothing about the spread. Identical values give a zero-width interval at
    exactly that value. No values, NaN or infinite values raise :class:`UserError`.
    """
    _check_confidence(confidence)
    array = _finite_values(values, "values")
    n = array.size
    if n == 1:
        return Interval(float(array[0]), math.nan, math.nan, 1)
    if np.all(array == array[0]):
        # np.mean of equal numbers can be off by an ulp; the interval should be the value itself.
        return Interval(float(array[0]), float(array[0]), float(array[0]), n)
    mean = float(array.mean())
    half_width = float(stats.t.ppf((1 + confidence) / 2, n - 1) * array.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half_width, mean + half_width, n)


def paired_difference(
    treatment: Iterable[float], control: Iterable[float], confidence: float = 0.95
) -> PairedDifference:
    """Compare per-seed results of two settings run on the same seeds and data, pair by pair.

    ``difference`` is :func:`mean_interval` of ``treatment − control``; ``p_value`` the two-sided
    paired t-test of a zero mean difference (nan for fewer than two pairs). The t-test is undefined
    when all differences are equal; then ``p_value`` is 0.0 if they are nonzero (every pair moved by
    the same amount) and 1.0 if they are all zero (no pair moved). ``wins``/``losses``/``ties``
    count pairs with treatment >, < and == control.
    """
    _check_confidence(confidence)
    treated, controlled = _finite_values(treatment, "treatment"), _finite_values(control, "control")
    if treated.size != controlled.size:
        raise UserError(
            f"paired results need one treatment and one control value per seed, "
            f"got {treated.size} treatment and {controlled.size} control values"
        )
    differences = treated - controlled
    n = differences.size
    if n < 2:
        p_value = math.nan
    elif np.all(differences == differences[0]):
        p_value = 0.0 if differences[0] != 0 else 1.0
    else:
        t_statistic = differences.mean() / (differences.std(ddof=1) / math.sqrt(n))
        p_value = float(2 * stats.t.sf(abs(t_statistic), n - 1))
    return PairedDifference(
        difference=mean_interval(differences, confidence),
        p_value=p_value,
        wins=int((treated > controlled).sum()),
        losses=int((treated < controlled).sum()),
        ties=int((treated == controlled).sum()),
        n=n,
    )


def results_table(rows: Iterable[Sequence[object]], columns: Sequence[str]) -> str:
    """A markdown table: a header of ``columns``, then one line per row of cells (``str`` of each).

    ``|`` inside a cell is escaped so it cannot split the cell. A row whose length differs from
    ``columns`` raises ``ValueError`` (a bug in the caller, not a user mistake).
    """

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    lines = [line(columns), "|" + "---|" * len(columns)]
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"row {list(row)} has {len(row)} cells for {len(columns)} columns")
        lines.append(line(row))
    return "\n".join(lines)


def options_digest(record: dict[str, Any], length: int = 12) -> str:
    """A short hex digest of a JSON-able option record (key order does not matter; values JSON
    cannot hold are taken by ``str``): the part of a run folder's name that says what it trained."""
    text = json.dumps(record, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def parallel_jobs(requested: int, runs: int, device: str) -> int:
    """How many runs :func:`run_parallel` executes at once.

    ``requested`` > 0 is taken as given (capped by ``runs``); 0 means one per CPU core on the CPU and
    one on a GPU (a GPU is shared better by one process at a time). Negative is an error.
    """
    if requested < 0:
        raise UserError(f"--jobs must be >= 0, got {requested}")
    if requested:
        return max(1, min(requested, runs))
    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return 1 if on_gpu else max(1, min(os.cpu_count() or 1, runs))


def _one_torch_thread() -> None:
    # The miniatures are small: a step is bound by Python and small kernels, so one run per core
    # does more work than one run spread over every core.
    torch.set_num_threads(1)


Result = TypeVar("Result")


def run_parallel(
    function: Callable[..., Result],
    calls: Sequence[tuple[Any, ...]],
    jobs: int,
    describe: Callable[[tuple[Any, ...]], str] = repr,
) -> list[Result]:
    """``[function(*args) for args in calls]``, ``jobs`` calls at a time, results in call order.

    With ``jobs`` == 1 the calls run one after another in this process. Otherwise each runs in a
    worker process (started by spawn, never fork: the caller may hold threads) on one torch thread;
    ``function`` and its arguments must be picklable (a module-level function). The first call that
    fails cancels those not started and raises a :class:`UserError` naming it (``describe(args)``);
    calls that finished before stay finished, so their runs are on disk for the next attempt.
    """
    if jobs == 1:
        return [function(*args) for args in calls]
    context = multiprocessing.get_context("spawn")
    results: list[Any] = [None] * len(calls)
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_one_torch_thread) as pool:
        futures = {pool.submit(function, *args): index for index, args in enumerate(calls)}
        for future in as_completed(futures):
            index = futures[future]
            try:
                results[index] = future.result()
            except Exception as error:
                for other in futures:
                    other.cancel()
                raise UserError(f"{describe(calls[index])} failed: {error}") from error
    return results
