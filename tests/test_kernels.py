"""The numba kernels: fast exp over its whole range, fused and blocked EM passes."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from pmstudy._kernel_large import BLOCK, em_steps, points_last_padded
from pmstudy._kernel_small import small_kernel
from pmstudy._kernels import loglik_runs, use_small_kernel
from pmstudy.fastexp import fast_exp, fast_exp_array, fast_exp_nonpositive

TINY = np.finfo(np.float64).tiny  # smallest normal
SUBNORMAL_STEP = np.nextafter(0.0, 1.0)  # 4.9e-324


def exp_inputs() -> np.ndarray:
    """Every region of exp: a dense sweep, near 0, both ends, specials."""
    rng = np.random.default_rng(0)
    sweep = np.linspace(-760.0, 720.0, 1_000_003)
    near_zero = rng.uniform(-1e-3, 1e-3, 10_000)
    ends = np.concatenate(
        [
            np.linspace(709.0, 709.9, 10_001),  # up to and past overflow
            np.linspace(-708.6, -707.9, 10_001),  # normal -> subnormal
            np.linspace(-745.5, -744.0, 10_001),  # last subnormals -> 0
        ]
    )
    # Points where the range reduction switches n: odd multiples of ln(2)/2.
    halves = (np.arange(-2150, 2050, 2) + 1) * np.log(2.0) / 2
    halves = np.concatenate([np.nextafter(halves, -np.inf), halves])
    halves = np.concatenate([halves, np.nextafter(halves, np.inf)])
    halves = halves[(halves > -746) & (halves < 710)]
    special = np.array(
        [0.0, -0.0, 1.0, -1.0, np.log(2.0), 709.782712893384, 709.7827128933841]
    )
    return np.concatenate([sweep, near_zero, ends, halves, special])


def test_fast_exp_normal_range_within_4_ulp() -> None:
    x = exp_inputs()
    with np.errstate(over="ignore"):
        expected = np.exp(x)
    got = fast_exp_array(x)
    normal = np.isfinite(expected) & (expected >= TINY)
    ulps = np.abs(got[normal] - expected[normal]) / np.spacing(expected[normal])
    # Degree-12 Taylor (truncation < 1.8e-16) plus Horner rounding: a few ulp
    # at most; np.exp is itself within 1 ulp of exact.
    assert ulps.max() <= 4
    assert ulps.mean() < 0.5


def test_fast_exp_subnormal_and_underflow() -> None:
    x = exp_inputs()
    expected = np.exp(np.minimum(x, 0.0))
    got = fast_exp_array(np.minimum(x, 0.0))
    sub = expected < TINY
    assert sub.sum() > 1000
    # Subnormals are on a fixed grid of 4.9e-324: one step is the best any
    # float64 exp can promise there.
    assert np.abs(got[sub] - expected[sub]).max() <= SUBNORMAL_STEP
    assert np.all(got[x < -745.2] == 0.0)
    assert np.all(got >= 0.0)


def test_fast_exp_overflow_and_specials() -> None:
    assert fast_exp(709.78) == np.exp(709.78)
    assert fast_exp(709.79) == np.inf
    assert fast_exp(1e300) == np.inf
    assert fast_exp(np.inf) == np.inf
    assert fast_exp(-np.inf) == 0.0
    assert fast_exp(-1e300) == 0.0
    assert np.isnan(fast_exp(np.nan))
    assert fast_exp(0.0) == 1.0
    assert fast_exp(-0.0) == 1.0


@njit
def _nonpositive_array(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = fast_exp_nonpositive(x[i])
    return out


def test_kernel_exp_equals_fast_exp_where_used() -> None:
    # The kernels' variant drops only overflow and NaN handling.
    x = exp_inputs()
    x = np.concatenate([x[x <= 0], [-np.inf, -1e300]])
    np.testing.assert_array_equal(_nonpositive_array(x), fast_exp_array(x))


def test_fast_exp_is_monotone_on_a_fine_grid() -> None:
    # Softmax weights must not reorder: check monotonicity where it matters.
    x = np.linspace(-40.0, 0.0, 400_001)
    assert np.all(np.diff(fast_exp_array(x)) >= 0)


def numpy_pass(x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sums and counts of one E-step: x (m, d), c (k, d) -> (k, d), (k,)."""
    logits = x @ c.T - 0.5 * (c**2).sum(axis=1)
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    return w.T @ x, w.sum(axis=0)


