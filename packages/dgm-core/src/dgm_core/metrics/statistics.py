"""Streaming first and second moments of feature vectors, and their pytorch-fid ``.npz`` files.

The mean and covariance of 50k Inception features are accumulated batch by batch as
float64 running sums (count, Σx, Σxxᵀ), so no feature matrix is ever held, and sums from
several DDP ranks combine with one all-reduce. The cached file format is pytorch-fid's:
an ``.npz`` with ``mu`` (D,) and ``sigma`` (D, D); we add ``num_samples`` so a saved file
can also be reloaded as a :class:`FeatureStatistics` (pytorch-fid ignores the extra key).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from dgm_core.errors import UserError
from dgm_core.runtime.distributed import all_reduce_sum
from dgm_core.runtime.files import make_readable


class FeatureStatistics:
    """Running float64 sums of features: count, Σx and Σxxᵀ.

    Args:
        dim: feature dimension D (2048 for the FID Inception pool features).
        device: where the sums live; features are moved there in float64. CPU by default,
            which keeps float64 matmuls off consumer GPUs.

    ``update`` a batch at a time, call ``all_reduce()`` once under DDP (every rank then holds
    the global sums), then read ``mean()`` / ``covariance()`` or ``save_npz``.
    """

    def __init__(self, dim: int, device: torch.device | str | None = None) -> None:
        if dim < 1:
            raise UserError(f"feature dimension must be positive, got {dim}")
        self.dim = int(dim)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._count = 0
        self._reduced_over_ranks = False
        self._sum = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        self._sum_outer = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=self.device)

    @property
    def count(self) -> int:
        """Number of feature vectors accumulated (over all ranks after ``all_reduce``)."""
        return self._count

    def update(self, features: torch.Tensor) -> None:
        """Add a batch of feature vectors, shape (N, dim), any float dtype and device."""
        if not isinstance(features, torch.Tensor):
            features = torch.as_tensor(np.asarray(features))
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise UserError(
                f"features must have shape (N, {self.dim}), got {tuple(features.shape)}: "
                "the extractor's feature dimension does not match these statistics"
            )
        if self._reduced_over_ranks:
            raise RuntimeError(
                "these statistics were already all-reduced over ranks; adding to them and reducing "
                "again would count other ranks twice; start a new FeatureStatistics"
            )
        batch = features.detach().to(device=self.device, dtype=torch.float64)
        if not torch.isfinite(batch).all():
            bad = int((~torch.isfinite(batch)).any(dim=1).sum())
            raise UserError(
                f"{bad} of {batch.shape[0]} feature vectors contain NaN or inf "
                "(broken generator output or extractor); refusing to fold them into the statistics"
            )
        self._count += batch.shape[0]
        self._sum += batch.sum(dim=0)
        self._sum_outer.addmm_(batch.T, batch)

    def all_reduce(self) -> FeatureStatistics:
        """Sum count, Σx and Σxxᵀ over DDP ranks in place (no-op when not distributed); returns self.

        Call it exactly once, after every rank has seen its shard: a second call, or an ``update``
        after it, raises ``RuntimeError`` when distributed (it would count ranks twice).
        """
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and torch.distributed.get_world_size() > 1:
            if self._reduced_over_ranks:
                raise RuntimeError("FeatureStatistics.all_reduce() was already called on these statistics")
            self._reduced_over_ranks = True
        packed = torch.cat(
            [
                torch.tensor([float(self._count)], dtype=torch.float64, device=self.device),
                self._sum,
                self._sum_outer.reshape(-1),
            ]
        )
        reduce_device = self.device
        if distributed and torch.distributed.get_backend() == "nccl" and self.device.type != "cuda":
            # NCCL only reduces CUDA tensors; a round trip through the current GPU is cheap.
            reduce_device = torch.device("cuda", torch.cuda.current_device())
        reduced = all_reduce_sum(packed.to(reduce_device)).to(self.device)
        self._count = int(round(float(reduced[0])))
        self._sum = reduced[1 : 1 + self.dim].clone()
        self._sum_outer = reduced[1 + self.dim :].reshape(self.dim, self.dim).clone()
        return self

    def mean(self) -> torch.Tensor:
        """Mean feature vector (float64, shape (dim,))."""
        if self._count < 1:
            raise UserError("no features were accumulated; cannot compute a mean")
        return self._sum / self._count

    def covariance(self) -> torch.Tensor:
        """Unbiased sample covariance (divides by N-1, as numpy.cov in pytorch-fid), float64 (dim, dim).

        Warns when N <= dim: the covariance then has rank at most N-1 < dim (singular), and an FID
        from it is biased upwards; the reference protocol uses 50k samples for 2048 dims.
        """
        if self._count < 2:
            raise UserError(f"a covariance needs at least 2 feature vectors, got {self._count}")
        if self._count <= self.dim:
            warnings.warn(
                f"covariance from {self._count} samples of {self.dim}-d features is singular "
                f"(rank <= {self._count - 1}); use more than {self.dim} samples (50000 is standard for FID)",
                RuntimeWarning,
                stacklevel=2,
            )
        mean = self._sum / self._count
        covariance = (self._sum_outer - self._count * torch.outer(mean, mean)) / (self._count - 1)
        return 0.5 * (covariance + covariance.T)

    def to_numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mu, sigma)`` as float64 numpy arrays, ready for :func:`frechet_distance`."""
        return self.mean().cpu().numpy(), self.covariance().cpu().numpy()

    def save_npz(self, path: str | os.PathLike) -> Path:
        """Write pytorch-fid's ``.npz`` (``mu``, ``sigma``) plus ``num_samples``; atomic replace."""
        mu, sigma = self.to_numpy()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the target and rename, so an interrupted save never leaves half a file
        # in place of a good cache.
        handle, tmp_name = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as file:
                np.savez(file, mu=mu, sigma=sigma, num_samples=np.int64(self._count))
            make_readable(tmp_name)  # mkstemp's 0600 would hide a shared statistics cache
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load_npz(cls, path: str | os.PathLike, device: torch.device | str | None = None) -> FeatureStatistics:
        """Rebuild streaming statistics from a file written by :meth:`save_npz`.

        Files from pytorch-fid carry no sample count, so they cannot be resumed; read them with
        :func:`load_fid_stats` instead.
        """
        with _open_npz(path) as data:
            if "num_samples" not in data.files:
                raise UserError(
                    f"{path} has no 'num_samples' (a pytorch-fid file?); it cannot be extended with more "
                    "samples, use load_fid_stats(path) to read its mu and sigma"
                )
            count = int(data["num_samples"])
        mu, sigma = load_fid_stats(path)
        stats = cls(mu.shape[0], device=device)
        mu_t = torch.as_tensor(mu, dtype=torch.float64, device=stats.device)
        sigma_t = torch.as_tensor(sigma, dtype=torch.float64, device=stats.device)
        stats._count = count
        stats._sum = mu_t * count
        stats._sum_outer = sigma_t * (count - 1) + count * torch.outer(mu_t, mu_t)
        return stats


