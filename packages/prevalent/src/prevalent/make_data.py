"""``prevalent-make-data``: write a synthetic VLN dataset in the real formats.

With no arguments it writes the default dataset (seed 0, 12 houses, 3 of them unseen, 64-d features)
to ``runs/prevalent-synthetic/seed0``, where ``prevalent-eval`` and the training CLIs look by default.
It also converts real R2R feature TSVs: ``--convert-tsv FILE --out DIR|FILE.safetensors``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dgm_core import cli
from dgm_core.cli import option
from dgm_core.errors import UserError
from prevalent.data.synthetic import default_data_dir, make_synthetic_dataset
from prevalent.env.features import convert_tsv


@dataclass
class MakeDataConfig:
    """Options of ``prevalent-make-data``."""

    out: str = option(
        "",
        help="Output folder (default runs/prevalent-synthetic/seed<seed>, where the other CLIs look), "
        "or with --convert-tsv a folder or .safetensors file.",
    )
    seed: int = option(0, help="Seed: the same seed gives identical files.")
    houses: int = option(12, help="Number of houses (scans).")
    unseen_houses: int = option(3, help="How many of the houses form the val_unseen split.")
    rows: int = option(2, help="Rooms per house along y.")
    cols: int = option(3, help="Rooms per house along x.")
    feature_size: int = option(64, help="Floats per view (ResNet features would be 2048).")
    paths_per_house: int = option(60, help="R2R paths per training house (3 instructions each).")
    val_paths_per_house: int = option(20, help="R2R paths per house in val_seen/val_unseen.")
    dialogs_per_house: int = option(20, help="NDH dialogs per training house.")
    hanna_per_house: int = option(30, help="HANNA episodes per training house.")
    noise: float = option(0.1, help="Standard deviation of the per-view feature noise.")
    overwrite: bool = option(False, help="Replace an existing dataset in --out.")
    convert_tsv: str = option(
        "", help="Instead of generating: convert this R2R feature TSV into a store at --out."
    )
    dtype: str = option("float16", help="Stored feature dtype.", choices=("float16", "float32"))


def make_data(cfg: MakeDataConfig) -> int:
    """The body of ``prevalent-make-data``."""
    start = time.perf_counter()
    if cfg.convert_tsv:
        if not cfg.out:
            raise UserError("--convert-tsv needs --out (a folder for .npy, or a .safetensors file)")
        out = Path(cfg.out)
        if out.exists() and not cfg.overwrite and (out.is_file() or (out / "features.npy").exists()):
            raise UserError(f"{out} already exists; pass --overwrite to replace it")
        convert_tsv(cfg.convert_tsv, out, dtype=cfg.dtype)
        print(f"converted {cfg.convert_tsv} → {out} in {time.perf_counter() - start:.1f}s")
        return 0
    out = make_synthetic_dataset(
        cfg.out or default_data_dir(cfg.seed),
        seed=cfg.seed,
        houses=cfg.houses,
        unseen_houses=cfg.unseen_houses,
        feature_size=cfg.feature_size,
        overwrite=cfg.overwrite,
        rows=cfg.rows,
        cols=cfg.cols,
        paths_per_house=cfg.paths_per_house,
        val_paths_per_house=cfg.val_paths_per_house,
        dialogs_per_house=cfg.dialogs_per_house,
        hanna_per_house=cfg.hanna_per_house,
        noise=cfg.noise,
        feature_dtype=cfg.dtype,
    )
    manifest = json.loads((out / "dataset.json").read_text())
    print(f"synthetic dataset written to {out} in {time.perf_counter() - start:.1f}s")
    for split, counts in manifest["counts"].items():
        scans = len(manifest["splits"].get(split, []))
        print(f"  {split:<11} {scans:>3} houses  " + "  ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``prevalent-make-data``: generate the synthetic dataset (or convert a feature TSV)."""
    return cli.run(
        make_data,
        MakeDataConfig,
        argv,
        prog="prevalent-make-data",
        description=(
            "Write procedurally generated houses with R2R, NDH and HANNA episodes and per-view features, "
            "in the real file formats, or convert an R2R feature TSV into a memory-mapped store."
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
