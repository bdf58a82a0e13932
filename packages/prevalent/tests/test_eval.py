"""Metrics on a hand-made graph with hand-computed answers, bad predictions, and prevalent-eval."""

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from dgm_core.errors import UserError
from prevalent.data import load_ndh, load_r2r, make_synthetic_dataset
from prevalent.data.hanna import HannaEpisode
from prevalent.data.r2r import R2REpisode
from prevalent.env import NavGraph, NavGraphs
from prevalent.evaluate import main
from prevalent.metrics import (
    cls,
    dtw,
    goal_progress,
    ndtw,
    path_metrics,
    predictions_from_list,
    region_metrics,
)
from prevalent.rollout import baseline_predictions
from prevalent.tasks import TaskOptions, get_task


def _line_graph() -> NavGraph:
    # A —3— B —3— C —3— D along x; E 4 m off B; F 2 m off D
    positions = {
        "A": (0, 0, 0),
        "B": (3, 0, 0),
        "C": (6, 0, 0),
        "D": (9, 0, 0),
        "E": (3, 4, 0),
        "F": (9, 2, 0),
    }
    edges = [("A", "B"), ("B", "C"), ("C", "D"), ("B", "E"), ("D", "F")]
    return NavGraph.from_edges("line", positions, edges)


def _graphs() -> NavGraphs:
    graphs = NavGraphs()
    graphs.add(_line_graph())
    return graphs


REFERENCE = ["A", "B", "C", "D"]


def test_short_path_stopping_exactly_three_metres_away_fails():
    m = path_metrics(_line_graph(), ["A", "B", "C"], REFERENCE)
    assert m["TL"] == pytest.approx(6) and m["NE"] == pytest.approx(3)
    assert m["SR"] == 0 and m["OSR"] == 0 and m["SPL"] == 0  # success needs NE < 3
    assert m["nDTW"] == pytest.approx(math.exp(-3 / 12))  # D aligned to C costs 3
    coverage = (3 + math.exp(-1)) / 4
    expected = coverage * 9
    assert m["CLS"] == pytest.approx(coverage * expected / (expected + abs(expected - 6)))


def test_detour_succeeds_with_spl_and_dtw_penalised():
    path = ["A", "A", "B", "E", "B", "C", "D"]  # the repeated A (turning in place) is collapsed
    m = path_metrics(_line_graph(), path, REFERENCE)
    assert m["TL"] == pytest.approx(17) and m["NE"] == 0 and m["SR"] == 1 and m["OSR"] == 1
    assert m["SPL"] == pytest.approx(9 / 17)
    assert dtw(_line_graph(), ["A", "B", "E", "B", "C", "D"], REFERENCE) == pytest.approx(4)
    assert m["nDTW"] == pytest.approx(math.exp(-4 / 12)) and m["SDTW"] == pytest.approx(m["nDTW"])
    assert m["CLS"] == pytest.approx(9 / 17)  # full coverage, length score 9 / (9 + 8)


def test_perfect_path_scores_one_everywhere():
    m = path_metrics(_line_graph(), REFERENCE, REFERENCE)
    assert m == pytest.approx({"TL": 9, "NE": 0, "SR": 1, "OSR": 1, "SPL": 1, "nDTW": 1, "SDTW": 1, "CLS": 1})
    assert (
        ndtw(_line_graph(), REFERENCE, REFERENCE) == 1.0 and cls(_line_graph(), REFERENCE, REFERENCE) == 1.0
    )


def test_oracle_success_counts_passing_near_the_goal():
    m = path_metrics(_line_graph(), ["A", "B", "C", "D", "C", "B"], REFERENCE)
    assert m["SR"] == 0 and m["OSR"] == 1


def test_goal_progress_and_hanna_two_metre_success():
    graph = _line_graph()
    assert goal_progress(graph, ["A", "B", "C"], ["D", "F"]) == pytest.approx(6)
    assert goal_progress(graph, ["B", "E"], ["D"]) == pytest.approx(-4)
    m = region_metrics(graph, ["A", "B", "C", "D"], ["F"], success_radius=2.0)
    assert m["NE"] == pytest.approx(2) and m["SR"] == 1  # within 2 m counts
    assert m["SPL"] == pytest.approx(11 / 11) and m["TL"] == pytest.approx(9)
    m = region_metrics(graph, ["A", "B", "C"], ["D", "F"], success_radius=2.0)
    assert m["SR"] == 0 and m["NE"] == pytest.approx(3)


