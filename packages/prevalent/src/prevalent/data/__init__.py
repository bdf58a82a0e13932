"""VLN task data: R2R, NDH (CVDN) and HANNA-style loaders, and the synthetic-world generator.

Public API::

    load_r2r(path) -> list[R2REpisode]                  one episode per instruction
    load_ndh(path, history="all", path_type="planner")  -> list[NDHEpisode]
    load_hanna(path) -> list[HannaEpisode]
    make_synthetic_dataset(out_dir, seed, houses, ...)  houses + episodes + features in real formats
"""

from prevalent.data.hanna import HannaEpisode, HelpResponse, load_hanna
from prevalent.data.ndh import HISTORY_MODES, PATH_TYPES, DialogTurn, NDHEpisode, dialog_text, load_ndh
from prevalent.data.r2r import R2REpisode, load_r2r
from prevalent.data.synthetic import (
    DEFAULT_DATA_DIR,
    default_data_dir,
    ensure_default_dataset,
    make_synthetic_dataset,
)

__all__ = [
    "DEFAULT_DATA_DIR",
    "HISTORY_MODES",
    "PATH_TYPES",
    "DialogTurn",
    "HannaEpisode",
    "HelpResponse",
    "NDHEpisode",
    "R2REpisode",
    "default_data_dir",
    "dialog_text",
    "ensure_default_dataset",
    "load_hanna",
    "load_ndh",
    "load_r2r",
    "make_synthetic_dataset",
]
