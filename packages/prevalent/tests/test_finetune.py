"""prevalent-finetune: the task registry, one training step of each task, help, errors, resume."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dgm_core.errors import UserError
from prevalent.data.synthetic import make_synthetic_dataset
from prevalent.env import InMemoryFeatureStore, NavGraphs, write_feature_store
from prevalent.finetune import main
from prevalent.metrics import check_trajectory, load_predictions
from prevalent.model.agent import NavigationAgent
from prevalent.model.encoder import EncoderConfig
from prevalent.model.tokenizer import InstructionTokenizer
from prevalent.pretrain import main as pretrain_main
from prevalent.rollout import EpisodeRunner, World, nearest_help, open_world
from prevalent.tasks import TASKS, TaskOptions, get_task

TINY_MODEL = [
    "--hidden-size",
    "16",
    "--num-attention-heads",
    "2",
    "--intermediate-size",
    "32",
    "--text-layers",
    "1",
    "--cross-layers",
    "1",
    "--angle-feature-size",
    "8",
    "--vocab-size",
    "200",
    "--max-text-length",
    "48",
]


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("world")
    return make_synthetic_dataset(
        folder,
        seed=4,
        houses=3,
        unseen_houses=1,
        rows=1,
        cols=3,
        feature_size=8,
        paths_per_house=3,
        val_paths_per_house=3,
        dialogs_per_house=6,
        hanna_per_house=3,
    )


@pytest.fixture(scope="module")
def tiny_bundle(tiny_world, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("pretrain")
    args = [
        "--data",
        str(tiny_world),
        "--run-dir",
        str(run_dir),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--eval-triplets",
        "4",
        "--no-progress",
        "--device",
        "cpu",
        *TINY_MODEL,
    ]
    assert pretrain_main(args) == 0
    return run_dir / "encoder"


def finetune_args(
    world: Path, run_dir: Path, task: str, pretrained: str, steps: int = 1, *extra: str
) -> list[str]:
    return [
        "--task",
        task,
        "--data",
        str(world),
        "--run-dir",
        str(run_dir),
        "--pretrained",
        pretrained,
        "--steps",
        str(steps),
        "--batch-size",
        "3",
        "--log-every",
        "1",
        "--eval-every",
        "100",
        "--max-steps",
        "6",
        "--no-progress",
        "--device",
        "cpu",
        "--render-episodes",
        "2",
        *TINY_MODEL,
        *extra,
    ]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_one_training_step_of_each_task_writes_scorable_predictions(task, tiny_world, tiny_bundle, tmp_path):
    run_dir = tmp_path / task
    assert main(finetune_args(tiny_world, run_dir, task, str(tiny_bundle))) == 0
    record = json.loads((run_dir / "eval.json").read_text())
    assert record["task"] == task and record["split"] == "val_unseen"
    assert "SR" in record["metrics"] and "SR" in record["random_agent"]
    if task == "cvdn":
        assert "goal_progress" in record["metrics"]
    if task == "hanna":
        assert 0 <= record["metrics"]["help_requests"] <= 2
    predictions = load_predictions(run_dir / "predictions_val_unseen.json")
    episodes = get_task(task).load(tiny_world, "val_unseen", TaskOptions())
    assert set(predictions) == {e.instr_id for e in episodes}
    assert list((run_dir / "samples" / "episodes").glob("*.svg"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("action_loss" in r for r in rows)


def test_from_scratch_runs_without_a_bundle(tiny_world, tmp_path):
    assert main(finetune_args(tiny_world, tmp_path / "s", "r2r", "none")) == 0
    assert json.loads((tmp_path / "s" / "eval.json").read_text())["pretrained"] is None
    # The vocabulary learnt inside the run is kept there and reused when the run continues.
    vocabulary = tmp_path / "s" / "tokenizer.json"
    learnt = vocabulary.stat().st_mtime_ns
    assert main(finetune_args(tiny_world, tmp_path / "s", "r2r", "none", 2)) == 0
    assert vocabulary.stat().st_mtime_ns == learnt


def test_unknown_task_lists_the_valid_ones(tmp_path, capsys):
    assert main(["--task", "vizdoom", "--run-dir", str(tmp_path / "x")]) == 2
    assert "valid tasks: r2r, cvdn, hanna" in capsys.readouterr().err
    with pytest.raises(UserError, match="valid tasks"):
        get_task("reverie")


def test_missing_bundle_and_missing_features_are_clear_errors(tiny_world, tmp_path, capsys):
    assert main(finetune_args(tiny_world, tmp_path / "a", "r2r", str(tmp_path / "nope"))) == 2
    assert "no pretrained encoder" in capsys.readouterr().err
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "connectivity").mkdir()
    assert main(["--task", "r2r", "--data", str(bare), "--run-dir", str(tmp_path / "b")]) == 2
    assert "--features" in capsys.readouterr().err


def test_bundle_of_another_feature_size_is_refused(tiny_world, tiny_bundle, tmp_path, capsys):
    other = make_synthetic_dataset(
        tmp_path / "w16",
        seed=5,
        houses=2,
        unseen_houses=1,
        rows=1,
        cols=2,
        feature_size=16,
        paths_per_house=2,
        val_paths_per_house=1,
        dialogs_per_house=1,
        hanna_per_house=1,
    )
    assert main(finetune_args(other, tmp_path / "c", "r2r", str(tiny_bundle))) == 2
    assert "expects 8-d image features" in capsys.readouterr().err


def test_help_requests_stay_within_the_budget_and_change_the_text(tiny_world):
    world = open_world(str(tiny_world), "")
    task = get_task("hanna")
    episodes = task.load(world.data_dir, "train", TaskOptions())
    tokenizer = InstructionTokenizer.train([e.instruction for e in episodes] + ["walk"], vocab_size=200)
    config = EncoderConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_attention_heads=2,
        intermediate_size=32,
        text_layers=1,
        cross_layers=1,
        image_feature_size=8,
        angle_feature_size=8,
        max_text_length=64,
    )
    agent = NavigationAgent(config)
    for budget in (0, 1, 2):
        runner = EpisodeRunner(task, world, tokenizer, 64, 8, 8, budget, torch.device("cpu"))
        torch.manual_seed(0)
        rollout = runner.run(agent, episodes[:4], "sample")
        assert all(0 <= used <= budget for used in rollout.help_used)
        rollout.loss.backward()
    # The helper answers with the recorded sub-instruction nearest to where the agent stands.
    episode = episodes[0]
    graph = world.graphs[episode.scan]
    assert nearest_help(episode, graph, episode.help[-1].viewpoint) is episode.help[-1]


def test_finetune_resume_continues_bit_identically(tiny_world, tiny_bundle, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ("--checkpoint-every", "2", "--render-episodes", "0", "--feedback", "sample")
    assert main(finetune_args(tiny_world, straight, "r2r", str(tiny_bundle), 4, *common)) == 0
    assert main(finetune_args(tiny_world, resumed, "r2r", str(tiny_bundle), 2, *common)) == 0
    assert main(finetune_args(tiny_world, resumed, "r2r", str(tiny_bundle), 4, *common)) == 0
    a = load_file(str(straight / "checkpoints" / "step_000004" / "model.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step_000004" / "model.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _ddp_finetune_step(rank: int, world_size: int, world: str, bundle: str, run_dir: str) -> dict:
    from dgm_core.runtime.distributed import average_gradients, broadcast_parameters

    # The synchronisation keeps ranks identical although each starts from its own seed and rolls
    # out its own episodes ...
    torch.manual_seed(rank)
    world_ = open_world(world, "")
    task = get_task("r2r")
    episodes = task.load(world_.data_dir, "train", TaskOptions())[rank * 3 : rank * 3 + 3]
    tokenizer = InstructionTokenizer.load(Path(bundle) / "tokenizer.json")
    config = EncoderConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_attention_heads=2,
        intermediate_size=32,
        text_layers=1,
        cross_layers=1,
        image_feature_size=8,
        angle_feature_size=8,
        max_text_length=48,
    )
    agent = NavigationAgent(config)
    broadcast_parameters(agent)
    optimizer = torch.optim.SGD(agent.parameters(), lr=0.1)
    runner = EpisodeRunner(task, world_, tokenizer, 48, 8, 6, 0, torch.device("cpu"))
    rollout = runner.run(agent, episodes, "teacher")
    rollout.loss.backward()
    average_gradients(agent)
    optimizer.step()
    result = {"loss": float(rollout.loss), "state": {k: v.clone() for k, v in agent.state_dict().items()}}
    # ... and the CLI runs under two processes (it ends the process group when done, so it goes last).
    assert main(finetune_args(Path(world), Path(run_dir), "r2r", bundle, 1, "--render-episodes", "0")) == 0
    return result


@pytest.mark.slow
def test_two_process_step_keeps_ranks_identical(tiny_world, tiny_bundle, tmp_path):
    from dgm_core.testing import run_distributed

    results = run_distributed(_ddp_finetune_step, 2, str(tiny_world), str(tiny_bundle), str(tmp_path / "ddp"))
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["world_size"] == 2
    rank0, rank1 = results
    assert rank0["loss"] != rank1["loss"]  # different episodes on each rank
    for key in rank0["state"]:
        assert torch.equal(rank0["state"][key], rank1["state"][key]), key


def test_console_script_runs_as_a_subprocess(tmp_path):
    import subprocess
    import sys

    script = Path(sys.executable).with_name("prevalent-finetune")
    if not script.is_file():
        pytest.skip("prevalent-finetune console script not installed")
    result = subprocess.run([script, "--task", "nope"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "valid tasks: r2r, cvdn, hanna" in result.stderr


def test_claim_rejects_unknown_tasks(tmp_path, capsys):
    from prevalent.claim import main as claim_main

    assert claim_main(["--tasks", "r2r,reverie", "--run-dir", str(tmp_path)]) == 2
    assert "valid tasks" in capsys.readouterr().err


def test_claim_table_reports_intervals_and_paired_differences_over_seeds(tmp_path):
    from scipy import stats

    from prevalent.claim import ClaimConfig, _world_folder, run_dir_of
    from prevalent.claim import main as claim_main

    args = ["--tasks", "hanna", "--seeds", "0,1,2", "--run-dir", str(tmp_path), "--table-only"]
    cfg = ClaimConfig(tasks="hanna", seeds="0,1,2", run_dir=str(tmp_path), table_only=True)
    pretrained_sr, scratch_sr = (0.4, 0.2, 0.3), (0.1, 0.1, 0.1)
    for init, values in (("pretrained", pretrained_sr), ("scratch", scratch_sr)):
        for seed, value in enumerate(values):
            run = run_dir_of(cfg, "hanna", init, seed, _world_folder(cfg))
            run.mkdir()
            metrics = {"SR": value, "SPL": value / 2, "help_requests": 1.0}
            random = {"SR": 0.05 * (seed + 1), "SPL": 0.0}
            record = {"metrics": metrics, "random_agent": random, "episodes": 500, "houses": 10}
            (run / "eval.json").write_text(json.dumps(record))
    assert claim_main(args) == 0
    table = (tmp_path / "claim.md").read_text()
    # Student-t intervals over 3 seeds, computed independently here.
    low, high = stats.t.interval(0.95, 2, loc=0.3, scale=0.1 / 3**0.5)
    r_low, r_high = stats.t.interval(0.95, 2, loc=0.1, scale=0.05 / 3**0.5)  # random: 0.05, 0.10, 0.15
    differences = [a - b for a, b in zip(pretrained_sr, scratch_sr)]
    d_low, d_high = stats.t.interval(0.95, 2, loc=0.2, scale=0.1 / 3**0.5)
    p_value = stats.ttest_rel(pretrained_sr, scratch_sr).pvalue
    assert sum(differences) / 3 == pytest.approx(0.2)
    row = (
        f"| hanna | SR | 0.100 [{r_low:.3f}, {r_high:.3f}] | 0.100 [0.100, 0.100] | "
        f"0.300 [{low:.3f}, {high:.3f}] | "
        f"+0.200 [{d_low:+.3f}, {d_high:+.3f}], p = {p_value:.3f}, 3/0/0 (wins/losses/ties) |"
    )
    assert row in table, table
    assert "| hanna | help_requests | — | 1.000 [1.000, 1.000] | 1.000 [1.000, 1.000] |" in table
    assert "hanna 500 in 10 houses" in table
    assert table.startswith("`prevalent-claim --run-dir")
    # Another budget is another run: its results are not taken for these.
    assert run_dir_of(cfg, "hanna", "scratch", 0, _world_folder(cfg)) != run_dir_of(
        dataclasses.replace(cfg, steps=cfg.steps + 1), "hanna", "scratch", 0, _world_folder(cfg)
    )


def test_claim_runs_are_keyed_by_the_bundle_bytes_they_read(tmp_path):
    from prevalent.claim import ClaimConfig, bundle_of, run_dir_of

    cfg = ClaimConfig(run_dir=str(tmp_path), pretrain_steps=7)
    bundle = bundle_of(cfg)
    assert bundle == tmp_path / "pretrain-7steps" / "encoder"
    bundle.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (bundle / name).write_text(name)
    world = tmp_path / "world"
    before = {arm: run_dir_of(cfg, "r2r", arm, 0, world) for arm in ("pretrained", "scratch")}
    (bundle / "model.safetensors").write_text("pretrained again")  # same path, other weights
    after = {arm: run_dir_of(cfg, "r2r", arm, 0, world) for arm in ("pretrained", "scratch")}
    assert after["pretrained"] != before["pretrained"]
    assert after["scratch"] == before["scratch"]  # it reads the tokenizer only
    (bundle / "tokenizer.json").write_text("another vocabulary")
    assert run_dir_of(cfg, "r2r", "scratch", 0, world) != before["scratch"]


@pytest.mark.slow
def test_claim_runs_its_fine_tuning_in_parallel_processes_and_names_a_failed_run(
    tiny_bundle, tmp_path, monkeypatch, capsys
):
    from prevalent.claim import main as claim_main

    monkeypatch.chdir(tmp_path)  # the claim world and the default world are generated here
    small = ["--tasks", "hanna", "--seeds", "0,1", "--steps", "1", "--batch-size", "2"]
    small += ["--eval-episodes", "6", "--jobs", "2", "--device", "cpu"]
    # The tiny world's bundle has another feature size: its runs fail, and the error says which.
    assert claim_main([*small, "--pretrained", str(tiny_bundle), "--run-dir", "wrong"]) == 2
    error = capsys.readouterr().err
    assert "fine-tuning wrong/hanna-pretrained-seed" in error and "feature" in error
    # A bundle pretrained on the default world's training houses fits the claim world.
    bundle = tmp_path / "pretrain"
    pretrain_args = ["--run-dir", str(bundle), "--steps", "1", "--batch-size", "4", "--eval-triplets", "4"]
    assert pretrain_main([*pretrain_args, "--no-progress", "--device", "cpu"]) == 0
    assert claim_main([*small, "--pretrained", str(bundle / "encoder"), "--run-dir", "claim"]) == 0
    runs = sorted(p.parent.name for p in (tmp_path / "claim").glob("*/eval.json"))
    assert [r.rsplit("-", 1)[0] for r in runs] == [
        "hanna-pretrained-seed0",
        "hanna-pretrained-seed1",
        "hanna-scratch-seed0",
        "hanna-scratch-seed1",
    ]
    assert "| hanna | SR |" in (tmp_path / "claim" / "claim.md").read_text()


def test_both_arms_fine_tune_on_the_same_episodes_and_are_scored_on_the_same_sample(
    tiny_world, tiny_bundle, tmp_path, monkeypatch
):
    """The claim's equal supervision: pretrained and scratch differ in the encoder only."""
    seen: dict[str, list[tuple[str, list[str]]]] = {}
    original_run = EpisodeRunner.run

    def recording_run(self, agent, episodes, feedback):
        seen[current].append((feedback, [e.instr_id for e in episodes]))
        return original_run(self, agent, episodes, feedback)

    monkeypatch.setattr(EpisodeRunner, "run", recording_run)
    for current, pretrained, extra in (
        ("pretrained", str(tiny_bundle), []),
        ("scratch", "none", ["--tokenizer", str(tiny_bundle / "tokenizer.json")]),
    ):
        seen[current] = []
        run_dir = tmp_path / current
        args = finetune_args(tiny_world, run_dir, "r2r", pretrained, 3, "--render-episodes", "0")
        assert main([*args, "--eval-episodes", "5", "--seed", "3", *extra]) == 0
        record = json.loads((run_dir / "eval.json").read_text())
        assert record["episodes"] == 5 and record["houses"] == 1
    training = {arm: [ids for feedback, ids in calls if feedback != "argmax"] for arm, calls in seen.items()}
    scored = {arm: [ids for feedback, ids in calls if feedback == "argmax"] for arm, calls in seen.items()}
    assert len(training["pretrained"]) == 3 and training["pretrained"] == training["scratch"]
    assert scored["pretrained"] == scored["scratch"]
    assert (
        sorted(i for ids in scored["scratch"] for i in ids)
        == sorted(set(i for ids in scored["scratch"] for i in ids))
        and sum(len(ids) for ids in scored["scratch"]) == 5
    )


