"""The four CLIs in-process on a smoke-sized run: train → eval / generate / classify; resume; bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dgm_core.runtime.logging import read_metrics
from optimus import classify, evaluate, generate, train
from optimus.vae import OptimusVAE

SMOKE = ["--preset", "smoke", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("optimus-run")
    assert train.main([*SMOKE, "--run-dir", str(run_dir), "--steps", "30", "--eval-every", "15"]) == 0
    return run_dir


def test_training_writes_model_metrics_samples_and_eval(trained_run):
    model_dir = trained_run / "model"
    assert {"config.json", "model.safetensors", "encoder_tokenizer", "decoder_tokenizer"} <= {
        p.name for p in model_dir.iterdir()
    }
    metrics = [m for m in read_metrics(trained_run / "metrics.jsonl") if "loss" in m]
    assert [m["step"] for m in metrics] == [10, 20, 30]
    assert metrics[-1]["reconstruction"] < metrics[0]["reconstruction"]  # it learns
    assert {"kl", "beta", "au_batch", "token_nll"} <= set(metrics[0])
    samples = [
        json.loads(line) for line in (trained_run / "samples" / "step_000015.jsonl").read_text().splitlines()
    ]
    assert {s["kind"] for s in samples} == {"reconstruction", "prior_sample"}
    assert json.loads((trained_run / "eval.json").read_text())["num_sentences"] == 32
    # The run's one-time preparation: its tokenizers and one token cache, both reused on resume.
    assert (trained_run / "tokenizers" / "decoder_tokenizer").is_dir()
    assert (trained_run / "token_cache" / "meta.json").is_file()


def test_eval_writes_json_with_ppl_and_latent_metrics(trained_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    args = ["--model", str(trained_run), "--num-sentences", "20", "--iw-samples", "5", "--output", str(out)]
    assert evaluate.main(args) == 0
    result = json.loads(out.read_text())
    assert result["num_sentences"] == 20 and result["num_tokens"] > 20
    assert 1 < result["ppl"] < 1000  # 400-token vocabulary
    assert result["neg_elbo"] == pytest.approx(result["reconstruction"] + result["kl"])
    assert result["nll"] <= result["neg_elbo"] + 1.0  # the IW bound is no looser than the ELBO (up to noise)
    assert 0 <= result["au"] <= result["latent_size"]
    assert "PPL" in capsys.readouterr().out


def test_eval_honours_precision(trained_run, tmp_path, capsys):
    args = ["--model", str(trained_run), "--num-sentences", "20", "--iw-samples", "5", "--device", "cpu"]
    results = []
    for precision in ("fp32", "fp32", "bf16"):
        out = tmp_path / f"eval-{len(results)}.json"
        assert evaluate.main([*args, "--precision", precision, "--output", str(out)]) == 0
        results.append(json.loads(out.read_text()))
    fp32, fp32_again, bf16 = results
    assert bf16["precision"] == "bf16"
    # Same seed, same posterior samples: fp32 repeats itself exactly, so only bf16 arithmetic in the
    # forward passes can move the numbers — visibly, but not far (the sums stay float32).
    assert fp32_again == fp32
    assert bf16["reconstruction"] != fp32["reconstruction"] and bf16["kl"] != fp32["kl"]
    for key in ("nll", "neg_elbo", "reconstruction", "kl"):
        assert bf16[key] == pytest.approx(fp32[key], rel=0.05, abs=0.05), key
    assert bf16["num_tokens"] == fp32["num_tokens"]
    capsys.readouterr()
    assert evaluate.main([*args, "--precision", "fp16"]) == 2  # fp16 needs CUDA: refused, not ignored
    assert "fp16 needs a CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,key",
    [
        (["--mode", "prior", "--num", "3"], "sentences"),
        (["--mode", "reconstruct", "--sentences", "the chef cooked the soup ."], "pairs"),
        (["--mode", "reconstruct", "--precision", "bf16"], "pairs"),
        (["--mode", "interpolate", "--steps", "4"], "path"),
        (["--mode", "analogy"], "d"),
        (["--mode", "guided", "--attribute", "topic", "--value", "music", "--num", "4"], "accuracy"),
        (
            [
                "--mode",
                "prior",
                "--strategy",
                "sample",
                "--top-p",
                "0.9",
                "--temperature",
                "0.8",
                "--num",
                "2",
            ],
            "sentences",
        ),
    ],
)
def test_generate_modes(trained_run, tmp_path, args, key):
    out = tmp_path / "gen.json"
    assert (
        generate.main(["--model", str(trained_run), *args, "--max-length", "12", "--output", str(out)]) == 0
    )
    result = json.loads(out.read_text())
    assert key in result
    if key == "path":
        assert len(result["path"]) == 4 and result["path"][0]["t"] == 0.0


def test_classify_writes_an_accuracy_curve_for_latents_and_pooled_features(trained_run, tmp_path):
    out = tmp_path / "classify.json"
    args = [
        "--model",
        str(trained_run),
        "--shots",
        "1",
        "5",
        "all",
        "--repeats",
        "2",
        "--pool-size",
        "60",
        "--test-size",
        "40",
        "--output",
        str(out),
    ]
    assert classify.main(args) == 0
    result = json.loads(out.read_text())
    assert set(result["curves"]) == {"latent", "pooled"}
    assert [row["shots"] for row in result["curves"]["latent"]] == [1, 5, "all"]
    assert all(0 <= row["accuracy"] <= 1 for rows in result["curves"].values() for row in rows)


def test_classify_on_labelled_files_refuses_unknown_test_labels(trained_run, tmp_path, capsys):
    (tmp_path / "train.tsv").write_text("pos\tthe great soup .\nneg\tthe awful soup .\n" * 3)
    (tmp_path / "test.tsv").write_text("pos\tthe great cake .\nmeh\tthe cake .\n")
    code = classify.main(
        [
            "--model",
            str(trained_run),
            "--train-file",
            str(tmp_path / "train.tsv"),
            "--test-file",
            str(tmp_path / "test.tsv"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("optimus-classify: error:") and "meh" in err and "\n" not in err


def test_resume_from_a_checkpoint_continues_bit_identically(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = [*SMOKE, "--steps", "20", "--checkpoint-every", "10", "--eval-every", "0"]
    assert train.main([*common, "--run-dir", str(straight)]) == 0
    # A run interrupted after its step-10 checkpoint: everything later is gone.
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_000020")
    shutil.rmtree(resumed / "model")
    assert train.main([*common, "--run-dir", str(resumed)]) == 0
    a = OptimusVAE.from_pretrained(straight / "model").state_dict()
    b = OptimusVAE.from_pretrained(resumed / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_autocast_training_runs_and_saves(tmp_path):
    run_dir = tmp_path / "bf16"
    args = [*SMOKE, "--steps", "4", "--log-every", "2", "--precision", "bf16", "--run-dir", str(run_dir)]
    assert train.main(args) == 0
    losses = [m["loss"] for m in read_metrics(run_dir / "metrics.jsonl") if "loss" in m]
    assert len(losses) == 2 and all(loss == loss and loss < 1e4 for loss in losses)  # finite
    assert OptimusVAE.from_pretrained(run_dir / "model").memory_projection.weight.dtype == torch.float32


def test_bad_inputs_end_with_one_line_errors(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert train.main([*SMOKE, "--run-dir", str(tmp_path / "r1"), "--train-file", str(empty)]) == 2
    assert "no sentences" in capsys.readouterr().err
    not_gpt2 = tmp_path / "bert"
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    ).save_pretrained(not_gpt2)
    assert train.main([*SMOKE, "--run-dir", str(tmp_path / "r2"), "--decoder", str(not_gpt2)]) == 2
    err = capsys.readouterr().err
    assert "needs a gpt2 decoder" in err or "cannot load the decoder" in err
    assert evaluate.main(["--model", str(tmp_path / "nothing")]) == 2
    assert "not found" in capsys.readouterr().err


CONSOLE_SCRIPTS = {
    "optimus-train": ("optimus.train", "--kl-threshold"),
    "optimus-eval": ("optimus.evaluate", "--iw-samples"),
    "optimus-generate": ("optimus.generate", "--guidance-scale"),
    "optimus-classify": ("optimus.classify", "--shots"),
    "optimus-claim": ("optimus.claim", "--kl-thresholds"),
    "optimus-convert": ("optimus.convert", "--decoder-tokenizer"),
}


@pytest.mark.slow
def test_every_console_script_prints_help():
    # One subprocess per script, started together: each spends most of its time importing transformers.
    running = {}
    for script, (module, _) in CONSOLE_SCRIPTS.items():
        installed = Path(sys.executable).parent / script
        command = [str(installed)] if installed.exists() else [sys.executable, "-m", module]
        running[script] = subprocess.Popen(
            [*command, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    for script, process in running.items():
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, f"{script}: {stderr[-2000:]}"
        assert CONSOLE_SCRIPTS[script][1] in stdout, script
