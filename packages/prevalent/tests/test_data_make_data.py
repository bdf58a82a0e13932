"""prevalent-make-data in-process: sized datasets, TSV conversion, and refusals that protect data."""

import json

import numpy as np

from prevalent.env import FeatureStore, write_tsv
from prevalent.make_data import main


def test_sized_dataset_lands_where_asked(tmp_path, capsys):
    out = tmp_path / "worlds"
    args = ["--out", str(out), "--houses", "3", "--unseen-houses", "1", "--feature-size", "16", "--seed", "4"]
    assert main([*args, "--paths-per-house", "2", "--val-paths-per-house", "1"]) == 0
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["config"]["feature_size"] == 16 and manifest["counts"]["train"]["R2R"] == 2 * 2
    assert FeatureStore.open(out / "features").feature_size == 16
    assert "val_unseen" in capsys.readouterr().out
    # a second run must not replace the dataset …
    before = (out / "features" / "features.npy").read_bytes()
    assert main([*args, "--seed", "5"]) == 2
    assert "already holds a dataset" in capsys.readouterr().err
    assert (out / "features" / "features.npy").read_bytes() == before
    # … unless asked to
    assert main([*args, "--seed", "5", "--overwrite"]) == 0
    assert (out / "features" / "features.npy").read_bytes() != before


def test_convert_tsv_to_safetensors_and_refuse_to_clobber(tmp_path, capsys):
    rng = np.random.default_rng(0)
    items = [("scan", f"vp{k}", rng.normal(size=(36, 32)).astype(np.float32)) for k in range(4)]
    tsv = write_tsv(tmp_path / "feats.tsv", items)
    target = tmp_path / "feats.safetensors"
    assert main(["--convert-tsv", str(tsv), "--out", str(target), "--dtype", "float32"]) == 0
    store = FeatureStore.open(target)
    np.testing.assert_array_equal(store["scan", "vp3"], items[3][2])
    assert main(["--convert-tsv", str(tsv), "--out", str(target)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["--convert-tsv", str(tsv)]) == 2