# ------------------------------------------------------------------------------ CVDN dialog histories


def _history_runner(data_dir: Path, tokenizer: InstructionTokenizer, max_text_length: int) -> EpisodeRunner:
    """The runner fine-tuning, evaluation and prediction tokenize CVDN texts with."""
    graphs = NavGraphs(data_dir / "connectivity")
    store = InMemoryFeatureStore({("none", "none"): np.zeros((36, 8), np.float32)})  # no step is taken
    world = World(data_dir, graphs, store, synthetic=False)
    return EpisodeRunner(get_task("cvdn"), world, tokenizer, max_text_length, 8, 20, 0, torch.device("cpu"))


def _kept_pieces(tokenizer: InstructionTokenizer, row: torch.Tensor) -> list[int]:
    ids = [int(i) for i in row if int(i) != tokenizer.pad_id]
    assert ids[0] == tokenizer.cls_id and ids[-1] == tokenizer.sep_id
    return ids[1:-1]


@pytest.mark.integration
def test_real_cvdn_histories_keep_the_target_and_the_latest_turns_when_cut(vln_data):
    task = get_task("cvdn")
    episodes = task.load(vln_data, "val_seen", TaskOptions(history="all"), unsupervised=True)
    texts = [e.instruction for e in episodes]
    tokenizer = InstructionTokenizer.train(texts, vocab_size=400)
    max_length = 32  # the sample's histories are 4 to 68 word pieces long
    batch = _history_runner(vln_data, tokenizer, max_length).tokenize(texts)
    cut = 0
    for episode, row in zip(episodes, batch.input_ids):
        pieces = tokenizer.tokenizer.encode(episode.instruction, add_special_tokens=False).ids
        kept = _kept_pieces(tokenizer, row)
        target = tokenizer.tokenizer.encode(f"<TAR> {episode.source.target}", add_special_tokens=False).ids
        assert kept[-len(target) :] == target  # every history ends with its target
        # The NDH tokenizer's rule: an over-long history loses its first words, so what is kept is
        # the history's last pieces (the latest exchanges, then the target).
        assert kept == pieces[-(max_length - 2) :]
        if len(pieces) > max_length - 2:
            cut += 1
            last_answer = tokenizer.tokenizer.encode(
                episode.source.dialog_history[-1].message, add_special_tokens=False
            ).ids
            assert kept[-len(target) - len(last_answer) : -len(target)] == last_answer
    assert cut >= 3 and batch.truncated == cut


