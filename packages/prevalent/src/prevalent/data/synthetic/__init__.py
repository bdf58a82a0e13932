"""Synthetic houses in the real VLN formats — the embedded default dataset.

:func:`make_synthetic_dataset` writes a folder that every reader of this package treats exactly like
real data::

    <out>/connectivity/<scan>_connectivity.json     Matterport3DSimulator graph format
    <out>/R2R/R2R_{train,val_seen,val_unseen}.json  R2R format, 3 instructions per path
    <out>/NDH/{train,val_seen,val_unseen}.json      NDH/CVDN format (dialogs, planner/player paths)
    <out>/HANNA/{train,val_seen,val_unseen}.json    HANNA-style find-object episodes with help
    <out>/features/{features.npy,index.json}        36 × feature_size per viewpoint (memory-mapped)
    <out>/instructions.txt                          all training-split language, one text a line
    <out>/houses.json                               rooms, objects, doors and viewpoint rooms per house
    <out>/dataset.json                              seed, sizes, splits and scans (the manifest)

One module per stage, each building on the ones before:

* :mod:`~prevalent.data.synthetic.houses` — rooms, doors, objects and the viewpoint graph;
* :mod:`~prevalent.data.synthetic.features` — per-view features grounded in what each view sees;
* :mod:`~prevalent.data.synthetic.language` — templated instructions, questions and requests;
* :mod:`~prevalent.data.synthetic.episodes` — R2R, NDH and HANNA records on a house;
* :mod:`~prevalent.data.synthetic.dataset` — the dataset folder, split by house.

Seen/unseen splits are by house; the same ``seed`` gives byte-identical files.
"""

from prevalent.data.synthetic.dataset import (
    DATASET_FORMAT,
    DEFAULT_DATA_DIR,
    DEFAULT_DATA_ROOT,
    SPLITS,
    SyntheticConfig,
    default_data_dir,
    ensure_default_dataset,
    make_synthetic_dataset,
)
from prevalent.data.synthetic.episodes import hanna_items, ndh_items, r2r_items
from prevalent.data.synthetic.features import concept_embeddings, view_features
from prevalent.data.synthetic.houses import (
    CAMERA_HEIGHT,
    OBJECT_NAMES,
    ROOM_OBJECTS,
    ROOM_TYPES,
    House,
    Room,
    connectivity_records,
    generate_house,
)
from prevalent.data.synthetic.language import DIALOG, INSTRUCTION, Phrasing, describe_path

__all__ = [
    "CAMERA_HEIGHT",
    "DEFAULT_DATA_DIR",
    "DATASET_FORMAT",
    "DEFAULT_DATA_ROOT",
    "DIALOG",
    "INSTRUCTION",
    "OBJECT_NAMES",
    "Phrasing",
    "ROOM_OBJECTS",
    "ROOM_TYPES",
    "SPLITS",
    "House",
    "Room",
    "SyntheticConfig",
    "concept_embeddings",
    "connectivity_records",
    "default_data_dir",
    "describe_path",
    "ensure_default_dataset",
    "generate_house",
    "hanna_items",
    "make_synthetic_dataset",
    "ndh_items",
    "r2r_items",
    "view_features",
]
