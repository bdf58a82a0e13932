"""Streaming feature statistics: equal to one-shot numpy, .npz round trips, DDP reduction, bad input."""

import numpy as np
import pytest
import torch

from dgm_core.errors import UserError
from dgm_core.metrics import FeatureStatistics, frechet_distance, load_fid_stats
from dgm_core.testing import run_distributed


def _features(seed: int, count: int = 300, dim: int = 8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, dim, generator=generator) * 2.0 + 5.0


def test_streaming_statistics_equal_one_shot_numpy():
    features = _features(0)
    stats = FeatureStatistics(8)
    for batch in features.split(37):  # uneven batches, the last one short
        stats.update(batch)
    reference = features.double().numpy()
    assert stats.count == 300
    np.testing.assert_allclose(stats.mean().numpy(), reference.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(
        stats.covariance().numpy(), np.cov(reference, rowvar=False), rtol=1e-10, atol=1e-12
    )


def test_npz_round_trip_uses_pytorch_fid_keys_and_resumes(tmp_path):
    features = _features(1)
    stats = FeatureStatistics(8)
    stats.update(features[:200])
    path = stats.save_npz(tmp_path / "cache" / "real.npz")
    with np.load(path) as data:
        assert {"mu", "sigma"} <= set(data.files)
        np.testing.assert_allclose(data["mu"], stats.mean().numpy())
        np.testing.assert_allclose(data["sigma"], stats.covariance().numpy())
    resumed = FeatureStatistics.load_npz(path)
    resumed.update(features[200:])
    whole = FeatureStatistics(8)
    whole.update(features)
    assert resumed.count == 300
    np.testing.assert_allclose(resumed.covariance().numpy(), whole.covariance().numpy(), rtol=1e-9)
    assert not list(path.parent.glob("*.tmp")), "the atomic save left its temporary file behind"


def test_load_fid_stats_reads_a_pytorch_fid_file(tmp_path):
    mu, sigma = np.arange(4.0), np.eye(4) * 2
    np.savez(tmp_path / "pytorch_fid.npz", mu=mu, sigma=sigma)
    loaded_mu, loaded_sigma = load_fid_stats(tmp_path / "pytorch_fid.npz", dim=4)
    assert loaded_mu.dtype == np.float64
    np.testing.assert_array_equal(loaded_mu, mu)
    np.testing.assert_array_equal(loaded_sigma, sigma)
    with pytest.raises(UserError, match="num_samples"):
        FeatureStatistics.load_npz(tmp_path / "pytorch_fid.npz")


def test_fid_from_statistics_of_the_same_samples_is_zero():
    features = _features(2, count=500)
    a, b = FeatureStatistics(8), FeatureStatistics(8)
    a.update(features)
    for batch in features.split(64):
        b.update(batch)
    assert abs(frechet_distance(*a.to_numpy(), *b.to_numpy())) < 1e-8


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"mu": np.zeros(4)}, "lacks 'sigma'"),
        ({"mean": np.zeros(4), "cov": np.eye(4)}, "lacks 'mu', 'sigma'"),
        ({"mu": np.zeros(4), "sigma": np.eye(3)}, "expected \\(D,\\) and \\(D, D\\)"),
        ({"mu": np.zeros((4, 1)), "sigma": np.eye(4)}, "expected \\(D,\\) and \\(D, D\\)"),
        ({"mu": np.full(4, np.nan), "sigma": np.eye(4)}, "NaN"),
    ],
)
def test_bad_stats_files_are_user_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError, match=message):
        load_fid_stats(tmp_path / "bad.npz")


def test_missing_or_foreign_files_and_wrong_dimension_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_fid_stats(tmp_path / "absent.npz")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(UserError, match="not a readable"):
        load_fid_stats(tmp_path / "text.npz")
    np.save(tmp_path / "array.npy", np.zeros(3))
    with pytest.raises(UserError, match="single array"):
        load_fid_stats(tmp_path / "array.npy")
    np.savez(tmp_path / "small.npz", mu=np.zeros(64), sigma=np.eye(64))
    with pytest.raises(UserError, match="64-d statistics but the feature extractor gives 2048-d"):
        load_fid_stats(tmp_path / "small.npz", dim=2048)


def test_update_rejects_wrong_dimension_and_nan_features():
    stats = FeatureStatistics(8)
    with pytest.raises(UserError, match=r"shape \(N, 8\)"):
        stats.update(torch.zeros(4, 7))
    bad = torch.zeros(4, 8)
    bad[2, 3] = float("nan")
    with pytest.raises(UserError, match="1 of 4 feature vectors contain NaN"):
        stats.update(bad)
    assert stats.count == 0, "a rejected batch must not be partly accumulated"


def test_too_few_samples_warn_with_the_count_and_one_sample_is_an_error():
    stats = FeatureStatistics(8)
    stats.update(torch.randn(1, 8))
    with pytest.raises(UserError, match="at least 2"):
        stats.covariance()
    stats.update(torch.randn(4, 8))
    with pytest.warns(RuntimeWarning, match="from 5 samples of 8-d features is singular"):
        stats.covariance()


def _reduce_shards(rank: int, world_size: int) -> dict:
    features = _features(3, count=301)
    stats = FeatureStatistics(8)
    # Uneven shards: rank r takes rows r, r + world_size, ...
    stats.update(features[rank::world_size])
    stats.all_reduce()
    refused = []
    for misuse in (stats.all_reduce, lambda: stats.update(features[:2])):
        try:
            misuse()
        except RuntimeError:
            refused.append(True)
    result = {"count": stats.count, "mean": stats.mean(), "covariance": stats.covariance()}
    return dict(result, refused_double_counting=len(refused) == 2)


def test_two_process_reduction_equals_one_process():
    results = run_distributed(_reduce_shards, 2)
    single = FeatureStatistics(8)
    single.update(_features(3, count=301))
    for result in results:
        assert result["refused_double_counting"]
        assert result["count"] == 301
        torch.testing.assert_close(result["mean"], single.mean(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(result["covariance"], single.covariance(), rtol=1e-10, atol=1e-12)


def test_all_reduce_without_process_group_is_identity():
    stats = FeatureStatistics(8)
    stats.update(_features(4, count=50))
    before = stats.covariance().clone()
    stats.all_reduce()
    assert stats.count == 50
    torch.testing.assert_close(stats.covariance(), before)
