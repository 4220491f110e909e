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
