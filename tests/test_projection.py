"""Tests of pmstudy.projection: pca-em, spectral and two-round schemes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA

from pmstudy import projection
from pmstudy.errors import SpecError
from pmstudy.mixture import layout_centers, sample_mixture
from pmstudy.schemes import check_scheme, initial_centers

PROJECTION_SCHEMES = ["pca-em", "spectral", "two-round"]


def easy_case(seed: int, k: int = 3, d: int = 8, m: int = 3000):
    """A simplex at separation 10 (offset from the origin), its sample and labels."""
    truth = layout_centers("simplex", k, d, 10.0, {}, None) + 3.0
    x = sample_mixture(truth, m, np.random.default_rng(seed))
    labels = np.random.default_rng(seed).integers(0, k, size=m)  # documented order
    return x, truth, labels


def match_to(centers: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each reference row's nearest center, by a plain loop."""
    return np.array(
        [centers[np.argmin(((centers - r) ** 2).sum(1))] for r in reference]
    )


def run(name, x, k, seed=0, truth=None, **params):
    if truth is None:
        truth = np.zeros((k, x.shape[1]))
    return initial_centers(
        name, x, k, np.random.default_rng(seed), centers_true=truth, params=params
    )


# --------------------------------------------------------------------------
# building blocks against independent computations
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("m", "d"), [(500, 6), (12, 40)])
def test_principal_subspace_matches_scikit_learn_pca(m, d):
    rng = np.random.default_rng(0)
    # Distinct variances along the axes, so the top directions are unique.
    x = rng.standard_normal((m, d)) * np.linspace(3.0, 0.5, d) + 7.0
    mean, basis = projection.principal_subspace(x, 3)
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(basis.T @ basis, np.eye(3), atol=1e-12)
    components = PCA(n_components=3, svd_solver="full").fit(x).components_
    # Same subspace: equal orthogonal projectors (signs and order aside).
    np.testing.assert_allclose(basis @ basis.T, components.T @ components, atol=1e-9)


def em_step_loop(x, centers, weights):
    """One EM step by plain loops over points and components."""
    m, c = x.shape[0], centers.shape[0]
    r = np.zeros((m, c))
    for t in range(m):
        densities = [
            weights[j] * np.exp(-0.5 * np.sum((x[t] - centers[j]) ** 2))
            for j in range(c)
        ]
        r[t] = np.array(densities) / sum(densities)
    new_centers = centers.copy()
    for j in range(c):
        if r[:, j].sum() > 0:
            new_centers[j] = (r[:, j, None] * x).sum(0) / r[:, j].sum()
    return new_centers, r.sum(0) / m


@pytest.mark.parametrize("weights", [None, [0.5, 0.3, 0.2], [0.6, 0.0, 0.4]])
def test_em_step_matches_a_plain_loop(weights):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 2)) * 2.0
    centers = rng.standard_normal((3, 2))
    got_centers, got_weights = projection.em_step(
        x, centers, None if weights is None else np.array(weights)
    )
    expected = em_step_loop(
        x, centers, np.full(3, 1 / 3) if weights is None else weights
    )
    np.testing.assert_allclose(got_centers, expected[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got_weights, expected[1], rtol=1e-12, atol=1e-15)


def test_em_step_with_far_centers_stays_finite():
    x = np.random.default_rng(0).standard_normal((30, 2))
    centers = np.array([[-1e3, 0.0], [1e3, 0.0], [1e5, 1e5]])
    updated, weights = projection.em_step(x, centers)
    assert np.all(np.isfinite(updated))
    # The third center gets no responsibility (exp underflows) and stays put.
    np.testing.assert_array_equal(updated[2], centers[2])
    assert weights[2] == 0.0


def test_farthest_point_order_skips_coinciding_points():
    points = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 0.0], [5.0, 0.0], [1.0, 0.0]])
    order = projection.farthest_point_order(points, 0, 5)
    assert sorted(order.tolist()) == [0, 1, 2, 3, 4]
    # Distinct values first: 0, then the farthest (5, 0), then (1, 0).
    np.testing.assert_array_equal(points[order[:3]], points[[0, 2, 4]])