def test_a_long_synthetic_dialog_is_cut_from_its_start_at_the_default_length(tiny_world, tmp_path):
    from prevalent.finetune import FinetuneConfig

    scan = get_task("cvdn").load(tiny_world, "val_unseen", TaskOptions())[0].source
    turns = []
    for k in range(12):
        turns.append(
            {"nav_idx": k, "role": "navigator", "message": f"question number {k} where should i go now"}
        )
        turns.append(
            {"nav_idx": k, "role": "oracle", "message": f"answer number {k} walk past the blue sofa"}
        )
    turns[-1]["message"] = "turn left at the fridge and stop by the sink"
    record = {
        "inst_idx": 7,
        "scan": scan.scan,
        "target": "mug",
        "start_pano": {"heading": 0.0, "elevation": 0.0, "pano": scan.start},
        "dialog_history": turns,
        "nav_history": [],
    }
    data = tmp_path / "data"
    (data / "NDH").mkdir(parents=True)
    (data / "NDH" / "long.json").write_text(json.dumps([record]))
    (data / "connectivity").symlink_to(tiny_world / "connectivity")
    episode = get_task("cvdn").load(data, "long", TaskOptions(history="all"), unsupervised=True)[0]
    tokenizer = InstructionTokenizer.train([episode.instruction], vocab_size=200)
    default_length = FinetuneConfig.max_text_length
    batch = _history_runner(data, tokenizer, default_length).tokenize([episode.instruction])
    assert batch.truncated == 1
    kept = tokenizer.decode(_kept_pieces(tokenizer, batch.input_ids[0]))
    assert kept.endswith("< ora > turn left at the fridge and stop by the sink < tar > mug")
    assert "question number 0 " not in kept and "question number 11 " in kept


