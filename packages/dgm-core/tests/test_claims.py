"""Results over seeds: t intervals and paired t-tests against scipy and closed forms, formatting, tables."""

import math

import numpy as np
import pytest
from scipy import stats

from dgm_core.claims import (
    Interval,
    PairedDifference,
    mean_interval,
    options_digest,
    paired_difference,
    parallel_jobs,
    results_table,
    run_parallel,
)
from dgm_core.errors import UserError


def test_interval_of_one_to_five_matches_the_t_table():
    interval = mean_interval([1, 2, 3, 4, 5])
    # t_{0.975, 4} = 2.776445 (t table), s = √2.5, n = 5.
    expected_half_width = 2.776445 * math.sqrt(2.5) / math.sqrt(5)
    assert interval.mean == 3.0
    assert interval.n == 5
    assert interval.half_width == pytest.approx(expected_half_width, abs=1e-6)
    assert interval.low == pytest.approx(3.0 - expected_half_width, abs=1e-6)
    assert interval.high == pytest.approx(3.0 + expected_half_width, abs=1e-6)


@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
@pytest.mark.parametrize("n", [2, 3, 10])
def test_interval_matches_scipy_t_interval(n, confidence):
    values = np.random.default_rng(n).normal(0.7, 0.05, size=n)
    low, high = stats.t.interval(confidence, df=n - 1, loc=values.mean(), scale=stats.sem(values))
    interval = mean_interval(values.tolist(), confidence=confidence)
    assert interval.mean == pytest.approx(values.mean(), rel=1e-12)
    assert interval.low == pytest.approx(low, rel=1e-12)
    assert interval.high == pytest.approx(high, rel=1e-12)


def test_one_value_has_a_mean_but_no_interval():
    interval = mean_interval([0.5])
    assert (interval.mean, interval.n) == (0.5, 1)
    assert math.isnan(interval.low) and math.isnan(interval.high) and math.isnan(interval.half_width)
    assert interval.format() == "0.500 [nan, nan]"


def test_identical_values_give_a_zero_width_interval_at_that_value():
    # The float mean of three 0.1s is 0.10000000000000002; the interval must sit exactly on 0.1.
    interval = mean_interval([0.1, 0.1, 0.1])
    assert interval == Interval(0.1, 0.1, 0.1, 3)


def test_no_values_are_refused():
    with pytest.raises(UserError, match="no values"):
        mean_interval([])


def test_nan_values_are_refused_with_their_count():
    with pytest.raises(UserError, match="2 of 5 values are NaN"):
        mean_interval([0.1, math.nan, 0.3, math.nan, 0.5])


def test_infinite_values_are_refused_with_their_count():
    with pytest.raises(UserError, match="0 of 3 values are NaN and 1 infinite"):
        mean_interval([0.1, math.inf, 0.3])


@pytest.mark.parametrize("confidence", [0.0, 1.0, 95])
def test_confidence_outside_zero_one_is_refused(confidence):
    with pytest.raises(UserError, match="strictly between 0 and 1"):
        mean_interval([1.0, 2.0], confidence=confidence)


def test_nested_values_are_refused():
    with pytest.raises(UserError, match=r"flat list of numbers, got shape \(2, 2\)"):
        mean_interval([[1.0, 2.0], [3.0, 4.0]])


@pytest.mark.parametrize("n", [2, 3, 5, 20])
def test_paired_p_value_matches_scipy_ttest_rel(n):
    rng = np.random.default_rng(100 + n)
    control = rng.normal(0.70, 0.05, size=n)
    treatment = control + rng.normal(0.03, 0.02, size=n)
    result = paired_difference(treatment.tolist(), control.tolist())
    assert result.p_value == pytest.approx(stats.ttest_rel(treatment, control).pvalue, rel=1e-10)
    assert result.n == n


def test_paired_interval_is_the_interval_of_the_differences_and_excludes_zero_exactly_when_p_is_small():
    rng = np.random.default_rng(0)
    excluded_zero = 0
    for _ in range(200):
        control = rng.normal(0.0, 1.0, size=5)
        treatment = control + rng.normal(0.5, 1.0, size=5)
        result = paired_difference(treatment, control, confidence=0.9)
        assert result.difference == mean_interval(treatment - control, confidence=0.9)
        zero_outside = not result.difference.low <= 0.0 <= result.difference.high
        assert zero_outside == (result.p_value < 0.1)
        excluded_zero += zero_outside
    assert 0 < excluded_zero < 200  # both sides of the equivalence were exercised


def test_wins_losses_and_ties_count_pairs():
    result = paired_difference([1, 2, 3, 4, 5], [0, 2, 4, 3, 5])
    assert (result.wins, result.losses, result.ties, result.n) == (2, 1, 2, 5)
    assert result.difference.mean == pytest.approx(0.2)


def test_identical_nonzero_differences_have_p_zero():
    result = paired_difference([1.5, 2.5, 3.5], [1.0, 2.0, 3.0])
    assert result.p_value == 0.0
    assert result.difference == Interval(0.5, 0.5, 0.5, 3)
    assert (result.wins, result.losses, result.ties) == (3, 0, 0)


def test_all_zero_differences_have_p_one():
    result = paired_difference([0.7, 0.8, 0.9], [0.7, 0.8, 0.9])
    assert result.p_value == 1.0
    assert (result.wins, result.losses, result.ties) == (0, 0, 3)


