"""Generative-model metrics computed the standard way, so numbers compare with published ones.

Image quality (FQ-GAN): FID as :func:`frechet_distance` of two :class:`FeatureStatistics`
(streaming float64 sums, DDP all-reduce, pytorch-fid ``.npz`` files), KID, Inception Score and
improved precision/recall, on features from the FID Inception (:func:`load_fid_inception`,
:func:`extract_features`) or any image → feature module.

Latent variables (Optimus, any Gaussian-posterior model): :func:`gaussian_kl`,
:func:`mutual_information`, :func:`active_units`, :func:`iw_log_likelihood`, :func:`perplexity`.

See ``packages/dgm-core/docs/metrics.md`` for input conventions, formulas and benchmarks.
"""

from dgm_core.metrics.frechet import frechet_distance
from dgm_core.metrics.image import inception_score, kernel_inception_distance, precision_recall
from dgm_core.metrics.inception import (
    FID_WEIGHTS_FILENAME,
    FIDInceptionV3,
    default_weights_path,
    extract_features,
    iter_features,
    load_fid_inception,
)
from dgm_core.metrics.latent import (
    active_units,
    gaussian_kl,
    iw_log_likelihood,
    mutual_information,
    perplexity,
)
from dgm_core.metrics.statistics import FeatureStatistics, load_fid_stats

__all__ = [
    "FID_WEIGHTS_FILENAME",
    "FIDInceptionV3",
    "FeatureStatistics",
    "active_units",
    "default_weights_path",
    "extract_features",
    "frechet_distance",
    "gaussian_kl",
    "inception_score",
    "iter_features",
    "iw_log_likelihood",
    "kernel_inception_distance",
    "load_fid_inception",
    "load_fid_stats",
    "mutual_information",
    "perplexity",
    "precision_recall",
]