def _episodes():
    return [
        R2REpisode("1_0", 1, "line", "A", 0.0, "go", ["A", "B", "C", "D"], 9.0),
        R2REpisode("2_0", 2, "line", "B", 0.0, "go", ["B", "E"], 4.0),
    ]


def test_missing_predictions_count_as_failures_and_unknown_ids_are_reported():
    predictions = {"1_0": [["A", 0, 0], ["B", 0, 0], ["C", 0, 0], ["D", 0, 0]], "9_9": [["A", 0, 0]]}
    report = get_task("r2r").evaluate(_episodes(), _graphs(), predictions)
    assert report.missing == ["2_0"] and report.unknown == ["9_9"]
    assert report.metrics["SR"] == pytest.approx(0.5) and report.metrics["SPL"] == pytest.approx(0.5)
    assert report.metrics["NE"] == pytest.approx(2.0)  # (0 + 4) / 2: the missing one never moved
    assert "missing predictions: 1" in report.table()


@pytest.mark.parametrize(
    ("trajectory", "message"),
    [
        ([["A", 0, 0], ["C", 0, 0]], "jumps from A to C"),
        ([["A", 0, 0], ["Q", 0, 0]], "viewpoint Q is not in scan line"),
        ([["B", 0, 0], ["C", 0, 0]], "starts at B"),
    ],
)
def test_bad_trajectories_are_clear_errors(trajectory, message):
    with pytest.raises(UserError, match=message):
        get_task("r2r").evaluate(_episodes()[:1], _graphs(), {"1_0": trajectory})


def test_duplicate_and_malformed_predictions_are_rejected():
    item = {"instr_id": "1_0", "trajectory": [["A", 0, 0]]}
    with pytest.raises(UserError, match="1 duplicate instr_id"):
        predictions_from_list([item, item])
    with pytest.raises(UserError, match="needs 'instr_id' and 'trajectory'"):
        predictions_from_list([{"instr_id": "x"}])
    with pytest.raises(UserError, match="empty or non-list"):
        predictions_from_list([{"instr_id": "x", "trajectory": []}])


def test_hanna_episodes_score_against_the_nearest_goal():
    episode = HannaEpisode("h", "line", "A", 0.0, "mug", "find the mug", ["F", "E"])
    report = get_task("hanna").evaluate([episode], _graphs(), {"h": [["A", 0, 0], ["B", 0, 0], ["E", 0, 0]]})
    assert report.metrics["SR"] == 1 and report.metrics["SPL"] == pytest.approx(1.0)


def test_each_task_judges_success_with_its_own_radius():
    walk = [["A", 0, 0], ["B", 0, 0], ["C", 0, 0], ["D", 0, 0]]
    # D is 2 m from the HANNA goal F: found, as HANNA counts anything within 2 m ...
    hanna = get_task("hanna")
    episode = HannaEpisode("h", "line", "A", 0.0, "mug", "find the mug", ["F"])
    assert hanna.success_radius == 2.0
    assert hanna.evaluate([episode], _graphs(), {"h": walk}).metrics["SR"] == 1
    assert replace(hanna, success_radius=1.5).evaluate([episode], _graphs(), {"h": walk}).metrics["SR"] == 0
    # ... while stopping at C, 3 m short of the R2R goal D, fails R2R's NE < 3 m
    r2r = get_task("r2r")
    short = {"1_0": walk[:3]}
    assert r2r.success_radius == 3.0
    assert r2r.evaluate(_episodes()[:1], _graphs(), short).metrics["SR"] == 0
    assert replace(r2r, success_radius=3.5).evaluate(_episodes()[:1], _graphs(), short).metrics["SR"] == 1


