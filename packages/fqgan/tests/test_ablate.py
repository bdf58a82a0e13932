"""fqgan-ablate on a tiny budget: every (variant, seed) trained and evaluated once, tables written, reuse."""

import json

from fqgan import ablate as ablate_module
from fqgan.ablate import main


def _only(paths):
    paths = list(paths)
    assert len(paths) == 1, paths
    return paths[0]


def test_ablation_writes_interval_and_paired_tables_and_reuses_finished_runs(tmp_path, capsys):
    from dgm_core.claims import mean_interval, paired_difference

    out = tmp_path / "ablate"
    args = ["--out-dir", str(out), "--tasks", "grid25", "--seeds", "2", "--mixture-steps", "2"]
    assert main([*args, "--variants", "none,loss_only", "--num-samples", "200"]) == 0
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert set(summary["variants"]["grid25"]) == {"none", "loss_only"}
    # The summary is the per-seed evaluations, summarised: read them back and recompute.
    per_seed = {
        variant: [
            json.loads(_only(out.glob(f"grid25-{variant}-seed{seed}-*/eval-ema-*.json")).read_text())
            for seed in range(2)
        ]
        for variant in ("none", "loss_only")
    }
    for variant, evaluations in per_seed.items():
        entry = summary["variants"]["grid25"][variant]["high_quality"]
        values = [e["high_quality"] for e in evaluations]
        assert entry["values"] == values
        interval = mean_interval(values)
        assert (entry["mean"], entry["low"], entry["high"]) == (interval.mean, interval.low, interval.high)
    paired = summary["paired"]["grid25"]["loss_only"]["high_quality"]
    expected = paired_difference(*([e["high_quality"] for e in per_seed[v]] for v in ("loss_only", "none")))
    assert paired["difference"] == expected.difference.mean and paired["wins"] == expected.wins
    table = (out / "results.md").read_text()
    assert "| none |" in table and "| loss_only |" in table and "over 2 seeds" in table
    assert "paired by seed: variant − none" in table
    checkpoint = _only(out.glob("grid25-none-seed0-*/checkpoints/step_000002/model.safetensors"))
    stamp = checkpoint.stat().st_mtime_ns
    # The raw generators of the same runs: evaluated without training again.
    assert main([*args, "--variants", "none,loss_only", "--num-samples", "200", "--generator", "raw"]) == 0
    assert checkpoint.stat().st_mtime_ns == stamp
    assert _only(out.glob("grid25-none-seed1-*/eval-raw-*.json")).is_file()
    assert (out / "results_raw.md").is_file()


def test_a_changed_option_is_run_again_and_the_same_options_are_reused(tmp_path, monkeypatch):
    out = tmp_path / "ablate"
    base = ["--out-dir", str(out), "--tasks", "grid25", "--seeds", "1", "--variants", "none"]

    def ablate(*extra):
        assert main([*base, *extra]) == 0
        return json.loads((out / "results.json").read_text())

    def evaluations():
        return {p: p.stat().st_mtime_ns for p in out.glob("*/eval-*.json")}

    def checkpoints():
        return {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoints/step_*/model.safetensors")}

    ablate("--mixture-steps", "2", "--num-samples", "200")
    first_checkpoints, first_evaluations = checkpoints(), evaluations()
    assert len(first_checkpoints) == 1 and len(first_evaluations) == 1
    # Same options: nothing is trained or evaluated again.
    ablate("--mixture-steps", "2", "--num-samples", "200")
    assert checkpoints() == first_checkpoints and evaluations() == first_evaluations
    # A changed training option trains a new run; its numbers are that run's (step 3), not the old ones.
    ablate("--mixture-steps", "3", "--num-samples", "200")
    assert len(checkpoints()) == 2
    new_eval = _only(set(evaluations()) - set(first_evaluations))
    assert json.loads(new_eval.read_text())["step"] == 3
    # A changed evaluation option evaluates the trained run again, without retraining it.
    ablate("--mixture-steps", "2", "--num-samples", "300")
    assert {p: t for p, t in checkpoints().items() if p in first_checkpoints} == first_checkpoints
    assert len(checkpoints()) == 2 and len(evaluations()) == 3
    newest = max(evaluations(), key=lambda p: p.stat().st_mtime_ns)
    assert json.loads(newest.read_text())["num_samples"] == 300
    # Any option of the complete train config counts, also one the ablation CLI does not expose.
    changed = {**ablate_module.TASK_OPTIONS["grid25"], "lr_d": 5e-4}
    monkeypatch.setitem(ablate_module.TASK_OPTIONS, "grid25", changed)
    ablate("--mixture-steps", "2", "--num-samples", "200")
    assert len(checkpoints()) == 3


def test_unknown_task_is_a_clear_error(tmp_path, capsys):
    assert main(["--out-dir", str(tmp_path), "--tasks", "mnist"]) == 2
    assert "unknown ablation task 'mnist'" in capsys.readouterr().err


def test_zero_seeds_is_a_clear_error(tmp_path, capsys):
    assert main(["--out-dir", str(tmp_path), "--seeds", "0"]) == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err