def test_default_number_of_starts():
    # ceil(k ln k) + 1, computed by hand: 3 ln 3 = 3.30, 10 ln 10 = 23.03.
    assert [projection.default_n_start(k) for k in (1, 2, 3, 10)] == [1, 3, 5, 25]
    assert check_scheme("two-round", {}, k=10, d=2)["n_start"] == 25


# --------------------------------------------------------------------------
# easy case: the schemes recover the truth
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("pca-em", {"base": "kmeans++"}),
        ("spectral", {}),
        # 30 starts: all 3 clusters get one except with probability 3 (2/3)^30,
        # about 1e-5 (the default 5 starts miss a cluster 38% of the time).
        ("two-round", {"n_start": 30}),
    ],
)
def test_easy_case_recovers_the_truth(name, params):
    for seed in range(5):
        x, truth, labels = easy_case(seed)
        centers = match_to(run(name, x, 3, seed=seed, truth=truth, **params), truth)
        # 5 standard errors of a cluster mean per coordinate; the EM bias at
        # separation 10 is far smaller.
        smallest = np.bincount(labels).min()
        assert np.max(np.abs(centers - truth)) < 5 / np.sqrt(smallest)
        if name == "spectral":
            # Perfect clusters: the centers are the clusters' sample means.
            means = np.array([x[labels == j].mean(axis=0) for j in range(3)])
            np.testing.assert_allclose(centers, means, rtol=0, atol=1e-12)


def test_pca_em_without_iterations_lifts_the_base_exactly():
    # With dim = d the projection is a rotation: iterations = 0 gives the
    # Forgy data points back, up to the rounding of rotating there and back.
    x = np.random.default_rng(0).standard_normal((50, 3)) + 10.0
    centers = run("pca-em", x, 3, seed=2, dim=3, iterations=0)
    for center in centers:
        assert np.min(np.max(np.abs(x - center), axis=1)) < 1e-12


def test_pca_em_keeps_the_data_mean_off_the_subspace():
    x, truth, _ = easy_case(0, d=8)
    centers = run("pca-em", x, 3, seed=0, truth=truth)
    _, basis = projection.principal_subspace(x, 2)
    # The centers' parts orthogonal to the subspace all equal the mean's.
    off = (centers - x.mean(axis=0)) - (centers - x.mean(axis=0)) @ basis @ basis.T
    assert np.max(np.abs(off)) < 1e-12


@pytest.mark.parametrize("name", PROJECTION_SCHEMES)
def test_the_truth_is_never_read(name):
    x, truth, _ = easy_case(1)
    a = run(name, x, 3, seed=4, truth=truth)
    b = run(name, x, 3, seed=4, truth=truth + 100.0)
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------
# two-round: pruning and exactly k centers
# --------------------------------------------------------------------------


def two_clusters_and_an_outlier():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((500, 2))
    b = rng.standard_normal((499, 2)) + [20.0, 0.0]
    return np.vstack([a, b, [[200.0, 0.0]]])


def test_two_round_prunes_light_components():
    x = two_clusters_and_an_outlier()
    starts = [0, 1, 2, 3, 500, 501, 502, 999]  # four in A, three in B, the outlier

    def pick(data, n, rng):
        return data[starts]

    pruned = projection.two_round(
        x, 2, np.random.default_rng(0), n_start=8, threshold=0.25, pick=pick
    )
    # The outlier's weight, about 1/1000, is below 0.25 / 8: it is pruned and
    # the two centers are the two clusters (the outlier joins B in round two).
    means = np.array([x[:500].mean(axis=0), x[500:].mean(axis=0)])
    np.testing.assert_allclose(match_to(pruned, means), means, atol=1e-6)
    kept = projection.two_round(
        x, 2, np.random.default_rng(0), n_start=8, threshold=0.0, pick=pick
    )
    assert np.min(np.abs(kept[:, 0] - 200.0)) < 1e-6


def test_two_round_keeps_the_heaviest_when_too_few_survive():
    rng = np.random.default_rng(1)
    x = np.vstack(
        [
            rng.standard_normal((900, 2)),
            rng.standard_normal((50, 2)) + [30.0, 0.0],
            rng.standard_normal((50, 2)) + [0.0, 30.0],
        ]
    )

    def pick(data, n, rng):
        return data[[0, 900, 950]]

    # threshold 1: only weights >= 1/3 survive, that is one component.
    centers = projection.two_round(
        x, 3, np.random.default_rng(0), n_start=3, threshold=1.0, pick=pick
    )
    means = np.array([x[:900].mean(0), x[900:950].mean(0), x[950:].mean(0)])
    np.testing.assert_allclose(match_to(centers, means), means, atol=1e-6)


