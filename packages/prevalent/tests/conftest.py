"""Test-wide settings: offline Hugging Face, few threads (CI has two cores)."""

import os

# An accidental hub call must fail fast instead of hanging on the closed network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# Real Matterport/R2R/NDH samples sit beside the checkout in ../shared/data/vln (never in the repo).
_VLN_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "vln"


@pytest.fixture(scope="session")
def vln_data() -> Path:
    """The shared real-sample folder (connectivity/, R2R/, NDH/), or a clean skip when absent."""
    override = os.environ.get("DGM_VLN_DATA")
    folder = Path(override) if override else _VLN_DATA
    if not (folder / "connectivity").is_dir():
        pytest.skip(f"real VLN samples not found at {folder} (set DGM_VLN_DATA to point elsewhere)")
    return folder
