"""Tests of pmstudy.mixture: layouts, scaling to a separation, sampling."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pmstudy.errors import SpecError
from pmstudy.mixture import LAYOUTS, check_layout, layout_centers, sample_mixture

# Rescaling multiplies by separation / minimum distance and then recomputes a
# distance: a handful of roundings, far below 1e-12 relative.
REL = 1e-12


def pairwise_loop(centers: np.ndarray) -> np.ndarray:
    """All pairwise distances by a plain loop, independent of scipy's pdist."""
    k = centers.shape[0]
    out = []
    for i, j in itertools.combinations(range(k), 2):
        diff = centers[i] - centers[j]
        out.append(np.sqrt(np.sum(diff * diff)))
    return np.array(out)


def default_params(name: str, k: int, d: int) -> dict:
    if name == "points":
        rng = np.random.default_rng(1)
        return {"centers": rng.normal(size=(k, d)).tolist()}
    return {}


CASES = [
    (name, k, d)
    for name in LAYOUTS
    for k, d in [(2, 1), (3, 2), (3, 5), (5, 4), (10, 12)]
    if not (name == "simplex" and d < k - 1)
]


@pytest.mark.parametrize(("name", "k", "d"), CASES)
@pytest.mark.parametrize("separation", [1e-3, 0.7, 3.0, 250.0])
def test_minimum_distance_is_the_separation(name, k, d, separation):
    params = default_params(name, k, d)
    centers = layout_centers(name, k, d, separation, params, np.random.default_rng(0))
    assert centers.shape == (k, d)
    assert centers.dtype == np.float64
    assert np.all(np.isfinite(centers))
    assert np.min(pairwise_loop(centers)) == pytest.approx(separation, rel=REL)


@pytest.mark.parametrize(("k", "d"), [(2, 1), (3, 2), (4, 3), (6, 9), (10, 9)])
def test_simplex_is_regular_and_centered(k, d):
    centers = layout_centers("simplex", k, d, 2.5, {}, np.random.default_rng(0))
    distances = pairwise_loop(centers)
    np.testing.assert_allclose(distances, 2.5, rtol=REL)
    # Centered at the origin; atol relative to the coordinate size 2.5.
    np.testing.assert_allclose(centers.mean(axis=0), 0.0, atol=1e-14 * 2.5 * k)


def test_line_is_equally_spaced_on_one_axis():
    centers = layout_centers("line", 5, 3, 1.5, {}, np.random.default_rng(0))
    np.testing.assert_array_equal(centers[:, 1:], 0.0)
    np.testing.assert_allclose(np.diff(centers[:, 0]), 1.5, rtol=REL)


def test_points_keep_their_ratios():
    params = {"centers": [[0.0], [1.0], [4.0]]}
    centers = layout_centers("points", 3, 1, 2.0, params, np.random.default_rng(0))
    np.testing.assert_allclose(centers[:, 0], [0.0, 2.0, 8.0], rtol=REL, atol=0)

    raw = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5], [10.0, 10.0]])
    centers = layout_centers("points", 4, 2, 0.3, {"centers": raw.tolist()}, None)
    # Same shape about the origin: every coordinate scaled by one factor.
    factor = centers / raw
    np.testing.assert_allclose(factor, factor[0, 0], rtol=REL)
    np.testing.assert_allclose(
        pairwise_loop(centers) / pairwise_loop(raw), factor[0, 0], rtol=REL
    )


def test_points_with_huge_coordinates_stay_finite():
    params = {"centers": [[1e300, 0.0], [0.0, 1e300], [-1e300, 0.0]]}
    centers = layout_centers("points", 3, 2, 1.0, params, None)
    assert np.min(pairwise_loop(centers)) == pytest.approx(1.0, rel=REL)


@pytest.mark.parametrize("name", LAYOUTS)
def test_one_center_is_at_the_origin(name):
    params = {"centers": [[3.0, 4.0]]} if name == "points" else {}
    centers = layout_centers(name, 1, 2, 2.0, params, np.random.default_rng(0))
    np.testing.assert_array_equal(centers, np.zeros((1, 2)))


@pytest.mark.parametrize("name", ["simplex", "line", "points"])
def test_deterministic_layouts_do_not_touch_the_generator(name):
    rng = np.random.default_rng(5)
    layout_centers(name, 3, 2, 1.0, default_params(name, 3, 2), rng)
    assert rng.random() == np.random.default_rng(5).random()


def test_check_layout_normalizes_points():
    params = {"centers": [[0, 1], [2, 3]]}
    assert check_layout("points", 2, 2, params) == {"centers": [[0.0, 1.0], [2.0, 3.0]]}
    assert check_layout("simplex", 3, 2, {}) == {}


def test_simplex_that_does_not_fit_is_refused():
    with pytest.raises(SpecError, match=r"d >= k - 1 = 3") as info:
        check_layout("simplex", 4, 2, {})
    assert info.value.field == "layout.name"
    with pytest.raises(SpecError):
        layout_centers("simplex", 4, 2, 1.0, {}, np.random.default_rng(0))


