"""Simulator-free navigation environment: graphs, angles, image features, batched episodes.

Public API::

    NavGraph, NavGraphs                 graphs from Matterport3D connectivity files, shortest paths
    angle_feature, view_index, …        the 36-view panorama and its ONE angle-feature layout
    FeatureStore (+ convert_tsv, …)     36 × D features per viewpoint: R2R TSV, .npy memmap, safetensors
    BatchNavEnv, Candidate, …           batched reset/step/candidates/teacher_actions/trajectories
"""

from prevalent.env.angles import (
    ANGLE_FEATURE_SIZE,
    NUM_VIEWS,
    VIEW_ELEVATIONS,
    VIEW_HEADINGS,
    angle_feature,
    panorama_angle_features,
    view_index,
    wrap_angle,
)
from prevalent.env.batch_env import (
    IGNORE_ACTION,
    STOP_ACTION,
    BatchNavEnv,
    Candidate,
    EpisodeState,
    Observation,
    heading_toward,
    neighbourhood,
)
from prevalent.env.features import (
    FeatureStore,
    InMemoryFeatureStore,
    NpyFeatureStore,
    SafetensorsFeatureStore,
    TsvFeatureStore,
    convert_tsv,
    feature_key,
    iter_tsv,
    write_feature_store,
    write_tsv,
)
from prevalent.env.graph import NavGraph, NavGraphs, connectivity_path

__all__ = [
    "ANGLE_FEATURE_SIZE",
    "IGNORE_ACTION",
    "NUM_VIEWS",
    "STOP_ACTION",
    "VIEW_ELEVATIONS",
    "VIEW_HEADINGS",
    "BatchNavEnv",
    "Candidate",
    "EpisodeState",
    "FeatureStore",
    "InMemoryFeatureStore",
    "NavGraph",
    "NavGraphs",
    "NpyFeatureStore",
    "Observation",
    "SafetensorsFeatureStore",
    "TsvFeatureStore",
    "angle_feature",
    "connectivity_path",
    "convert_tsv",
    "feature_key",
    "heading_toward",
    "iter_tsv",
    "neighbourhood",
    "panorama_angle_features",
    "view_index",
    "wrap_angle",
    "write_feature_store",
    "write_tsv",
]
