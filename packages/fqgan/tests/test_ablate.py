"""fqgan-ablate on a tiny budget: every (variant, seed) trained and evaluated once, tables written, reuse."""

import json

from fqgan.ablate import main


def test_ablation_writes_mean_std_tables_and_reuses_finished_runs(tmp_path, capsys):
    out = tmp_path / "ablate"
    args = ["--out-dir", str(out), "--tasks", "grid25", "--seeds", "2", "--mixture-steps", "2"]
    assert main([*args, "--variants", "none,loss_only", "--num-samples", "200"]) == 0
    summary = json.loads((out / "results.json").read_text())["summary"]["grid25"]
    assert set(summary) == {"none", "loss_only"}
    for row in summary.values():
        mean, std = row["modes_covered"]
        assert 0 <= mean <= 25 and std >= 0
    table = (out / "results.md").read_text()
    assert "| none |" in table and "| loss_only |" in table and "over 2 seeds" in table
    checkpoint = out / "grid25-none-seed0" / "checkpoints" / "step_000002" / "model.safetensors"
    stamp = checkpoint.stat().st_mtime_ns
    # The raw generators of the same runs: evaluated without training again.
    assert main([*args, "--variants", "none,loss_only", "--num-samples", "200", "--generator", "raw"]) == 0
    assert checkpoint.stat().st_mtime_ns == stamp
    assert (out / "grid25-none-seed1" / "eval_raw.json").is_file() and (out / "results_raw.md").is_file()


def test_unknown_task_is_a_clear_error(tmp_path, capsys):
    assert main(["--out-dir", str(tmp_path), "--tasks", "mnist"]) == 2
    assert "unknown ablation task 'mnist'" in capsys.readouterr().err
