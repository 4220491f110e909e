"""Tests of pmstudy.schemes: the registry and the simple schemes."""

from __future__ import annotations

import numpy as np
import pytest

from pmstudy import schemes
from pmstudy.errors import SpecError
from pmstudy.schemes import SCHEMES, check_scheme, initial_centers, scheme_analog


def well_separated(k: int = 3, d: int = 2, m: int = 600, seed: int = 0):
    """A sample from k clusters 40 sigma apart, and its true centers."""
    rng = np.random.default_rng(seed)
    truth = 40.0 * np.eye(k, d)
    labels = np.arange(m) % k
    x = truth[labels] + rng.standard_normal((m, d))
    return x, truth


def run(name, x, k, seed=0, truth=None, **params):
    if truth is None:
        truth = np.zeros((k, x.shape[1]))
    return initial_centers(
        name, x, k, np.random.default_rng(seed), centers_true=truth, params=params
    )


def rows_in(rows: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Index in x of each row of `rows`, by a plain loop; -1 if absent."""
    out = []
    for row in rows:
        hits = [t for t in range(x.shape[0]) if np.array_equal(x[t], row)]
        out.append(hits[0] if hits else -1)
    return np.array(out)


# --------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------


def test_every_scheme_has_an_analog_sentence():
    for name in SCHEMES:
        sentence = scheme_analog(name)
        assert sentence.endswith(".") and len(sentence) > 20


def test_unknown_scheme_lists_the_valid_names():
    with pytest.raises(SpecError) as info:
        check_scheme("magic", {}, k=3, d=2)
    assert info.value.field == "schemes"
    for name in SCHEMES:
        assert repr(name) in str(info.value)
    with pytest.raises(SpecError):
        scheme_analog("magic")


def test_unknown_parameter_is_refused():
    with pytest.raises(SpecError) as info:
        check_scheme("forgy", {"size": 3}, k=3, d=2)
    assert info.value.field == "schemes.forgy.size"


@pytest.mark.parametrize("name", SCHEMES)
def test_same_seed_same_centers(name):
    x, truth = well_separated(seed=3)
    a = run(name, x, 3, seed=11, truth=truth)
    b = run(name, x, 3, seed=11, truth=truth)
    np.testing.assert_array_equal(a, b)
    c = run(name, x, 3, seed=12, truth=truth)
    assert not np.array_equal(a, c)


DEGENERATE = {
    "identical": np.full((20, 3), 1.5),
    "two values": np.repeat(np.array([[0.0, 1.0, 2.0], [5.0, 5.0, 5.0]]), 10, axis=0),
    "k + 1 points": np.random.default_rng(0).standard_normal((4, 3)),
    "k points": np.random.default_rng(1).standard_normal((3, 3)),
    "d >> m": np.random.default_rng(2).standard_normal((5, 200)),
    "signed zeros": np.array([[0.0, 0.0, 0.0], [-0.0, 0.0, -0.0]] * 3),
    "far offset": 1e9 + np.random.default_rng(3).standard_normal((30, 3)),
}


@pytest.mark.parametrize("data", DEGENERATE, ids=list(DEGENERATE))
@pytest.mark.parametrize("name", SCHEMES)
def test_degenerate_data_give_finite_centers(name, data):
    x = DEGENERATE[data]
    centers = run(name, x, 3, seed=5, truth=np.zeros((3, x.shape[1])))
    assert centers.shape == (3, x.shape[1])
    assert np.all(np.isfinite(centers))


@pytest.mark.parametrize(
    ("x", "k", "field"),
    [
        (np.zeros((2, 2)), 3, "m"),
        (np.array([[0.0, np.nan], [1.0, 1.0], [2.0, 2.0]]), 2, "x"),
        (np.array([[0.0, 1e200], [1.0, 1.0], [2.0, 2.0]]), 2, "x"),
        (np.zeros(5), 2, "x"),
        (np.zeros((5, 2)), 0, "k"),
    ],
)
def test_bad_data_are_refused(x, k, field):
    with pytest.raises(SpecError) as info:
        initial_centers(
            "forgy",
            x,
            k,
            np.random.default_rng(0),
            centers_true=np.zeros((max(k, 1), 2)),
            params={},
        )
    assert info.value.field == field


def test_true_centers_of_the_wrong_shape_are_refused():
    with pytest.raises(SpecError) as info:
        initial_centers(
            "forgy",
            np.zeros((5, 2)),
            2,
            np.random.default_rng(0),
            centers_true=np.zeros((3, 2)),
            params={},
        )
    assert info.value.field == "centers_true"


# --------------------------------------------------------------------------
# forgy
# --------------------------------------------------------------------------


def test_forgy_picks_distinct_data_points():
    x = np.random.default_rng(0).standard_normal((50, 2))
    for seed in range(20):
        centers = run("forgy", x, 5, seed=seed)
        index = rows_in(centers, x)
        assert np.all(index >= 0)
        assert np.unique(index).size == 5


def test_forgy_is_uniform_over_the_data():
    m, k, trials = 10, 3, 6000
    x = np.arange(m, dtype=float)[:, None]
    counts = np.zeros(m)
    rng = np.random.default_rng(0)
    for _ in range(trials):
        centers = initial_centers(
            "forgy", x, k, rng, centers_true=np.zeros((k, 1)), params={}
        )
        counts[centers[:, 0].astype(int)] += 1
    # Each point is chosen with probability k / m; 5 binomial standard errors.
    p = k / m
    assert np.all(np.abs(counts - trials * p) < 5 * np.sqrt(trials * p * (1 - p)))


def test_forgy_prefers_distinct_values():
    # Eight copies of one value and one each of two others: with k = 3 the
    # only way to have distinct values is to take all three.
    x = np.array([[0.0, 0.0]] * 8 + [[1.0, 0.0], [0.0, 1.0]])
    for seed in range(30):
        centers = run("forgy", x, 3, seed=seed)
        assert np.unique(centers, axis=0).shape[0] == 3


def test_forgy_with_too_few_values_never_repeats_an_index():
    x = np.array([[0.0], [0.0], [0.0], [1.0], [1.0]])
    for seed in range(30):
        rng = np.random.default_rng(seed)
        index = schemes._distinct_indices(x, 4, rng)
        assert np.unique(index).size == 4
        # Both distinct values are among the chosen ones.
        assert set(x[index, 0]) == {0.0, 1.0}
    everything = schemes._distinct_indices(x, 5, np.random.default_rng(0))
    assert sorted(everything) == [0, 1, 2, 3, 4]


def test_forgy_on_identical_points_repeats_the_point():
    x = np.full((6, 2), 3.0)
    np.testing.assert_array_equal(run("forgy", x, 4), np.full((4, 2), 3.0))


# --------------------------------------------------------------------------
# kmeans++
# --------------------------------------------------------------------------


def test_kmeans_plusplus_picks_one_point_per_separated_cluster():
    x, truth = well_separated(k=4, d=3, m=400)
    for seed in range(10):
        centers = run("kmeans++", x, 4, seed=seed)
        assert np.all(rows_in(centers, x) >= 0)
        nearest = np.argmin(((centers[:, None, :] - truth) ** 2).sum(-1), axis=1)
        assert sorted(nearest) == [0, 1, 2, 3]


def test_kmeans_plusplus_with_too_few_values_uses_every_value():
    x = np.repeat(np.array([[0.0, 0.0], [4.0, 0.0]]), 5, axis=0)
    centers = run("kmeans++", x, 3)
    assert {tuple(c) for c in centers} == {(0.0, 0.0), (4.0, 0.0)}


def test_kmeans_plusplus_on_identical_points():
    x = np.full((10, 2), -2.0)
    np.testing.assert_array_equal(run("kmeans++", x, 3), np.full((3, 2), -2.0))


# --------------------------------------------------------------------------
# uniform-box
# --------------------------------------------------------------------------


def test_uniform_box_is_uniform_in_the_box():
    x = np.array([[0.0, -1.0], [2.0, 3.0], [1.0, 0.0]])
    draws = np.concatenate([run("uniform-box", x, 3, seed=s) for s in range(4000)])
    assert np.all(draws >= [0.0, -1.0]) and np.all(draws <= [2.0, 3.0])
    # Mean and variance of U(a, b): (a + b) / 2 and (b - a)^2 / 12; 5 standard
    # errors of a mean of 12000 draws.
    width = np.array([2.0, 4.0])
    tolerance = 5 * width / np.sqrt(12 * draws.shape[0])
    assert np.all(np.abs(draws.mean(axis=0) - [1.0, 1.0]) < tolerance)
    # A uniform's sample variance has relative standard error
    # sqrt((9/5 - 1) / n) = 0.008 at n = 12000; 0.05 is over 5 of them.
    np.testing.assert_allclose(draws.var(axis=0), width**2 / 12, rtol=0.05)


def test_uniform_box_flat_coordinate_takes_the_constant():
    x = np.array([[0.0, 7.0], [1.0, 7.0], [5.0, 7.0]])
    centers = run("uniform-box", x, 3)
    np.testing.assert_array_equal(centers[:, 1], 7.0)


# --------------------------------------------------------------------------
# kmeans
# --------------------------------------------------------------------------


def match_to(centers: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Rows of `centers` reordered to their nearest reference rows (a loop)."""
    out = np.empty_like(reference)
    for center in centers:
        j = np.argmin([np.sum((center - r) ** 2) for r in reference])
        out[j] = center
    return out


def test_kmeans_on_separated_data_finds_the_cluster_means():
    x, truth = well_separated(k=3, d=2, m=900)
    labels = np.arange(900) % 3
    cluster_means = np.array([x[labels == j].mean(axis=0) for j in range(3)])
    for seed in range(5):
        centers = match_to(run("kmeans", x, 3, seed=seed), truth)
        # The clusters are 40 sigma apart, so k-means ends at the exact
        # partition and its centers are those clusters' means, to rounding.
        np.testing.assert_allclose(centers, cluster_means, rtol=0, atol=1e-12)
        # and these are within 5 standard errors (1 / sqrt(300)) of the truth.
        assert np.all(np.abs(centers - truth) < 5 / np.sqrt(300))


def test_kmeans_with_exactly_k_values_returns_them():
    values = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    x = np.repeat(values, [10, 1, 5], axis=0)
    centers = run("kmeans", x, 3)
    assert {tuple(c) for c in centers} == {tuple(v) for v in values}


# --------------------------------------------------------------------------
# random-partition
# --------------------------------------------------------------------------


def test_random_partition_centers_are_near_the_grand_mean():
    m, k = 3000, 3
    x, _ = well_separated(k=k, d=2, m=m)
    grand = x.mean(axis=0)
    spread = x.std(axis=0)
    # Each center is a mean of m / k points drawn without replacement:
    # standard error spread * sqrt(1 / (m / k) - 1 / m) per coordinate.
    tolerance = 5 * spread * np.sqrt(k / m - 1 / m)
    for seed in range(10):
        centers = run("random-partition", x, k, seed=seed)
        assert np.all(np.abs(centers - grand) < tolerance)
        # Equal parts: the centers average to the grand mean exactly.
        np.testing.assert_allclose(centers.mean(axis=0), grand, atol=1e-12)


def test_random_partition_is_a_partition():
    x = np.arange(7, dtype=float)[:, None] ** 2
    centers = run("random-partition", x, 3, seed=4)
    # Reproduce the split independently from the documented draw.
    order = np.random.default_rng(4).permutation(7)
    expected = [
        np.mean([x[order[t], 0] for t in range(7) if t % 3 == j]) for j in range(3)
    ]
    np.testing.assert_allclose(centers[:, 0], expected, rtol=1e-15)


# --------------------------------------------------------------------------
# gaussian
# --------------------------------------------------------------------------


def test_gaussian_draws_have_the_data_moments():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 2)) @ np.array([[2.0, 0.0], [1.0, 0.5]]) + [3.0, -1.0]
    draws = np.concatenate([run("gaussian", x, 3, seed=s) for s in range(3000)])
    n = draws.shape[0]
    mean = x.mean(axis=0)
    covariance = np.cov(x, rowvar=False)
    standard_error = np.sqrt(np.diag(covariance) / n)
    assert np.all(np.abs(draws.mean(axis=0) - mean) < 5 * standard_error)
    # Gaussian sample covariance: Var(S_ij) = (S_ii S_jj + S_ij^2) / n.
    spread = np.sqrt(
        (np.outer(np.diag(covariance), np.diag(covariance)) + covariance**2) / n
    )
    assert np.all(np.abs(np.cov(draws, rowvar=False) - covariance) < 5 * spread)