# ------------------------------------------------------------------------------ leaderboard test splits


def _world_with_a_test_split(tiny_world: Path, folder: Path) -> Path:
    """A copy of the world whose R2R and NDH test splits are val_unseen stripped of paths and goals,
    as the leaderboard's test files are."""
    shutil.copytree(tiny_world, folder)
    r2r = json.loads((folder / "R2R" / "R2R_val_unseen.json").read_text())
    for item in r2r:
        item["path"] = item["path"][:1]  # the test split gives only the start
        del item["distance"]
    (folder / "R2R" / "R2R_test.json").write_text(json.dumps(r2r))
    ndh = json.loads((folder / "NDH" / "val_unseen.json").read_text())
    training_only = ("game_idx", "end_panos", "planner_path", "player_path")
    ndh = [{k: v for k, v in item.items() if k not in training_only} for item in ndh]
    (folder / "NDH" / "test.json").write_text(json.dumps(ndh))
    return folder


@pytest.mark.parametrize("task", ["r2r", "cvdn"])
def test_a_test_split_is_predicted_in_the_submission_format(task, tiny_world, tiny_bundle, tmp_path, capsys):
    world = _world_with_a_test_split(tiny_world, tmp_path / "world")
    test_records = get_task(task).read(get_task(task).split_file(world, "test"), TaskOptions())
    assert test_records and all(r.path is None for r in test_records)  # nothing to supervise or score
    run_dir = tmp_path / "run"
    args = finetune_args(world, run_dir, task, str(tiny_bundle), 1, "--predict-splits", "test")
    assert main([*args, "--render-episodes", "0"]) == 0

    submission = json.loads((run_dir / "predictions_test.json").read_text())
    predictions = load_predictions(run_dir / "predictions_test.json")  # this package's own loader
    assert set(predictions) == {r.instr_id for r in test_records} and len(submission) == len(test_records)
    graphs = NavGraphs(world / "connectivity")
    for record in test_records:
        trajectory = predictions[record.instr_id]
        assert all(len(step) == 3 for step in trajectory)  # [viewpoint, heading, elevation]
        check_trajectory(graphs[record.scan], record.instr_id, trajectory, record.start)  # legal moves
    if task == "cvdn":  # CVDN's evaluator reads the instance index
        assert all(entry["inst_idx"] == int(entry["instr_id"]) for entry in submission)
    assert (run_dir / "predictions_val_unseen.json").is_file()

    # A finished run asked again only predicts: it resumes at its last step and trains no further.
    before = (run_dir / "metrics.jsonl").read_text().count('"action_loss"')
    (run_dir / "predictions_test.json").unlink()
    assert main([*args, "--render-episodes", "0"]) == 0
    assert load_predictions(run_dir / "predictions_test.json") == predictions
    assert (run_dir / "metrics.jsonl").read_text().count('"action_loss"') == before

    # A split without goals cannot be trained or scored on; the error says what to do instead.
    capsys.readouterr()
    assert (
        main(finetune_args(world, tmp_path / "bad", task, str(tiny_bundle), 1, "--eval-split", "test")) == 2
    )
    assert "--predict-splits" in capsys.readouterr().err