def test_unknown_layout_lists_the_valid_names():
    with pytest.raises(SpecError) as info:
        check_layout("hexagon", 3, 2, {})
    assert info.value.field == "layout.name"
    for name in LAYOUTS:
        assert repr(name) in str(info.value)


@pytest.mark.parametrize(
    ("centers", "match"),
    [
        ([[0.0, 0.0], [1.0, 1.0]], "3 lists of d = 2"),  # too few points
        ([[0.0], [1.0], [2.0]], "3 lists of d = 2"),  # wrong d
        ([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]], "distinct"),  # duplicate
        ([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], "distinct"),  # all zero
        ([[0.0, 0.0], [1.0, np.nan], [2.0, 2.0]], "finite"),
        ([[0.0, 0.0], [1.0, np.inf], [2.0, 2.0]], "finite"),
        ([[0.0, 0.0], [1.0, "a"], [2.0, 2.0]], "finite"),
        ([[0.0, 0.0], [1.0, True], [2.0, 2.0]], "finite"),
        ([[0.0, 0.0], [1.0, 1e-9], [1.0, 0.0]], "largest pairwise"),
        ("nonsense", "3 lists"),
    ],
)
def test_bad_points_are_refused(centers, match):
    with pytest.raises(SpecError, match=match) as info:
        check_layout("points", 3, 2, {"centers": centers})
    assert info.value.field == "layout.centers"


def test_missing_and_unknown_parameters_are_refused():
    with pytest.raises(SpecError) as info:
        check_layout("points", 2, 2, {})
    assert info.value.field == "layout.centers"
    with pytest.raises(SpecError) as info:
        check_layout("line", 2, 2, {"spacing": 2})
    assert info.value.field == "layout.spacing"


@pytest.mark.parametrize("separation", [0.0, -1.0, np.inf, np.nan, True, "2"])
def test_bad_separation_is_refused(separation):
    with pytest.raises(SpecError) as info:
        layout_centers("line", 3, 2, separation, {}, np.random.default_rng(0))
    assert info.value.field == "separation"


@pytest.mark.parametrize(("k", "d"), [(0, 2), (2, 0), (2.0, 2), (True, 2)])
def test_bad_dimensions_are_refused(k, d):
    with pytest.raises(SpecError):
        check_layout("line", k, d, {})


def test_sample_is_reproducible_and_in_the_documented_order():
    centers = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    x1 = sample_mixture(centers, 1000, np.random.default_rng(42))
    x2 = sample_mixture(centers, 1000, np.random.default_rng(42))
    np.testing.assert_array_equal(x1, x2)

    # Independent reconstruction: labels first, then the noise block.
    rng = np.random.default_rng(42)
    labels = rng.integers(0, 3, size=1000)
    noise = rng.standard_normal((1000, 2))
    expected = np.empty((1000, 2))
    for t in range(1000):
        expected[t] = centers[labels[t]] + noise[t]
    np.testing.assert_array_equal(x1, expected)

    x3 = sample_mixture(centers, 1000, np.random.default_rng(43))
    assert not np.array_equal(x1, x3)


def test_large_sample_matches_the_mixture():
    k, m = 3, 300_000
    centers = np.array([[0.0, 0.0], [3.0, 1.0], [-2.0, 4.0]])
    x = sample_mixture(centers, m, np.random.default_rng(7))
    labels = np.random.default_rng(7).integers(0, k, size=m)

    # Each tolerance is 5 standard errors of the estimate, so a false failure
    # has probability below about 1e-5 per comparison.
    fractions = np.bincount(labels, minlength=k) / m
    np.testing.assert_allclose(
        fractions, 1 / k, atol=5 * np.sqrt((1 / k) * (1 - 1 / k) / m)
    )
    for j in range(k):
        part = x[labels == j]
        n = part.shape[0]
        np.testing.assert_allclose(part.mean(axis=0), centers[j], atol=5 / np.sqrt(n))
        covariance = np.cov(part, rowvar=False)
        # Var of a sample variance of N(0,1) is 2/n; of a covariance, 1/n.
        np.testing.assert_allclose(np.diag(covariance), 1.0, atol=5 * np.sqrt(2 / n))
        assert abs(covariance[0, 1]) < 5 / np.sqrt(n)

    # The pooled sample's mean: the mixture's mean, with the mixture's variance.
    grand = centers.mean(axis=0)
    variance = np.diag((centers - grand).T @ (centers - grand)) / k + 1.0
    assert np.all(np.abs(x.mean(axis=0) - grand) < 5 * np.sqrt(variance / m))


@pytest.mark.parametrize(
    ("centers", "m", "field"),
    [
        (np.zeros((2, 2)), 0, "m"),
        (np.zeros((2, 2)), 2.5, "m"),
        (np.zeros(3), 10, "centers"),
        (np.array([[0.0, np.nan]]), 10, "centers"),
    ],
)
def test_bad_sampling_input_is_refused(centers, m, field):
    with pytest.raises(SpecError) as info:
        sample_mixture(centers, m, np.random.default_rng(0))
    assert info.value.field == field