def test_gaussian_with_singular_covariance_stays_in_the_data_span():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 30))  # d > m: rank 3 covariance
    centers = run("gaussian", x, 3, seed=2)
    basis, _ = np.linalg.qr((x - x.mean(axis=0)).T)
    offset = centers - x.mean(axis=0)
    residual = offset - offset @ basis @ basis.T
    assert np.max(np.abs(residual)) < 1e-12 * np.max(np.abs(offset))
    identical = np.full((5, 2), 4.0)
    np.testing.assert_allclose(run("gaussian", identical, 3), 4.0, rtol=1e-15)


# --------------------------------------------------------------------------
# near-pair
# --------------------------------------------------------------------------


@pytest.mark.parametrize("gap", [0.01, 1e-6, 2.0])
def test_near_pair_has_a_pair_at_the_gap(gap):
    x, _ = well_separated(k=4, d=3, m=100)
    centers = run("near-pair", x, 4, seed=1, gap=gap)
    # Rounding of coordinates of size 40 costs 1e-14 absolute.
    assert np.linalg.norm(centers[1] - centers[0]) == pytest.approx(gap, abs=1e-13)
    index = rows_in(np.delete(centers, 1, axis=0), x)
    assert np.all(index >= 0) and np.unique(index).size == 3


def test_near_pair_parameters():
    assert check_scheme("near-pair", {}, k=3, d=2) == {"gap": 0.01}
    for bad in [0.0, -1.0, np.nan, "small", True]:
        with pytest.raises(SpecError) as info:
            check_scheme("near-pair", {"gap": bad}, k=3, d=2)
        assert info.value.field == "schemes.near-pair.gap"
    with pytest.raises(SpecError, match="k >= 2"):
        check_scheme("near-pair", {}, k=1, d=2)