def test_one_pair_has_no_p_value_and_no_interval():
    result = paired_difference([0.8], [0.7])
    assert math.isnan(result.p_value)
    assert math.isnan(result.difference.low) and math.isnan(result.difference.high)
    assert (result.wins, result.n) == (1, 1)


def test_unequal_lengths_are_refused():
    with pytest.raises(UserError, match="got 3 treatment and 2 control values"):
        paired_difference([1.0, 2.0, 3.0], [1.0, 2.0])


def test_nan_in_control_is_refused_naming_the_side():
    with pytest.raises(UserError, match="control: 1 of 2 values are NaN"):
        paired_difference([1.0, 2.0], [1.0, math.nan])


def test_interval_format():
    interval = Interval(0.734, 0.701, 0.767, 5)
    assert str(interval) == interval.format() == "0.734 [0.701, 0.767]"
    assert interval.format(digits=1) == "0.7 [0.7, 0.8]"
    assert Interval(-0.02, -0.05, 0.01, 3).format(signed=True) == "-0.020 [-0.050, +0.010]"


def test_paired_difference_format():
    result = PairedDifference(Interval(0.052, 0.011, 0.093, 5), p_value=0.021, wins=5, losses=0, ties=0, n=5)
    assert str(result) == result.format() == "+0.052 [+0.011, +0.093], p = 0.021, 5/0/0 (wins/losses/ties)"
    assert result.format(digits=2) == "+0.05 [+0.01, +0.09], p = 0.02, 5/0/0 (wins/losses/ties)"


def test_p_value_below_the_printed_precision_is_written_as_a_bound():
    result = PairedDifference(Interval(0.5, 0.5, 0.5, 3), p_value=0.0, wins=3, losses=0, ties=0, n=3)
    assert result.format() == "+0.500 [+0.500, +0.500], p < 0.001, 3/0/0 (wins/losses/ties)"
    assert result.format(digits=2).endswith("p < 0.01, 3/0/0 (wins/losses/ties)")


def test_results_table_is_markdown_with_escaped_pipes():
    table = results_table(
        [["FQ", Interval(0.734, 0.701, 0.767, 5)], ["a|b", 3]],
        columns=["variant", "accuracy"],
    )
    assert table == ("| variant | accuracy |\n|---|---|\n| FQ | 0.734 [0.701, 0.767] |\n| a\\|b | 3 |")


def test_results_table_refuses_a_row_of_the_wrong_width():
    with pytest.raises(ValueError, match="has 1 cells for 2 columns"):
        results_table([["only one"]], columns=["a", "b"])


def test_options_digest_ignores_key_order_and_changes_with_any_value():
    record = {"steps": 300, "lr": 2e-4, "nested": {"a": 1, "b": [1, 2]}}
    reordered = {"nested": {"b": [1, 2], "a": 1}, "lr": 2e-4, "steps": 300}
    assert options_digest(record) == options_digest(reordered)
    assert len(options_digest(record)) == 12 and len(options_digest(record, length=10)) == 10
    assert options_digest(record).startswith(options_digest(record, length=10))
    changed = {**record, "nested": {"a": 1, "b": [1, 3]}}
    assert options_digest(changed) != options_digest(record)
    assert options_digest({**record, "extra": None}) != options_digest(record)


def test_options_digest_is_sha256_of_the_sorted_json():
    # The formula the three claim commands used before it moved here: their cached run folders
    # keep their names only while it stays exactly this.
    import hashlib
    import json

    record = {"b": 1, "a": "x"}
    expected = hashlib.sha256(json.dumps({"a": "x", "b": 1}).encode()).hexdigest()[:12]
    assert options_digest(record) == expected


def test_parallel_jobs_takes_a_request_caps_it_and_defaults_to_the_cores_on_cpu(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    assert parallel_jobs(3, runs=10, device="cpu") == 3
    assert parallel_jobs(8, runs=2, device="cpu") == 2
    assert parallel_jobs(0, runs=10, device="cpu") == 6
    assert parallel_jobs(0, runs=4, device="cpu") == 4
    assert parallel_jobs(0, runs=10, device="cuda:0") == 1
    with pytest.raises(UserError, match="--jobs must be >= 0"):
        parallel_jobs(-1, runs=3, device="cpu")


def _square_unless_three(value: int) -> int:
    if value == 3:
        raise ValueError("three is refused")
    return value * value


def _worker_threads(_: int) -> int:
    import torch

    return torch.get_num_threads()


def test_run_parallel_returns_results_in_call_order_in_this_process_with_one_job():
    assert run_parallel(_square_unless_three, [(4,), (2,), (5,)], jobs=1) == [16, 4, 25]


def test_run_parallel_in_worker_processes_keeps_call_order_and_uses_one_torch_thread_each():
    assert run_parallel(_square_unless_three, [(v,) for v in (5, 1, 4, 2)], jobs=2) == [25, 1, 16, 4]
    assert run_parallel(_worker_threads, [(0,), (1,)], jobs=2) == [1, 1]


def test_run_parallel_names_the_failed_call():
    with pytest.raises(UserError, match="value 3 failed: three is refused"):
        run_parallel(_square_unless_three, [(1,), (3,), (2,)], jobs=2, describe=lambda a: f"value {a[0]}")
