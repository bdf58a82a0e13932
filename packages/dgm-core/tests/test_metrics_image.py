"""KID, Inception Score and improved precision/recall against closed forms and brute force."""

import itertools
import math

import numpy as np
import pytest
import torch

from dgm_core.errors import UserError
from dgm_core.metrics import inception_score, kernel_inception_distance, precision_recall


def _brute_force_unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    dim = x.shape[1]

    def kernel(a, b):
        return (a @ b / dim + 1.0) ** 3

    m = len(x)
    within_x = sum(kernel(x[i], x[j]) for i, j in itertools.permutations(range(m), 2))
    within_y = sum(kernel(y[i], y[j]) for i, j in itertools.permutations(range(m), 2))
    across = sum(kernel(x[i], y[j]) for i in range(m) for j in range(m))
    return (within_x + within_y) / (m * (m - 1)) - 2 * across / (m * m)


def test_kid_equals_brute_force_unbiased_mmd_when_the_subset_is_the_whole_set():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((12, 5)), rng.standard_normal((12, 5)) + 0.5
    mean, std = kernel_inception_distance(x, y, num_subsets=3, subset_size=12)
    assert mean == pytest.approx(_brute_force_unbiased_mmd2(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)  # every "subset" is a permutation of the same set


def test_kid_of_identical_distributions_is_near_zero_and_of_shifted_ones_is_not():
    generator = torch.Generator().manual_seed(1)
    real = torch.randn(400, 16, generator=generator)
    same = torch.randn(400, 16, generator=generator)
    shifted = torch.randn(400, 16, generator=generator) + 1.0
    kid_same, std_same = kernel_inception_distance(real, same, num_subsets=20, subset_size=200)
    kid_shifted, _ = kernel_inception_distance(real, shifted, num_subsets=20, subset_size=200)
    assert abs(kid_same) < 3 * std_same + 1e-3
    assert kid_shifted > 50 * abs(kid_same)
    identical, _ = kernel_inception_distance(real, real, num_subsets=20, subset_size=200)
    assert abs(identical) < 0.05 * kid_shifted


def test_kid_is_reproducible_for_a_seed():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((100, 4)), rng.standard_normal((100, 4))
    first = kernel_inception_distance(a, b, num_subsets=5, subset_size=50, seed=7)
    assert kernel_inception_distance(a, b, num_subsets=5, subset_size=50, seed=7) == first


def test_kid_bad_inputs_are_user_errors():
    with pytest.raises(UserError, match="feature dimensions differ"):
        kernel_inception_distance(np.zeros((10, 3)), np.zeros((10, 4)), subset_size=5)
    with pytest.raises(UserError, match="pass subset_size <= 10"):
        kernel_inception_distance(np.zeros((10, 3)), np.zeros((50, 3)), subset_size=20)
    nan = np.zeros((10, 3))
    nan[0, 0] = np.nan
    with pytest.raises(UserError, match="NaN"):
        kernel_inception_distance(nan, np.zeros((10, 3)), subset_size=5)


def test_inception_score_of_uniform_predictions_is_one():
    mean, std = inception_score(torch.full((100, 10), 0.1), splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("classes", [1, 4, 10])
def test_inception_score_of_confident_even_predictions_is_the_class_count(classes):
    labels = torch.arange(200) % classes  # each split of 20 covers the classes evenly
    probabilities = torch.nn.functional.one_hot(labels, num_classes=10).double()
    mean, std = inception_score(probabilities, splits=10)
    assert mean == pytest.approx(float(classes), rel=1e-12)
    assert std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_matches_a_direct_numpy_computation():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((103, 7)) * 2
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    scores = []
    for index in range(4):  # chunk boundaries i*N//splits, as torch-fidelity
        part = p[index * 103 // 4 : (index + 1) * 103 // 4]
        marginal = part.mean(axis=0)
        scores.append(math.exp(np.mean(np.sum(part * (np.log(part) - np.log(marginal)), axis=1))))
    mean, std = inception_score(p, splits=4)
    assert mean == pytest.approx(np.mean(scores), rel=1e-10)
    assert std == pytest.approx(np.std(scores), rel=1e-8)


def test_inception_score_rejects_logits_and_too_few_samples():
    with pytest.raises(UserError, match="softmax"):
        inception_score(torch.randn(50, 10))
    with pytest.raises(UserError, match="splits=10"):
        inception_score(torch.full((5, 2), 0.5), splits=10)


def test_precision_recall_of_identical_sets_is_one_and_of_distant_sets_zero():
    generator = torch.Generator().manual_seed(4)
    real = torch.randn(200, 8, generator=generator)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)


def test_precision_recall_detects_mode_dropping():
    generator = torch.Generator().manual_seed(5)
    mode_a = torch.randn(300, 4, generator=generator)
    mode_b = torch.randn(300, 4, generator=generator) + 20.0
    real = torch.cat([mode_a, mode_b])
    fake = torch.randn(300, 4, generator=generator)  # covers mode A only
    precision, recall = precision_recall(real, fake, block_size=128)
    assert precision > 0.9
    assert 0.35 < recall < 0.6
