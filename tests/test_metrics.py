"""Metric definitions against hand-computed values, and their behaviour on known distributions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import wasserstein_distance

from fastsim.validation import metrics


# ----------------------------------------------------------------------------- separation power


@pytest.mark.parametrize(
    ("h1", "h2", "expected"),
    [
        ([1, 2, 3], [1, 2, 3], 0.0),  # identical
        ([1, 2, 3], [10, 20, 30], 0.0),  # same shape, other normalisation
        ([1, 0], [0, 1], 1.0),  # disjoint
        ([1, 1], [3, 1], 0.5 * (0.25**2 / 1.25 + 0.25**2 / 0.75)),  # p=(.5,.5), q=(.75,.25)
        ([2, 0, 2], [1, 0, 3], 0.5 * (0.25**2 / 0.75 + 0.25**2 / 1.25)),  # a bin empty in both is skipped
    ],
)
def test_separation_power_hand_values(h1, h2, expected):
    assert metrics.separation_power(h1, h2) == pytest.approx(expected, abs=1e-15)


def test_separation_power_is_symmetric_and_bounded():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.integers(0, 50, 12), rng.integers(0, 50, 12)
        value = metrics.separation_power(a, b)
        assert value == pytest.approx(metrics.separation_power(b, a))
        assert 0.0 <= value <= 1.0


def test_separation_power_of_an_empty_histogram_is_nan():
    assert np.isnan(metrics.separation_power([0, 0], [1, 2]))


@pytest.mark.parametrize(("h1", "h2"), [([1, 2], [1, 2, 3]), ([1, -1], [1, 1])])
def test_separation_power_rejects_bad_histograms(h1, h2):
    with pytest.raises(ValueError, match="h1 and h2"):
        metrics.separation_power(h1, h2)


def test_histogram_separation_power_drops_entries_outside_the_edges():
    edges = np.array([0.0, 1.0, 2.0])
    # a -> (1, 1) inside, one entry above; b -> (0, 2) inside, one below: p=(.5,.5), q=(0,1).
    a = [0.5, 1.5, 7.0]
    b = [1.2, 1.8, -3.0]
    expected = 0.5 * (0.25 / 0.5 + 0.25 / 1.5)
    assert metrics.histogram_separation_power(a, b, edges) == pytest.approx(expected)


# ----------------------------------------------------------------------------- Wasserstein-1


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [([0.0, 1.0], [1.0, 2.0], 1.0), ([0.0], [3.0], 3.0), ([0.0, 0.0, 3.0], [0.0, 3.0, 3.0], 1.0), ([1.0], [1.0], 0.0)],
)
def test_wasserstein1_hand_values(a, b, expected):
    assert metrics.wasserstein1(a, b) == pytest.approx(expected)


@pytest.mark.parametrize(("n_a", "n_b", "shift"), [(500, 500, 0.0), (300, 700, 0.5), (50, 1000, 2.0)])
def test_wasserstein1_matches_scipy(n_a, n_b, shift):
    rng = np.random.default_rng(n_a + n_b)
    a, b = rng.normal(size=n_a), rng.exponential(size=n_b) + shift
    assert metrics.wasserstein1(a, b) == pytest.approx(wasserstein_distance(a, b), rel=1e-12)


def test_wasserstein1_rejects_empty_samples():
    with pytest.raises(ValueError, match="non-empty"):
        metrics.wasserstein1([], [1.0])


# ----------------------------------------------------------------------------- Fréchet distance, FPD


def test_frechet_distance_of_1d_gaussians():
    # W2^2 between N(0, 2^2) and N(1, 1^2) is (0-1)^2 + (2-1)^2 = 2.
    assert metrics.frechet_distance(np.array([0.0]), np.array([[4.0]]), np.array([1.0]), np.array([[1.0]])) == (
        pytest.approx(2.0)
    )


def test_frechet_distance_of_diagonal_gaussians_sums_per_dimension():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    expected = np.sum((mu1 - mu2) ** 2 + (np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert metrics.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected)


def test_frechet_distance_handles_a_feature_constant_in_both_samples():
    # A zero-variance column makes C1 C2 singular; the value must still be the exact one.
    mu = np.zeros(3)
    c1, c2 = np.diag([0.0, 1.0, 4.0]), np.diag([0.0, 4.0, 4.0])
    assert metrics.frechet_distance(mu, c1, mu + 1.0, c2) == pytest.approx(3.0 + 1.0)


def test_fpd_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(4000, 5))
    values = []
    for shift in (0.0, 0.1, 0.3):
        value, error = metrics.fpd(reference, rng.normal(shift, 1.0, size=(4000, 5)), num_batches=5)
        assert error >= 0.0
        values.append(value)
    assert values[0] < 2e-3
    assert values[0] < values[1] < values[2]
    # Features are scaled by the reference's max |x|, so a mean shift s adds sum_j (s / max_j)^2.
    assert values[2] == pytest.approx(np.sum((0.3 / np.abs(reference).max(axis=0)) ** 2), rel=0.3)


def test_fpd_rejects_fewer_than_two_sample_sizes():
    x = np.zeros((10, 2))
    with pytest.raises(ValueError, match="sizes"):
        metrics.fpd(x, x, sizes=[5])


# ----------------------------------------------------------------------------- MMD, KPD


def _mmd_by_loops(x, y, degree=4):
    d = x.shape[1]

    def k(a, b):
        return (a @ b / d + 1.0) ** degree

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_mmd_poly_unbiased_matches_the_definition():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(6, 3)), rng.normal(0.5, 1.0, size=(4, 3))
    assert metrics.mmd_poly_unbiased(x, y) == pytest.approx(_mmd_by_loops(x, y), rel=1e-12)
    assert metrics.mmd_poly_unbiased(x, y, degree=2) == pytest.approx(_mmd_by_loops(x, y, 2), rel=1e-12)


def test_kpd_is_consistent_with_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(3)
    reference = rng.normal(size=(3000, 4))
    same, same_error = metrics.kpd(reference, rng.normal(size=(3000, 4)), batch_size=1000)
    assert abs(same) < 3 * same_error + 1e-5
    small, _ = metrics.kpd(reference, rng.normal(0.2, 1.0, size=(3000, 4)), batch_size=1000)
    large, _ = metrics.kpd(reference, rng.normal(0.5, 1.0, size=(3000, 4)), batch_size=1000)
    assert same < small < large


def test_scale_by_reference_uses_the_reference_max_and_leaves_zero_columns():
    reference = np.array([[1.0, 0.0, -4.0], [-2.0, 0.0, 2.0]])
    other = np.array([[4.0, 3.0, 8.0]])
    ref_scaled, other_scaled = metrics.scale_by_reference(reference, other)
    np.testing.assert_allclose(ref_scaled, [[0.5, 0.0, -1.0], [-1.0, 0.0, 0.5]])
    np.testing.assert_allclose(other_scaled, [[2.0, 3.0, 2.0]])


# ----------------------------------------------------------------------------- classifier test


@pytest.mark.parametrize("model", ["boosted-trees", "mlp"])
def test_classifier_auc_is_one_half_for_identical_distributions(model):
    rng = np.random.default_rng(4)
    out = metrics.classifier_auc(rng.normal(size=(2000, 6)), rng.normal(size=(2000, 6)), model=model)
    assert abs(out["auc"] - 0.5) < 3 * out["auc_error"]
    assert 0.005 < out["auc_error"] < 0.03  # ~ 1/sqrt(12 * 400) for 400 rows per class
    assert out["jsd"] < 0.02
    assert out["n_test"] == 800
    assert out["converged"] and 1 <= out["best_epoch"] <= out["epochs"]


@pytest.mark.parametrize("model", ["boosted-trees", "mlp"])
def test_classifier_auc_grows_with_the_difference(model):
    rng = np.random.default_rng(5)
    reference = rng.normal(size=(2000, 6))
    aucs = [
        metrics.classifier_auc(reference, rng.normal(shift, 1.0, size=(2000, 6)), model=model)["auc"]
        for shift in (0.1, 0.4, 2.0)
    ]
    assert aucs[0] < aucs[1] < aucs[2]
    assert aucs[2] > 0.99


def test_classifier_auc_rejects_unknown_models_and_tiny_samples():
    x = np.zeros((100, 2))
    with pytest.raises(ValueError, match="model"):
        metrics.classifier_auc(x, x, model="svm")
    with pytest.raises(ValueError, match="at least 50"):
        metrics.classifier_auc(x[:20], x[:20])


def test_the_split_depends_only_on_sizes_so_two_representations_share_it():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(300, 3)), rng.normal(size=(250, 3))
    data, labels, split = metrics.two_sample_split(a, b, n_max=200, seed=3)
    data_2, labels_2, split_2 = metrics.two_sample_split(np.exp(a), np.exp(b), n_max=200, seed=3)
    np.testing.assert_array_equal(labels, labels_2)
    np.testing.assert_allclose(np.exp(data), data_2, rtol=1e-6)
    assert [len(part) for part in split] == [240, 80, 80]
    assert all(np.array_equal(p, q) for p, q in zip(split, split_2, strict=True))
    assert labels.sum() == 200


# ----------------------------------------------------------------------------- the numpy network


def test_roc_auc_matches_scikit_learn_with_ties_and_weights():
    from sklearn.metrics import roc_auc_score

    from fastsim.validation.classifier import roc_auc

    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.normal(labels * 0.5, 1.0), 1)  # rounded: many ties
    weights = rng.integers(0, 4, 500)
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert roc_auc(scores, labels, weights) == pytest.approx(
        roc_auc_score(labels, scores, sample_weight=weights), abs=1e-12)


def test_the_network_learns_a_nonlinear_boundary_converges_and_is_deterministic():
    from fastsim.validation.classifier import roc_auc, train_mlp

    rng = np.random.default_rng(8)
    x = rng.normal(size=(3000, 4)).astype(np.float32)
    y = (np.hypot(x[:, 0], x[:, 1]) > 1.2).astype(np.float32)  # a circle: no linear model separates it
    kwargs = dict(hidden=(32, 32), learning_rate=3e-3, batch_size=100, max_epochs=60, patience=5, seed=1)
    fit = train_mlp(x[:2000], y[:2000], x[2000:2500], y[2000:2500], **kwargs)
    assert roc_auc(fit.model.logits(x[2500:]), y[2500:]) > 0.97
    assert fit.converged and fit.best_epoch < fit.epochs_run <= 60
    assert min(fit.val_loss) == fit.val_loss[fit.best_epoch - 1]
    again = train_mlp(x[:2000], y[:2000], x[2000:2500], y[2000:2500], **kwargs)
    np.testing.assert_array_equal(again.model.logits(x[2500:]), fit.model.logits(x[2500:]))


def test_a_network_stopped_by_its_epoch_cap_says_it_did_not_converge():
    from fastsim.validation.classifier import train_mlp

    rng = np.random.default_rng(9)
    x = rng.normal(size=(600, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    fit = train_mlp(x[:400], y[:400], x[400:], y[400:], hidden=(8,), learning_rate=1e-3, max_epochs=3, seed=0)
    assert not fit.converged and fit.epochs_run == 3