def _open_npz(path: str | os.PathLike):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"feature statistics file {path} does not exist")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UserError(f"{path} is not a readable .npz file ({error})") from error
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise UserError(f"{path} is a single array, not an .npz archive with 'mu' and 'sigma'")
    return data


def load_fid_stats(path: str | os.PathLike, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(mu, sigma)`` as float64 from a pytorch-fid style ``.npz``; check keys, shapes and values.

    Args:
        path: an ``.npz`` with arrays ``mu`` (D,) and ``sigma`` (D, D), as written by
            ``pytorch_fid --save-stats`` or :meth:`FeatureStatistics.save_npz`.
        dim: the feature dimension the caller's extractor produces; a mismatch is an error.
    """
    with _open_npz(path) as data:
        missing = [key for key in ("mu", "sigma") if key not in data.files]
        if missing:
            raise UserError(
                f"{path} lacks {', '.join(repr(k) for k in missing)} (has {sorted(data.files)}); "
                "FID statistics files need 'mu' and 'sigma' as written by pytorch-fid"
            )
        mu = np.asarray(data["mu"], dtype=np.float64)
        sigma = np.asarray(data["sigma"], dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise UserError(
            f"{path}: 'mu' has shape {mu.shape} and 'sigma' {sigma.shape}; expected (D,) and (D, D)"
        )
    if dim is not None and mu.shape[0] != dim:
        raise UserError(f"{path} holds {mu.shape[0]}-d statistics but the feature extractor gives {dim}-d")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise UserError(f"{path} contains NaN or infinite values")
    return mu, sigma