@pytest.mark.parametrize("n_start", [3, 5, 12])
def test_two_round_returns_k_centers_when_starts_coincide(n_start):
    # Two distinct values for k = 3: starting points must coincide.
    x = np.repeat(np.array([[0.0, 0.0], [4.0, 1.0]]), [7, 5], axis=0)
    centers = run("two-round", x, 3, seed=1, n_start=n_start)
    assert centers.shape == (3, 2) and np.all(np.isfinite(centers))
    # Both values are represented (the traversal takes distinct ones first).
    assert np.max(np.abs(centers[:, 0])) > 1.0 and np.min(np.abs(centers[:, 0])) < 3.0


# --------------------------------------------------------------------------
# hard cases: k finite centers
# --------------------------------------------------------------------------


def hard_cases():
    rng = np.random.default_rng(5)
    overlapping = layout_centers("simplex", 3, 4, 0.1, {}, None)
    return {
        "tiny m": sample_mixture(np.eye(3, 2) * 5, 4, rng),
        "overlapping": sample_mixture(overlapping, 300, rng),
        "d >> m": sample_mixture(np.eye(3, 400) * 5, 12, rng),
        "identical": np.full((10, 5), 2.0),
        "far offset": 1e8 + rng.standard_normal((40, 3)),
    }


HARD = hard_cases()


@pytest.mark.parametrize("case", HARD, ids=list(HARD))
@pytest.mark.parametrize("name", PROJECTION_SCHEMES)
def test_hard_cases_give_k_finite_centers(name, case):
    x = HARD[case]
    for seed in range(3):
        centers = run(name, x, 3, seed=seed)
        assert centers.shape == (3, x.shape[1])
        assert np.all(np.isfinite(centers))


@pytest.mark.parametrize("base", ["forgy", "kmeans", "gaussian", "near-pair"])
def test_pca_em_bases(base):
    x, truth, _ = easy_case(2, m=600)
    centers = run("pca-em", x, 3, seed=0, truth=truth, base=base)
    assert centers.shape == (3, 8) and np.all(np.isfinite(centers))


# --------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------


def test_defaults():
    assert check_scheme("pca-em", {}, k=3, d=8) == {
        "dim": 2,
        "base": "forgy",
        "iterations": 20,
    }
    assert check_scheme("pca-em", {}, k=4, d=2)["dim"] == 2
    assert check_scheme("spectral", {}, k=3, d=8) == {"dim": 3, "iterations": 10}
    assert check_scheme("spectral", {}, k=3, d=2)["dim"] == 2
    assert check_scheme("two-round", {}, k=3, d=8) == {"n_start": 5, "threshold": 0.25}


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("pca-em", {"dim": 9}, "schemes.pca-em.dim"),
        ("pca-em", {"dim": 0}, "schemes.pca-em.dim"),
        ("pca-em", {"base": "perturbed-truth"}, "schemes.pca-em.base"),
        ("pca-em", {"base": "pca-em"}, "schemes.pca-em.base"),
        ("pca-em", {"iterations": -1}, "schemes.pca-em.iterations"),
        ("pca-em", {"iterations": 2.5}, "schemes.pca-em.iterations"),
        ("spectral", {"dim": 9}, "schemes.spectral.dim"),
        ("two-round", {"n_start": 2}, "schemes.two-round.n_start"),
        ("two-round", {"threshold": 1.5}, "schemes.two-round.threshold"),
        ("two-round", {"threshold": -0.1}, "schemes.two-round.threshold"),
    ],
)
def test_bad_parameters_are_refused(name, params, field):
    with pytest.raises(SpecError) as info:
        check_scheme(name, params, k=3, d=8)
    assert info.value.field == field


def test_near_pair_base_needs_two_centers():
    with pytest.raises(SpecError, match="k >= 2"):
        check_scheme("pca-em", {"base": "near-pair"}, k=1, d=3)
