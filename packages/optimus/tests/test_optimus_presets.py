"""The dataset presets parse, and say what the README's table (taken from the original's scripts) says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dgm_core import cli
from optimus.train import DATASET_PRESETS, PRESETS, OptimusTrainConfig

README = Path(__file__).resolve().parents[1] / "README.md"
COLUMNS = {  # README column → config field(s)
    "format": "data_format",
    "latent": "latent_size",
    "β max": "beta_max",
    "β cycles": "n_cycle",
    "λ": "kl_threshold",
    "lr": "lr",
    "block": "block_size",
    "epochs": "epochs",
}


def _readme_recipes() -> dict[str, dict[str, str]]:
    text = README.read_text()
    section = text.split("### Dataset recipes", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    table = {}
    for row in rows[2:]:  # after the header and its |---| line
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        table[cells[0].strip("`")] = dict(zip(header, cells))
    return table


def test_the_readme_documents_every_dataset_preset():
    assert set(_readme_recipes()) == set(DATASET_PRESETS) == {"ptb", "yelp", "yahoo", "snli", "wikipedia"}


@pytest.mark.parametrize("name", sorted(DATASET_PRESETS))
def test_each_dataset_preset_parses_to_the_documented_values(name):
    cfg = cli.parse_config(OptimusTrainConfig, ["--preset", name], prog="optimus-train", presets=PRESETS)
    row = _readme_recipes()[name]
    for column, field in COLUMNS.items():
        documented = row[column].strip("`")
        value = getattr(cfg, field)
        assert (value == documented) if isinstance(value, str) else (value == float(documented)), (
            column,
            value,
        )
    batch, accum = (int(n) for n in re.findall(r"\d+", row["batch × accum"]))
    assert (cfg.batch_size, cfg.grad_accum) == (batch, accum)
    zero, increase = (float(n) for n in row["ratio zero / increase"].split("/"))
    assert (cfg.ratio_zero, cfg.ratio_increase) == (zero, increase)
    # What every original recipe shares: the zero-linear cyclical schedule, thresholding per dimension,
    # AdamW at 5e-5 for both halves without warm-up or decay, clipping at 1.0.
    assert (cfg.beta_schedule, cfg.kl_mode, cfg.encoder_lr, cfg.warmup_steps, cfg.weight_decay) == (
        "cyclical",
        "per_dim",
        5e-5,
        0,
        0.0,
    )
    assert cfg.max_grad_norm == 1.0


def test_presets_follow_the_originals_two_regimes():
    # run_lm_vae_training.py: frange_cycle_zero_linear(..., n_cycle=1, ...); the pre-training script
    # (run_lm_vae_pretraining_phdist_beta.py): n_cycle=10, dim_target_kl 1.0 (scripts_hpc/rr3_wiki_beta.json).
    for name in ("ptb", "yelp", "yahoo", "snli"):
        assert DATASET_PRESETS[name]["n_cycle"] == 1
    assert DATASET_PRESETS["wikipedia"]["n_cycle"] == PRESETS["pretrain"]["n_cycle"] == 10
    assert DATASET_PRESETS["wikipedia"]["kl_threshold"] == PRESETS["pretrain"]["kl_threshold"] == 1.0
    assert DATASET_PRESETS["yelp"]["data_format"] == "labeled"  # the original reads Yelp as label<TAB>text