# --------------------------------------------------------------------------
# perturbed-truth
# --------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_perturbed_truth_scatters_around_the_truth_with_its_scale(scale):
    truth = np.array([[0.0, 0.0], [5.0, 1.0], [-3.0, 2.0]])
    x = np.zeros((5, 2))  # not read by the scheme
    noise = np.concatenate(
        [
            run("perturbed-truth", x, 3, seed=s, truth=truth, scale=scale) - truth
            for s in range(2000)
        ]
    )
    n = noise.size
    assert abs(noise.mean()) < 5 * scale / np.sqrt(n)
    # Sample variance of a normal: relative standard error sqrt(2 / n).
    assert abs(noise.var() / scale**2 - 1) < 5 * np.sqrt(2 / n)


def test_perturbed_truth_with_zero_scale_is_the_truth():
    truth = np.array([[1.0, 2.0], [3.0, 4.0]])
    centers = run("perturbed-truth", np.zeros((3, 2)), 2, truth=truth, scale=0.0)
    np.testing.assert_array_equal(centers, truth)
    assert check_scheme("perturbed-truth", {}, k=2, d=2) == {"scale": 0.5}
    with pytest.raises(SpecError) as info:
        check_scheme("perturbed-truth", {"scale": -0.1}, k=2, d=2)
    assert info.value.field == "schemes.perturbed-truth.scale"
