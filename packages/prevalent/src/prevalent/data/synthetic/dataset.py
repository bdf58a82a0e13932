"""The dataset folder: houses, episodes and features written in the real formats, split by house."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dgm_core.errors import UserError
from prevalent.data.synthetic.episodes import hanna_items, ndh_items, r2r_items
from prevalent.data.synthetic.features import view_features
from prevalent.data.synthetic.houses import House, connectivity_records, generate_house
from prevalent.env.features import write_feature_store

SPLITS = ("train", "val_seen", "val_unseen")
#: version 2: NDH answers and HANNA help in their own template family (language.DIALOG)
DATASET_FORMAT = "prevalent-synthetic/2"
#: where ``prevalent-make-data`` writes (and the other CLIs look for) synthetic datasets, relative to the
#: working directory: one folder per seed, ``runs/prevalent-synthetic/seed<N>``
DEFAULT_DATA_ROOT = Path("runs/prevalent-synthetic")


def default_data_dir(seed: int = 0) -> Path:
    """The default folder of the synthetic dataset of ``seed``: ``runs/prevalent-synthetic/seed<seed>``."""
    return DEFAULT_DATA_ROOT / f"seed{seed}"


#: the default dataset (seed 0)
DEFAULT_DATA_DIR = default_data_dir(0)


@dataclass
class SyntheticConfig:
    """Sizes of a synthetic dataset (see :func:`make_synthetic_dataset`)."""

    seed: int = 0
    houses: int = 12
    unseen_houses: int = 3
    rows: int = 2
    cols: int = 3
    feature_size: int = 64
    paths_per_house: int = 60
    val_paths_per_house: int = 20
    dialogs_per_house: int = 20
    hanna_per_house: int = 30
    noise: float = 0.1
    feature_dtype: str = "float16"


def make_synthetic_dataset(
    out_dir: str | Path,
    seed: int = 0,
    houses: int = 12,
    unseen_houses: int = 3,
    feature_size: int = 64,
    overwrite: bool = False,
    **sizes,
) -> Path:
    """Generate houses, episodes and features under ``out_dir`` in the real formats; returns ``out_dir``.

    Args:
        seed: everything is a deterministic function of it.
        houses: number of houses; the last ``unseen_houses`` of them form the ``val_unseen`` split.
        feature_size: floats per view (64 by default; ResNet features would be 2048).
        overwrite: replace an existing dataset; without it an existing ``dataset.json`` is an error,
            so that data on disk is never destroyed by accident.
        sizes: other :class:`SyntheticConfig` fields (``rows``, ``cols``, ``paths_per_house``, …).
    """
    cfg = SyntheticConfig(
        seed=seed, houses=houses, unseen_houses=unseen_houses, feature_size=feature_size, **sizes
    )
    if cfg.houses < 2 or not 1 <= cfg.unseen_houses < cfg.houses:
        raise UserError(
            f"need ≥ 2 houses and 1 ≤ unseen_houses < houses, got {cfg.houses}/{cfg.unseen_houses}"
        )
    if cfg.feature_size < 8:
        raise UserError(f"feature_size must be at least 8, got {cfg.feature_size}")
    if cfg.rows * cfg.cols < 2:
        raise UserError("a house needs at least 2 rooms (rows × cols ≥ 2)")
    out = Path(out_dir)
    if (out / "dataset.json").exists() and not overwrite:
        raise UserError(
            f"{out} already holds a dataset (dataset.json); pass overwrite=True (--overwrite) to replace it"
        )
    for sub in ("connectivity", "R2R", "NDH", "HANNA"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    root = np.random.SeedSequence(cfg.seed)
    house_seeds = root.spawn(cfg.houses)
    split_of = {}
    records = {split: {"R2R": [], "NDH": [], "HANNA": []} for split in SPLITS}
    features, house_meta = [], []
    n_seen = cfg.houses - cfg.unseen_houses
    for h in range(cfg.houses):
        rng = np.random.default_rng(house_seeds[h])
        scan = f"synth{cfg.seed}x{h:03d}"
        house = generate_house(scan, rng, cfg.rows, cfg.cols)
        graph = house.graph()
        (out / "connectivity" / f"{scan}_connectivity.json").write_text(
            json.dumps(connectivity_records(house, rng))
        )
        feats = view_features(house, cfg.feature_size, rng, cfg.noise)
        features.extend((scan, vp, feats[k]) for k, vp in enumerate(house.viewpoints))
        splits = ("train", "val_seen") if h < n_seen else ("val_unseen",)
        for split in splits:
            split_of.setdefault(split, []).append(scan)
            n_paths = cfg.paths_per_house if split == "train" else cfg.val_paths_per_house
            share = n_paths / max(cfg.paths_per_house, 1)
            tag = SPLITS.index(split)
            first = (h * 10 + tag) * 100_000
            records[split]["R2R"] += r2r_items(house, graph, n_paths, rng, first)
            records[split]["NDH"] += ndh_items(
                house, graph, max(1, round(cfg.dialogs_per_house * share)), rng, first
            )
            records[split]["HANNA"] += hanna_items(
                house, graph, max(1, round(cfg.hanna_per_house * share)), rng, f"{scan}-{split}-"
            )
        house_meta.append(_house_summary(house, "seen" if h < n_seen else "unseen"))

    for split in SPLITS:
        (out / "R2R" / f"R2R_{split}.json").write_text(json.dumps(records[split]["R2R"], indent=1))
        (out / "NDH" / f"{split}.json").write_text(json.dumps(records[split]["NDH"], indent=1))
        (out / "HANNA" / f"{split}.json").write_text(json.dumps(records[split]["HANNA"], indent=1))
    write_feature_store(out / "features", features, dtype=cfg.feature_dtype)
    lines = [t for item in records["train"]["R2R"] for t in item["instructions"]]
    lines += [t["message"] for item in records["train"]["NDH"] for t in item["dialog_history"]]
    lines += [item["target"] for item in records["train"]["NDH"]]
    lines += [item["instruction"] for item in records["train"]["HANNA"]]
    lines += [r["instruction"] for item in records["train"]["HANNA"] for r in item["help"]]
    (out / "instructions.txt").write_text("\n".join(dict.fromkeys(lines)) + "\n")
    (out / "houses.json").write_text(json.dumps(house_meta, indent=1))
    (out / "scans.txt").write_text("\n".join(m["scan"] for m in house_meta) + "\n")
    manifest = {
        "format": DATASET_FORMAT,
        "config": asdict(cfg),
        "splits": split_of,
        "counts": {split: {task: len(v) for task, v in records[split].items()} for split in SPLITS},
        "feature_store": "features",
        "angle_feature_layout": "(sin h, cos h, sin e, cos e) tiled",
    }
    (out / "dataset.json").write_text(json.dumps(manifest, indent=1))
    return out


def ensure_default_dataset(seed: int = 0) -> Path:
    """The default synthetic dataset of ``seed`` (see :func:`default_data_dir`), generated if missing."""
    path = default_data_dir(seed)
    if not (path / "dataset.json").is_file():
        make_synthetic_dataset(path, seed=seed)
    return path


def _house_summary(house: House, split: str) -> dict:
    return {
        "scan": house.scan,
        "split": split,
        "rooms": [
            {
                "index": r.index,
                "type": r.room_type,
                "bounds": [round(v, 3) for v in (r.x0, r.y0, r.x1, r.y1)],
                "objects": [{"name": o[0], "position": [round(v, 3) for v in o[1:]]} for o in r.objects],
            }
            for r in house.rooms
        ],
        "doors": [{"rooms": [a, b], "position": [round(x, 3), round(y, 3)]} for a, b, x, y in house.doors],
        "viewpoint_rooms": dict(zip(house.viewpoints, house.viewpoint_rooms)),
    }
