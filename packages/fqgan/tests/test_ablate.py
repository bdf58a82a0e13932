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
    # Two runs at a time, each in its own process: the parallel path end to end.
    args = ["--out-dir", str(out), "--tasks", "grid25", "--seeds", "2", "--mixture-steps", "2", "--jobs", "2"]
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
    # The FQ runs' dictionary usage, read from their metrics.jsonl (block0..2 of the MLP D).
    assert all("dictionary" not in e for e in per_seed["none"])
    for evaluation in per_seed["loss_only"]:
        assert set(evaluation["dictionary"]) == {"block0", "block1", "block2"}
    usage = summary["dictionary"]["grid25"]["loss_only"]["block1"]["dead_codes"]
    assert usage["values"] == [e["dictionary"]["block1"]["dead_codes"] for e in per_seed["loss_only"]]
    assert "*grid25: dictionary usage" in table and "| loss_only | block2 |" in table
    checkpoint = _only(out.glob("grid25-none-seed0-*/checkpoints/step_000002/model.safetensors"))
    stamp = checkpoint.stat().st_mtime_ns
    # The raw generators of the same runs: evaluated without training again.
    assert main([*args, "--variants", "none,loss_only", "--num-samples", "200", "--generator", "raw"]) == 0
    assert checkpoint.stat().st_mtime_ns == stamp
    assert _only(out.glob("grid25-none-seed1-*/eval-raw-*.json")).is_file()
    assert (out / "results_raw.md").is_file()


def test_a_changed_option_is_run_again_and_the_same_options_are_reused(tmp_path, monkeypatch):
    out = tmp_path / "ablate"
    # In this process (--jobs 1): worker processes would not see the monkeypatched task options.
    base = ["--out-dir", str(out), "--tasks", "grid25", "--seeds", "1", "--variants", "none", "--jobs", "1"]

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


def _usage(perplexity0, dead0, perplexity1, dead1):
    return {
        "block0": {"perplexity": perplexity0, "dead_codes": dead0},
        "block1": {"perplexity": perplexity1, "dead_codes": dead1},
    }


def test_dictionary_usage_is_summarised_with_t_intervals_and_tabled_per_layer():
    import pytest
    from scipy import stats

    from fqgan.ablate import markdown_table, summarise

    def run(metric, dictionary=None):
        result = {"modes_covered": metric, "high_quality": metric / 2, "mode_kl": 1 - metric}
        return result if dictionary is None else {**result, "dictionary": dictionary}

    loss_only = [(11.0, 40.0, 5.0, 200.0), (13.5, 35.0, 6.5, 190.0), (12.0, 51.0, 4.0, 230.0)]
    results = {
        "grid25": {
            "none": [run(0.5), run(0.6), run(0.4)],  # the baseline has no dictionary
            "loss_only": [run(0.7, _usage(*u)) for u in loss_only],
            # One evaluation cached before dictionary usage was recorded: no usage for this variant.
            "quantize": [run(0.6, _usage(*loss_only[0])), run(0.5), run(0.7, _usage(*loss_only[2]))],
        },
        "ring8": {"none": [run(0.5), run(0.6)], "loss_only": [run(0.7), run(0.8)]},  # no usage at all
    }
    summary = summarise(results)
    assert set(summary["dictionary"]) == {"grid25"}
    assert set(summary["dictionary"]["grid25"]) == {"loss_only"}
    usage = summary["dictionary"]["grid25"]["loss_only"]
    assert list(usage) == ["block0", "block1"]
    for layer, first in (("block0", 0), ("block1", 2)):
        for stat, column in (("perplexity", first), ("dead_codes", first + 1)):
            values = [u[column] for u in loss_only]
            entry = usage[layer][stat]
            assert entry["values"] == values
            mean = sum(values) / len(values)
            low, high = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=stats.sem(values))
            assert entry["mean"] == pytest.approx(mean)
            assert (entry["low"], entry["high"]) == (pytest.approx(low), pytest.approx(high))
    # The other summaries are unchanged by the extra field.
    assert summary["variants"]["grid25"]["quantize"]["modes_covered"]["values"] == [0.6, 0.5, 0.7]

    table = markdown_table(summary, seeds=3)
    assert table.count("dictionary usage at the last logged training step") == 1  # grid25 only
    assert "*grid25: dictionary usage" in table and "over 3 seeds*" in table
    assert "| FQ | layer | perplexity | dead codes |" in table
    block0 = usage["block0"]
    perplexity = f"{block0['perplexity']['mean']:.3f} [{block0['perplexity']['low']:.3f}, "
    assert f"| loss_only | block0 | {perplexity}" in table
    assert "| loss_only | block1 |" in table
    assert "| quantize | block0 |" not in table and "| none | block0 |" not in table


