"""Batched EM against an independent per-run loop, batch independence, inputs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp

from pmstudy.em import END_BUDGET, END_CONVERGED, END_MERGING, fit_em, log_likelihood
from pmstudy.errors import SpecError

BACKENDS = ["numpy", "numba"]


def reference_run(x: np.ndarray, centers: np.ndarray, n_steps: int) -> np.ndarray:
    """EM for one data set (m, d) and one start (k, d): written from the math.

    Responsibilities from squared distances with scipy's logsumexp (not the
    logit form the package uses), M-step as weighted means; a center with no
    mass is kept in place.
    """
    mu = centers.copy()
    for _ in range(n_steps):
        sq = ((x[:, None, :] - mu[None, :, :]) ** 2).sum(axis=2)  # (m, k)
        logw = -0.5 * sq - logsumexp(-0.5 * sq, axis=1, keepdims=True)
        w = np.exp(logw)
        mass = w.sum(axis=0)
        fed = mass > 0
        mu[fed] = (w[:, fed].T @ x) / mass[fed, None]
    return mu


def reference_loglik(x: np.ndarray, centers: np.ndarray) -> float:
    """Average log of (1/k) sum_j N(x; mu_j, I), written from the density."""
    m, d = x.shape
    k = centers.shape[0]
    sq = ((x[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
    logn = -0.5 * sq - 0.5 * d * np.log(2 * np.pi)
    return float(np.mean(logsumexp(logn, axis=1) - np.log(k)))


def make_problem(seed: int, n_sets: int, n_starts: int, k: int, d: int, m: int):
    """Mixture data (R, m, d) with spread true centers, random starts."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(scale=3.0 / np.sqrt(d), size=(n_sets, k, d))
    labels = rng.integers(0, k, size=(n_sets, m))
    data = np.take_along_axis(truth, labels[:, :, None], axis=1)
    data = data + rng.standard_normal((n_sets, m, d))
    init = truth[:, None] + rng.normal(
        scale=1.5 / np.sqrt(d), size=(n_sets, n_starts, k, d)
    )
    return data, init


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("k", "d"), [(1, 1), (1, 3), (2, 1), (3, 1), (3, 2), (4, 5), (10, 50)]
)
def test_batched_equals_loop(backend: str, k: int, d: int) -> None:
    data, init = make_problem(10 * k + d, n_sets=3, n_starts=3, k=k, d=d, m=300)
    result = fit_em(data, init, max_iter=150, tol=1e-7, backend=backend)

    # Runs stop at different steps: each is compared after its own count.
    assert len(np.unique(result.n_iter)) > 1 or k == 1
    for r in range(3):
        for s in range(3):
            expected = reference_run(data[r], init[r, s], int(result.n_iter[r, s]))
            # Same arithmetic up to rounding order; EM near a fixed point is a
            # contraction so rounding does not grow: 1e-10 has ample room.
            np.testing.assert_allclose(
                result.centers[r, s], expected, rtol=0, atol=1e-10
            )
            np.testing.assert_allclose(
                result.loglik[r, s],
                reference_loglik(data[r], result.centers[r, s]),
                rtol=0,
                atol=1e-10,
            )
    assert result.centers.shape == init.shape
    assert result.centers.dtype == np.float64
    assert result.n_iter.dtype == np.int64
    assert result.end.dtype == np.int8
    assert result.starved.dtype == bool
    assert not result.starved.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_budget_end(backend: str) -> None:
    data, init = make_problem(1, n_sets=2, n_starts=2, k=3, d=2, m=200)
    result = fit_em(data, init, max_iter=3, tol=1e-12, backend=backend)
    assert np.all(result.end == END_BUDGET)
    assert np.all(result.n_iter == 3)
    for r in range(2):
        for s in range(2):
            np.testing.assert_allclose(
                result.centers[r, s],
                reference_run(data[r], init[r, s], 3),
                rtol=0,
                atol=1e-12,
            )


@pytest.mark.parametrize("backend", BACKENDS)
def test_converged_runs_are_at_fixed_points(backend: str) -> None:
    data, init = make_problem(2, n_sets=4, n_starts=2, k=3, d=2, m=500)
    tol = 1e-8
    result = fit_em(data, init, max_iter=5000, tol=tol, backend=backend)
    assert np.all(result.end == END_CONVERGED)
    for r in range(4):
        for s in range(2):
            # Many more steps land on the fixed point itself: the returned
            # centers are within tol of it (10 tol allows for the estimate of
            # the contraction rate being approximate).
            fixed = reference_run(data[r], result.centers[r, s], 400)
            assert np.max(np.linalg.norm(fixed - result.centers[r, s], axis=1)) < (
                10 * tol
            )


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_composition_is_bit_for_bit_irrelevant(backend: str) -> None:
    data, init = make_problem(3, n_sets=5, n_starts=4, k=3, d=2, m=400)
    full = fit_em(data, init, max_iter=300, tol=1e-9, backend=backend)
    assert len(np.unique(full.n_iter)) > 1

    # Each run alone, and in batches of other shapes and other company.
    for r, s in [(0, 0), (2, 3), (4, 1)]:
        alone = fit_em(
            data[r : r + 1],
            init[r : r + 1, s : s + 1],
            max_iter=300,
            tol=1e-9,
            backend=backend,
        )
        for field in ("centers", "loglik", "n_iter", "end", "starved"):
            np.testing.assert_array_equal(
                getattr(alone, field)[0, 0], getattr(full, field)[r, s]
            )
    subset = fit_em(
        data[[4, 1]], init[[4, 1]][:, ::-1], max_iter=300, tol=1e-9, backend=backend
    )
    for field in ("centers", "loglik", "n_iter", "end", "starved"):
        np.testing.assert_array_equal(
            getattr(subset, field), getattr(full, field)[[4, 1]][:, ::-1]
        )


def test_log_likelihood_matches_density() -> None:
    data, init = make_problem(4, n_sets=2, n_starts=3, k=4, d=3, m=250)
    values = log_likelihood(data, init)
    assert values.shape == (2, 3)
    for r in range(2):
        for s in range(3):
            assert values[r, s] == pytest.approx(
                reference_loglik(data[r], init[r, s]), abs=1e-12
            )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_iter": 0}, "max_iter"),
        ({"max_iter": 2.5}, "max_iter"),
        ({"tol": 0.0}, "tol"),
        ({"tol": float("nan")}, "tol"),
        ({"backend": "cuda"}, "backend"),
    ],
)
def test_bad_options_raise_spec_error(kwargs: dict, field: str) -> None:
    data, init = make_problem(5, 1, 1, 2, 2, 10)
    options = {"max_iter": 10, "tol": 1e-6} | kwargs
    with pytest.raises(SpecError, match=field):
        fit_em(data, init, **options)


def test_bad_arrays_raise_spec_error() -> None:
    data, init = make_problem(6, 2, 1, 2, 2, 10)
    with pytest.raises(SpecError, match="data"):
        fit_em(data[0], init, max_iter=5, tol=1e-6)
    with pytest.raises(SpecError, match="centers_init"):
        fit_em(data, init[:, :, :, :1], max_iter=5, tol=1e-6)
    with pytest.raises(SpecError, match="centers_init"):
        fit_em(data, init[:1], max_iter=5, tol=1e-6)
    bad = data.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(SpecError, match="finite"):
        fit_em(bad, init, max_iter=5, tol=1e-6)


def test_end_kinds_are_distinct() -> None:
    assert len({END_CONVERGED, END_MERGING, END_BUDGET}) == 3