def test_shortest_path_agent_is_perfect_on_real_r2r(vln_data):
    graphs = NavGraphs(vln_data / "connectivity")
    for split in ("R2R_train.json", "R2R_val_seen.json"):
        episodes = load_r2r(vln_data / "R2R" / split)
        predictions = predictions_from_list(baseline_predictions("shortest", episodes, graphs))
        report = get_task("r2r").evaluate(episodes, graphs, predictions)
        assert report.metrics["SR"] == 1.0 and report.metrics["SPL"] == pytest.approx(1.0)
        assert report.metrics["NE"] == 0.0 and report.metrics["nDTW"] == pytest.approx(1.0)
        assert not report.missing


def test_real_cvdn_goal_progress_of_walking_the_planner_path(vln_data):
    graphs = NavGraphs(vln_data / "connectivity")
    episodes = load_ndh(vln_data / "NDH" / "val_seen.json")
    predictions = {ep.instr_id: [[vp, 0, 0] for vp in ep.planner_path] for ep in episodes}
    report = get_task("cvdn").evaluate(episodes, graphs, predictions)
    expected = [goal_progress(graphs[ep.scan], ep.planner_path, ep.end_panos) for ep in episodes]
    assert report.metrics["goal_progress"] == pytest.approx(sum(expected) / len(expected))
    assert report.metrics["goal_progress"] > 0


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    sizes = dict(paths_per_house=4, val_paths_per_house=3, dialogs_per_house=3, hanna_per_house=3)
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("eval") / "d", seed=1, houses=3, unseen_houses=1, **sizes
    )


@pytest.mark.parametrize("task", ["r2r", "cvdn", "hanna"])
def test_cli_scores_a_predictions_file_and_writes_json(tmp_path, small_dataset, task, capsys):
    files = {"r2r": "R2R/R2R_val_seen.json", "cvdn": "NDH/val_seen.json", "hanna": "HANNA/val_seen.json"}
    data = small_dataset / files[task]
    common = ["--task", task, "--data", str(data), "--connectivity", str(small_dataset / "connectivity")]
    out = tmp_path / "baseline.json"
    assert main([*common, "--baseline", "shortest", "--output", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["metrics"]["SR"] == 1.0 and payload["num_missing"] == 0
    # write the shortest-path agent's trajectories as a real submission file and score it
    predictions = baseline_predictions(
        "shortest", get_task(task).read(data, TaskOptions()), NavGraphs(small_dataset / "connectivity")
    )
    submission = tmp_path / "submission.json"
    submission.write_text(json.dumps(predictions[:-1]))  # one episode left out
    assert main([*common, "--predictions", str(submission), "--maps", "1"]) == 0
    printed = capsys.readouterr().out
    assert "missing predictions: 1" in printed and "SR" in printed
    result = json.loads((tmp_path / "submission.eval.json").read_text())
    assert result["num_missing"] == 1 and result["metrics"]["SR"] < 1.0
    assert list((tmp_path / "maps").glob("*.svg"))


def test_cli_bad_input_is_one_line_exit_2(tmp_path, small_dataset, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    args = [
        "--data",
        str(small_dataset / "R2R/R2R_val_seen.json"),
        "--connectivity",
        str(small_dataset / "connectivity"),
    ]
    assert main([*args, "--predictions", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prevalent-eval: error:") and "malformed JSON" in err and "Traceback" not in err
    assert main(["--task", "vln"]) == 2


@pytest.mark.slow
def test_console_scripts_run_as_subprocesses(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    bindir = Path(sys.executable).parent
    make = subprocess.run(
        [
            str(bindir / "prevalent-make-data"),
            "--houses",
            "3",
            "--unseen-houses",
            "1",
            "--paths-per-house",
            "3",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert make.returncode == 0, make.stderr
    assert (tmp_path / "runs" / "prevalent-synthetic" / "seed0" / "dataset.json").is_file()
    ev = subprocess.run(
        [str(bindir / "prevalent-eval")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert ev.returncode == 0, ev.stderr
    assert "SPL" in ev.stdout and (tmp_path / "runs" / "eval-r2r-random" / "eval.json").is_file()