def test_summary_without_any_dictionary_usage_has_no_usage_table():
    from fqgan.ablate import markdown_table, summarise

    runs = [{"modes_covered": v, "high_quality": v, "mode_kl": v} for v in (0.1, 0.2)]
    summary = summarise({"grid25": {"none": runs, "quantize": runs}})
    assert summary["dictionary"] == {}
    assert "dictionary usage" not in markdown_table(summary, seeds=2)
    # A summary written before the field existed still tables.
    legacy = {k: v for k, v in summary.items() if k != "dictionary"}
    assert markdown_table(legacy, seeds=2) == markdown_table(summary, seeds=2)


def test_dictionary_usage_takes_each_key_from_the_last_record_that_holds_it(tmp_path):
    from fqgan.ablate import _with_dictionary, dictionary_usage

    # As dgm_core's RunLogger writes it: one {"step": ..., **metrics} object per line, values floats.
    records = [
        {"step": 20, "d_loss": 1.5, "fq/perplexity_block0": 3.0, "fq/dead_codes_block0": 250.0,
         "fq/perplexity_block2": 9.0, "fq/dead_codes_block2": 100.0},
        {"step": 40, "d_loss": 1.4, "fq/perplexity_block0": 4.5, "fq/dead_codes_block0": 240.0,
         "fq/perplexity_block2": 11.0},
        {"step": 40, "factor_fd": 123.0},  # a record without any dictionary key
        {"step": 60, "d_loss": 1.3, "fq/dead_codes_block0": 230.0, "fq_loss_d": 0.2},
    ]  # fmt: skip
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 80, "fq/perpl')  # torn line
    assert dictionary_usage(path) == {
        "block0": {"perplexity": 4.5, "dead_codes": 230.0},
        "block2": {"perplexity": 11.0, "dead_codes": 100.0},
    }
    assert dictionary_usage(tmp_path / "missing.jsonl") == {}
    # Only FQ variants get the field, and only when the run logged usage.
    assert _with_dictionary({"x": 1}, "quantize", tmp_path)["dictionary"]["block2"]["perplexity"] == 11.0
    assert "dictionary" not in _with_dictionary({"x": 1}, "none", tmp_path)
    assert "dictionary" not in _with_dictionary({"x": 1}, "loss_only", tmp_path / "elsewhere")


def test_shapes_limited_is_shapes_with_a_tenth_of_the_images():
    import dataclasses

    from fqgan.ablate import AblateConfig, train_config_for
    from fqgan.train import TrainConfig

    cfg = AblateConfig(shapes_steps=7, mixture_steps=11)
    limited = dataclasses.asdict(train_config_for(cfg, "shapes_limited", "none", 0))
    shapes = dataclasses.asdict(train_config_for(cfg, "shapes", "none", 0))
    assert limited["data"] == "shapes" and limited["steps"] == 7
    assert limited["num_images"] == TrainConfig().num_images // 10
    assert {k for k in shapes if shapes[k] != limited[k]} == {"num_images"}
    assert train_config_for(cfg, "grid25", "none", 0).data == "grid25"
    # The shapes miniature is 16×16 with a dictionary after each of its D's three blocks.
    assert shapes["resolution"] == 16 and shapes["fq_layers"] == "0,1,2"