@pytest.mark.parametrize(("k", "d"), [(1, 1), (2, 3), (3, 2), (5, 1), (4, 7)])
def test_fused_pass_matches_numpy(k: int, d: int) -> None:
    assert use_small_kernel(k, d)
    rng = np.random.default_rng(k * 10 + d)
    x = rng.normal(scale=2.0, size=(1001, d))
    c = rng.normal(size=(k, d))
    out = np.empty((k, d + 1))
    small_kernel(k, d).em_pass(np.ascontiguousarray(x.T), c, out)
    sums, counts = numpy_pass(x, c)
    # Sums of ~1000 terms of size <= 8: reassociated order, 1e-11 relative.
    np.testing.assert_allclose(out[:, :d], sums, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(out[:, d], counts, rtol=1e-11)


@pytest.mark.parametrize(
    ("k", "d", "m"),
    [
        (9, 6, 1),
        (9, 6, BLOCK - 1),
        (9, 6, BLOCK),
        (9, 6, 3 * BLOCK + 17),
        (10, 8, 2 * BLOCK),  # even k and d a multiple of 4: no padding
        (2, 300, 70),  # wide and short
        (12, 3, BLOCK + 1),  # d = 3 padded to 4, in both kernel passes
    ],
)
def test_blocked_steps_match_numpy(k: int, d: int, m: int) -> None:
    # Block edges, odd k (a dummy row) and d not a multiple of four (zero
    # rows): the padding must add exact zeros, so the steps equal plain NumPy.
    assert not use_small_kernel(k, d)
    rng = np.random.default_rng(m + 1000 * d + k)
    data = rng.normal(scale=2.0, size=(2, m, d))
    centers = rng.normal(size=(3, k, d))
    run_data = np.array([0, 1, 1])
    path = np.empty((3, 4, k, d))
    starved = np.zeros((3, 3), dtype=bool)
    em_steps(points_last_padded(data), run_data, centers, path, starved)
    for b in range(3):
        mu = centers[b]
        np.testing.assert_array_equal(path[b, 0], mu)
        for step in range(3):
            sums, counts = numpy_pass(data[run_data[b]], mu)
            fed = counts > 0
            mu = np.where(fed[:, None], sums / np.where(fed, counts, 1)[:, None], mu)
            # Sums of up to ~800 terms of size <= ~10 in another order.
            np.testing.assert_allclose(path[b, step + 1], mu, rtol=0, atol=1e-11)
            assert not starved[b, step]


def test_loglik_kernel_matches_direct_formula() -> None:
    rng = np.random.default_rng(5)
    data = rng.normal(size=(2, 300, 3))
    centers = rng.normal(size=(4, 5, 3))
    run_data = np.array([1, 0, 0, 1])
    got = loglik_runs(data, run_data, centers)
    for b in range(4):
        x = data[run_data[b]]
        dens = np.exp(-0.5 * ((x[:, None] - centers[b][None]) ** 2).sum(axis=2))
        dens = dens.mean(axis=1) / (2 * np.pi) ** 1.5
        assert got[b] == pytest.approx(np.log(dens).mean(), abs=1e-12)


def test_dispatch_thresholds() -> None:
    assert use_small_kernel(3, 2)
    assert use_small_kernel(1, 1)
    assert not use_small_kernel(10, 50)
    assert not use_small_kernel(3, 300)
    assert not use_small_kernel(9, 1)


def test_kernel_threads_one_in_a_dask_worker_and_restored() -> None:
    # Inside a Dask worker's task numba's pool is held to one thread (the
    # workers already use every core); outside it is left alone, and the
    # previous setting comes back afterwards.
    import numba
    from distributed import Client, LocalCluster

    from pmstudy._kernels import kernel_threads

    def threads_inside() -> int:
        with kernel_threads():
            return numba.get_num_threads()

    before = numba.get_num_threads()
    assert threads_inside() == before
    assert numba.get_num_threads() == before
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster,
        Client(cluster) as client,
    ):
        assert client.submit(threads_inside, pure=False).result() == 1