def test_features_missing_for_a_reachable_viewpoint_are_refused_before_training(
    tiny_world, tiny_bundle, tmp_path, capsys
):
    world = open_world(str(tiny_world), "")
    episodes = get_task("r2r").load(tiny_world, "val_unseen", TaskOptions())
    scan = episodes[0].scan
    on_paths = {vp for e in episodes if e.scan == scan for vp in e.path}
    # Off every reference path, yet an agent may walk there.
    lacking = next(vp for vp in world.graphs[scan].viewpoints if vp not in on_paths)
    items = [
        (s, vp, world.features[s, vp])
        for s in world.graphs.available_scans()
        for vp in world.graphs[s].viewpoints
        if (s, vp) != (scan, lacking)
    ]
    store = write_feature_store(tmp_path / "partial", items, dtype="float32")
    run_dir = tmp_path / "run"
    args = finetune_args(tiny_world, run_dir, "r2r", str(tiny_bundle), 1, "--features", str(store))
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"scan {scan} viewpoint(s) {lacking}" in error
    assert "lacks features" in error and not (run_dir / "checkpoints").exists()


def test_grad_accum_rolls_out_micro_batches_of_the_batch_size(tiny_world, tiny_bundle, tmp_path, monkeypatch):
    rollouts: list[tuple[str, int]] = []
    original_run = EpisodeRunner.run

    def recording_run(self, agent, episodes, feedback):
        rollouts.append((feedback, len(episodes)))
        return original_run(self, agent, episodes, feedback)

    monkeypatch.setattr(EpisodeRunner, "run", recording_run)
    run_dir = tmp_path / "accum"
    args = finetune_args(
        tiny_world, run_dir, "r2r", str(tiny_bundle), 2, "--grad-accum", "2", "--render-episodes", "0"
    )
    assert main(args) == 0
    training = [size for feedback, size in rollouts if feedback != "argmax"]
    assert training == [3, 3, 3, 3]  # 2 steps x 2 micro-batches of --batch-size 3
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum("action_loss" in r for r in rows) == 2  # one record per optimizer step
