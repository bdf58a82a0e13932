"""R2R, NDH and HANNA loaders: real samples, history modes, and bad records reported by index."""

import json

import pytest

from dgm_core.errors import UserError
from prevalent.data import HISTORY_MODES, dialog_text, load_hanna, load_ndh, load_r2r
from prevalent.data.ndh import DialogTurn, trusted_path
from prevalent.env import NavGraphs


def test_real_r2r_gives_one_episode_per_instruction(vln_data):
    raw = json.loads((vln_data / "R2R" / "R2R_train.json").read_text())
    episodes = load_r2r(vln_data / "R2R" / "R2R_train.json")
    assert len(episodes) == sum(len(item["instructions"]) for item in raw)
    first = episodes[0]
    assert first.instr_id == f"{raw[0]['path_id']}_0"
    assert first.start == raw[0]["path"][0] and first.goal == raw[0]["path"][-1]
    assert first.instruction == raw[0]["instructions"][0]


def test_real_r2r_distances_agree_with_the_graph(vln_data):
    graphs = NavGraphs(vln_data / "connectivity")
    for ep in load_r2r(vln_data / "R2R" / "R2R_val_seen.json"):
        graph = graphs[ep.scan]
        assert graph.path_length(ep.path) == pytest.approx(ep.distance, abs=0.01)
        assert graph.path_length(ep.path) == pytest.approx(graph.distance(ep.start, ep.goal))


def test_r2r_test_split_without_path(tmp_path):
    path = tmp_path / "R2R_test.json"
    path.write_text(
        json.dumps([{"scan": "s", "path_id": 7, "path": ["v0"], "heading": 1.0, "instructions": ["go"]}])
    )
    (episode,) = load_r2r(path)
    assert episode.path is None and episode.goal is None and episode.start == "v0"


def test_bad_r2r_records_are_reported_by_index(tmp_path):
    good = {
        "scan": "s",
        "path_id": 1,
        "path": ["a", "b"],
        "heading": 0.0,
        "instructions": ["go"],
        "distance": 1.0,
    }
    records = [good, {**good, "scan": 5}, good, {k: v for k, v in good.items() if k != "heading"}, "junk"]
    path = tmp_path / "r2r.json"
    path.write_text(json.dumps(records))
    with pytest.raises(UserError) as err:
        load_r2r(path)
    message = str(err.value)
    assert "3 bad R2R record(s)" in message
    assert "record 1: field 'scan' has type int" in message
    assert "record 3: missing field 'heading'" in message
    assert "record 4" in message
    path.write_text("{not json")
    with pytest.raises(UserError, match="malformed JSON"):
        load_r2r(path)


def test_real_ndh_loads_in_every_history_mode(vln_data):
    path = vln_data / "NDH" / "val_seen.json"
    raw = json.loads(path.read_text())
    by_mode = {mode: load_ndh(path, history=mode) for mode in HISTORY_MODES}
    for k, item in enumerate(raw):
        assert by_mode["none"][k].instruction == ""
        assert by_mode["target"][k].instruction == f"<TAR> {item['target']}"
        full = by_mode["all"][k]
        assert full.instr_id == str(item["inst_idx"])
        assert full.start == item["start_pano"]["pano"] and full.end_panos == item["end_panos"]
        assert full.path == item["planner_path"]
        assert full.instruction.endswith(f"<TAR> {item['target']}")
        assert full.instruction.count("<NAV>") == sum(
            t["role"] == "navigator" for t in item["dialog_history"]
        )
        if item["dialog_history"]:
            last = item["dialog_history"][-1]["message"]
            assert by_mode["oracle_ans"][k].instruction == f"<ORA> {last} <TAR> {item['target']}"
            assert by_mode["nav_q_oracle_ans"][k].instruction.startswith("<NAV> ")


def test_dialog_text_and_trusted_path():
    turns = [DialogTurn("navigator", "left?"), DialogTurn("oracle", "yes, then stairs")]
    assert dialog_text("mug", turns, "all") == "<NAV> left? <ORA> yes, then stairs <TAR> mug"
    assert dialog_text("mug", [], "oracle_ans") == "<TAR> mug"
    with pytest.raises(ValueError, match="history mode"):
        dialog_text("mug", turns, "everything")
    assert trusted_path(["a", "b", "c"], ["a", "x", "c", "y"]) == ["a", "x", "c", "y"]
    assert trusted_path(["a", "b", "c"], ["a", "x"]) == ["a", "b", "c"]


def test_ndh_player_path_and_bad_dialog_turns(vln_data, tmp_path):
    path = vln_data / "NDH" / "val_seen.json"
    raw = json.loads(path.read_text())
    assert load_ndh(path, path_type="player")[0].path == raw[0]["player_path"]
    broken = [dict(raw[0], dialog_history=[{"role": "robot", "message": "hi"}])]
    bad = tmp_path / "ndh.json"
    bad.write_text(json.dumps(broken))
    with pytest.raises(UserError, match="record 0: dialog turn 0 needs role"):
        load_ndh(bad)


def test_hanna_loader_validates_fields(tmp_path):
    record = {
        "instr_id": "h0",
        "scan": "s",
        "start": "a",
        "heading": 0.5,
        "target": "mug",
        "instruction": "find the mug in the kitchen",
        "goal_viewpoints": ["c", "d"],
        "path": ["a", "b", "c"],
        "help": [{"viewpoint": "a", "instruction": "go ahead", "path": ["a", "b"]}],
    }
    path = tmp_path / "hanna.json"
    path.write_text(json.dumps([record, {**record, "path": ["b", "c"]}, {**record, "goal_viewpoints": []}]))
    with pytest.raises(UserError) as err:
        load_hanna(path)
    assert "record 1: field 'path' must begin at 'start'" in str(err.value)
    assert "record 2: field 'goal_viewpoints'" in str(err.value)
    path.write_text(json.dumps([record]))
    (episode,) = load_hanna(path)
    assert episode.goal_viewpoints == ["c", "d"] and episode.help_at("a").path == ["a", "b"]
    assert episode.help_at("b") is None
