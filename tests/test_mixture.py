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
    if name == "dataset":
        return {"dataset": {size: n for n, size in DATASET_SIZES.items()}[(k, d)]}
    return {}


DATASET_SIZES = {"iris": (3, 4), "wine": (3, 13), "digits": (10, 64)}

CASES = [
    (name, k, d)
    for name in LAYOUTS
    for k, d in [(2, 1), (3, 2), (3, 5), (5, 4), (10, 12)]
    if name != "dataset" and not (name == "simplex" and d < k - 1)
] + [("dataset", k, d) for k, d in DATASET_SIZES.values()]


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


@pytest.mark.parametrize("name", [n for n in LAYOUTS if n != "dataset"])
def test_one_center_is_at_the_origin(name):
    params = {"centers": [[3.0, 4.0]]} if name == "points" else {}
    centers = layout_centers(name, 1, 2, 2.0, params, np.random.default_rng(0))
    np.testing.assert_array_equal(centers, np.zeros((1, 2)))


@pytest.mark.parametrize("name", ["simplex", "line", "points", "close-pair"])
def test_deterministic_layouts_do_not_touch_the_generator(name):
    rng = np.random.default_rng(5)
    layout_centers(name, 3, 2, 1.0, default_params(name, 3, 2), rng)
    assert rng.random() == np.random.default_rng(5).random()


def test_random_layout_has_one_shape_at_every_separation():
    shapes = []
    for separation in [0.5, 2.0, 9.0]:
        rng = np.random.default_rng(123)
        centers = layout_centers("random", 5, 3, separation, {}, rng)
        shapes.append(centers / separation)
    np.testing.assert_allclose(shapes[1], shapes[0], rtol=1e-13)
    np.testing.assert_allclose(shapes[2], shapes[0], rtol=1e-13)
    other = layout_centers("random", 5, 3, 0.5, {}, np.random.default_rng(124))
    assert not np.allclose(other / 0.5, shapes[0])


def test_random_layout_on_the_sphere():
    rng = np.random.default_rng(8)
    centers = layout_centers("random", 4, 3, 1.0, {"kind": "sphere"}, rng)
    # Points on one sphere about the origin: all norms equal.
    norms = np.linalg.norm(centers, axis=1)
    np.testing.assert_allclose(norms, norms[0], rtol=1e-13)


def test_random_layout_kind_defaults_and_refusals():
    assert check_layout("random", 3, 2, {}) == {"kind": "sphere"}
    assert check_layout("random", 3, 1, {}) == {"kind": "gaussian"}
    centers = layout_centers("random", 4, 1, 2.0, {}, np.random.default_rng(0))
    assert np.min(pairwise_loop(centers)) == pytest.approx(2.0, rel=REL)
    with pytest.raises(SpecError) as info:
        check_layout("random", 3, 1, {"kind": "sphere"})
    assert info.value.field == "layout.kind"
    with pytest.raises(SpecError) as info:
        check_layout("random", 3, 2, {"kind": "cube"})
    assert info.value.field == "layout.kind"


@pytest.mark.parametrize("d", [1, 2, 6])
def test_close_pair_geometry(d):
    s, ratio = 1.7, 4.0
    centers = layout_centers(
        "close-pair", 3, d, s, {"ratio": ratio}, np.random.default_rng(0)
    )
    distances = pairwise_loop(centers)  # pairs (0, 1), (0, 2), (1, 2)
    np.testing.assert_allclose(distances, [s, (ratio + 1) * s, ratio * s], rtol=REL)
    assert check_layout("close-pair", 3, d, {}) == {"ratio": 5.0}


def test_close_pair_with_more_centers_continues_the_line():
    centers = layout_centers("close-pair", 5, 2, 1.0, {"ratio": 3.0}, None)
    np.testing.assert_allclose(np.diff(centers[:, 0]), [1.0, 3.0, 3.0, 3.0], rtol=REL)
    np.testing.assert_array_equal(centers[:, 1], 0.0)
    two = layout_centers("close-pair", 2, 2, 1.0, {}, None)
    assert pairwise_loop(two)[0] == pytest.approx(1.0, rel=REL)


@pytest.mark.parametrize("ratio", [0.5, -1.0, np.inf, "far", True])
def test_close_pair_bad_ratio_is_refused(ratio):
    with pytest.raises(SpecError) as info:
        check_layout("close-pair", 3, 2, {"ratio": ratio})
    assert info.value.field == "layout.ratio"


def mahalanobis_loop(name: str) -> np.ndarray:
    """Pairwise Mahalanobis distances of the class means, pooled within-class
    covariance, by plain loops and a least-squares solve (minimum-norm, so a
    singular covariance is handled like a pseudo-inverse)."""
    from sklearn import datasets

    features, target = getattr(datasets, f"load_{name}")(return_X_y=True)
    classes = sorted(set(target.tolist()))
    n, p = features.shape
    means = [features[target == c].mean(axis=0) for c in classes]
    pooled = np.zeros((p, p))
    for c, mean in zip(classes, means, strict=True):
        for row in features[target == c]:
            pooled += np.outer(row - mean, row - mean)
    pooled /= n - len(classes)
    out = []
    for i, j in itertools.combinations(range(len(classes)), 2):
        diff = means[i] - means[j]
        solved = np.linalg.lstsq(pooled, diff, rcond=1e-10)[0]
        out.append(np.sqrt(diff @ solved))
    return np.array(out)


@pytest.mark.parametrize("name", ["iris", "wine", "digits"])
def test_dataset_centers_are_whitened_class_means(name):
    k, d = DATASET_SIZES[name]
    centers = layout_centers("dataset", k, d, 2.0, {"dataset": name}, None)
    assert centers.shape == (k, d)
    distances = pairwise_loop(centers)
    expected = mahalanobis_loop(name)
    # Same shape up to the common scale; the covariances' condition numbers
    # (up to 4e6 for wine, 2e5 for digits without its null space) cost up to
    # about 1e-9 relative in the two solves.
    np.testing.assert_allclose(
        distances / distances.min(), expected / expected.min(), rtol=1e-7
    )


def test_iris_gives_three_centers_in_four_dimensions():
    assert check_layout("dataset", 3, 4, {"dataset": "iris"}) == {"dataset": "iris"}
    # `name` is the brief's spelling, accepted outside a spec's [layout] table.
    assert check_layout("dataset", 3, 4, {"name": "iris"}) == {"dataset": "iris"}
    centers = layout_centers("dataset", 3, 4, 1.0, {"dataset": "iris"}, None)
    assert centers.shape == (3, 4)


@pytest.mark.parametrize(
    ("k", "d", "params", "match", "field"),
    [
        (3, 5, {"dataset": "iris"}, "k = 3 and d = 4", "layout.dataset"),
        (4, 4, {"dataset": "iris"}, "k = 3 and d = 4", "layout.dataset"),
        (4, 4, {"name": "iris"}, "k = 3 and d = 4", "layout.name"),
        (3, 4, {"dataset": "mnist"}, "'iris', 'wine', 'digits'", "layout.dataset"),
        (3, 4, {}, "'iris', 'wine', 'digits'", "layout.dataset"),
        (3, 4, {"dataset": "iris", "name": "iris"}, "once", "layout.dataset"),
    ],
)
def test_dataset_mismatch_is_refused(k, d, params, match, field):
    with pytest.raises(SpecError, match=match) as info:
        check_layout("dataset", k, d, params)
    assert info.value.field == field


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
