"""Hard cases of fit_em: each with a defined, checked result and no NaN or inf."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp

from pmstudy.em import END_BUDGET, END_CONVERGED, EMResult, fit_em

BACKENDS = ["numpy", "numba"]


def assert_all_finite(result: EMResult) -> None:
    assert np.all(np.isfinite(result.centers))
    assert np.all(np.isfinite(result.loglik))


def loop_em(x: np.ndarray, mu: np.ndarray, n_steps: int) -> np.ndarray:
    """Independent plain EM on one data set (m, d) from one start (k, d)."""
    mu = mu.copy()
    for _ in range(n_steps):
        logp = -0.5 * ((x[:, None, :] - mu[None]) ** 2).sum(axis=2)
        w = np.exp(logp - logsumexp(logp, axis=1, keepdims=True))
        mass = w.sum(axis=0)
        for j in np.flatnonzero(mass > 0):
            mu[j] = (w[:, j] @ x) / mass[j]
    return mu


def loop_loglik(x: np.ndarray, mu: np.ndarray) -> float:
    d = x.shape[1]
    logp = -0.5 * ((x[:, None, :] - mu[None]) ** 2).sum(axis=2)
    lse = logsumexp(logp, axis=1) - np.log(mu.shape[0])
    return float(np.mean(lse) - 0.5 * d * np.log(2 * np.pi))


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_points_identical(backend: str) -> None:
    # Every center with any responsibility moves onto the single point: one
    # step, then a zero step, which is an exact fixed point.
    point = np.array([1.5, -2.0])
    data = np.broadcast_to(point, (1, 40, 2)).copy()
    init = np.array([[[[0.0, 0.0], [3.0, 1.0], [1.0, -1.0]]]])
    result = fit_em(data, init, max_iter=100, tol=1e-10, backend=backend)
    assert_all_finite(result)
    assert result.end[0, 0] == END_CONVERGED
    np.testing.assert_allclose(result.centers[0, 0], np.tile(point, (3, 1)), atol=1e-14)
    # Density at the point is N(0; 0, I) whatever k: -log(2 pi) in d = 2.
    assert result.loglik[0, 0] == pytest.approx(-np.log(2 * np.pi), abs=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicated_points_match_loop(backend: str) -> None:
    rng = np.random.default_rng(11)
    base = rng.normal(scale=2.0, size=(30, 2))
    data = np.repeat(base, 4, axis=0)[None]  # every point four times
    init = rng.normal(size=(1, 3, 3, 2))
    result = fit_em(data, init, max_iter=300, tol=1e-9, backend=backend)
    assert_all_finite(result)
    for s in range(3):
        expected = loop_em(data[0], init[0, s], int(result.n_iter[0, s]))
        np.testing.assert_allclose(result.centers[0, s], expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_far_center_is_starved_and_kept(backend: str) -> None:
    rng = np.random.default_rng(12)
    data = rng.standard_normal((1, 200, 2))
    far = np.array([1e3, -1e3])
    init = np.array([[[[-0.5, 0.0], [0.5, 0.0], far]]])
    result = fit_em(data, init, max_iter=500, tol=1e-8, backend=backend)
    assert_all_finite(result)
    assert result.starved[0, 0]
    # No point gives it weight (its logits trail by ~1e6): it stays put.
    np.testing.assert_array_equal(result.centers[0, 0, 2], far)
    expected = loop_em(data[0], init[0, 0], int(result.n_iter[0, 0]))
    np.testing.assert_allclose(result.centers[0, 0], expected, rtol=0, atol=1e-10)
    assert result.loglik[0, 0] == pytest.approx(
        loop_loglik(data[0], result.centers[0, 0]), abs=1e-10
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_separation_1e4(backend: str) -> None:
    rng = np.random.default_rng(13)
    truth = np.array([[0.0, 0.0], [1e4, 0.0], [0.0, 1e4]]) + 5e3
    labels = rng.integers(0, 3, size=300)
    data = (truth[labels] + rng.standard_normal((300, 2)))[None]
    init = (truth + rng.normal(scale=3.0, size=(2, 3, 2)))[None]
    result = fit_em(data, init, max_iter=100, tol=1e-9, backend=backend)
    assert_all_finite(result)
    assert np.all(result.end == END_CONVERGED)
    for s in range(2):
        # Each center is its cluster's mean: responsibilities are exactly 0/1.
        means = np.array([data[0][labels == j].mean(axis=0) for j in range(3)])
        # Relative 1e-14 at coordinates of 1e4.
        np.testing.assert_allclose(result.centers[0, s], means, rtol=0, atol=1e-9)
        assert result.loglik[0, s] == pytest.approx(
            loop_loglik(data[0], result.centers[0, s]), abs=1e-9
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_dimension_300(backend: str) -> None:
    rng = np.random.default_rng(14)
    d = 300
    truth = rng.normal(scale=0.3, size=(3, d))
    labels = rng.integers(0, 3, size=400)
    data = (truth[labels] + rng.standard_normal((400, d)))[None]
    init = (truth + rng.normal(scale=0.05, size=(2, 3, d)))[None]
    result = fit_em(data, init, max_iter=60, tol=1e-8, backend=backend)
    assert_all_finite(result)
    for s in range(2):
        expected = loop_em(data[0], init[0, s], int(result.n_iter[0, s]))
        np.testing.assert_allclose(result.centers[0, s], expected, rtol=0, atol=1e-10)
        assert result.loglik[0, s] == pytest.approx(
            loop_loglik(data[0], result.centers[0, s]), abs=1e-10
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_center(backend: str) -> None:
    rng = np.random.default_rng(15)
    data = rng.normal(loc=3.0, size=(2, 50, 4))
    init = rng.normal(size=(2, 2, 1, 4))
    result = fit_em(data, init, max_iter=10, tol=1e-12, backend=backend)
    assert_all_finite(result)
    # k = 1: the first step lands on the sample mean, the second is zero.
    assert np.all(result.end == END_CONVERGED)
    assert np.all(result.n_iter == 2)
    means = data.mean(axis=1)
    np.testing.assert_allclose(
        result.centers[:, :, 0],
        np.broadcast_to(means[:, None], (2, 2, 4)),
        rtol=0,
        atol=1e-13,
    )
    spread = ((data - means[:, None]) ** 2).sum(axis=2).mean(axis=1)
    expected = -0.5 * spread - 2 * np.log(2 * np.pi)
    np.testing.assert_allclose(
        result.loglik, np.broadcast_to(expected[:, None], (2, 2)), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_m_equals_k_plus_one(backend: str) -> None:
    rng = np.random.default_rng(16)
    data = rng.normal(scale=2.0, size=(3, 4, 2))
    init = rng.normal(scale=2.0, size=(3, 2, 3, 2))
    result = fit_em(data, init, max_iter=20_000, tol=1e-8, backend=backend)
    assert_all_finite(result)
    assert not np.any(result.end == END_BUDGET)
    for r in range(3):
        for s in range(2):
            expected = loop_em(data[r], init[r, s], int(result.n_iter[r, s]))
            np.testing.assert_allclose(
                result.centers[r, s], expected, rtol=0, atol=1e-9
            )
