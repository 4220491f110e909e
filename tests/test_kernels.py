"""The numba kernels: fast exp over its whole range, fused and blocked EM passes."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

from pmstudy._kernel_large import BLOCK, em_steps, padded_dimension
from pmstudy._kernel_small import small_kernel
from pmstudy._kernels import centered_points_last, loglik_runs, use_small_kernel
from pmstudy.fastexp import fast_exp2, fast_exp2_array

TINY = np.finfo(np.float64).tiny  # smallest normal


def exp2_inputs() -> np.ndarray:
    """The whole domain t <= 0: a dense sweep, near 0, the low end, specials."""
    rng = np.random.default_rng(0)
    sweep = np.linspace(-1100.0, 0.0, 1_000_003)
    near_zero = -rng.uniform(0.0, 1e-3, 10_000)
    unit = -rng.uniform(0.0, 1.0, 100_000)
    low_end = np.linspace(-1023.6, -1021.0, 100_001)  # normal -> subnormal -> 0
    # Where the range reduction switches n: the half-integers and their
    # neighbours.
    halves = np.arange(-1100, 1) + 0.5
    halves = np.concatenate(
        [halves, np.nextafter(halves, -np.inf), np.nextafter(halves, np.inf)]
    )
    special = np.array([0.0, -0.0, -1.0, -0.5, -1022.0, -1022.5, -1023.0, -1074.0])
    t = np.concatenate([sweep, near_zero, unit, low_end, halves, special])
    return t[t <= 0.0]


def test_fast_exp2_normal_range_within_1_ulp() -> None:
    t = exp2_inputs()
    expected = np.exp2(t)
    got = fast_exp2_array(t)
    normal = expected >= TINY
    ulps = np.abs(got[normal] - expected[normal]) / np.spacing(expected[normal])
    # A degree-11 fit with relative error 2e-17 plus Horner's rounding, against
    # np.exp2, itself within an ulp of exact: 1 ulp was measured, 2 allowed.
    assert ulps.max() <= 2
    assert ulps.mean() < 0.25


def test_fast_exp2_against_extended_precision() -> None:
    mpmath.mp.dps = 40
    t = -np.random.default_rng(1).uniform(0.0, 1000.0, 3000)
    got = fast_exp2_array(t)
    worst = max(
        abs(mpmath.mpf(float(g)) / mpmath.power(2, mpmath.mpf(float(s))) - 1)
        for s, g in zip(t, got, strict=True)
    )
    # 1.2 half-ulps was measured; 2 half-ulps (2.2e-16) allowed.
    assert float(worst) <= 2.0**-52


def test_fast_exp2_low_end_is_subnormal_then_zero() -> None:
    t = exp2_inputs()
    got = fast_exp2_array(t)
    expected = np.exp2(t)
    sub = expected < TINY
    assert sub.sum() > 10_000
    # The flush below t = -1022.5 loses at most 2^-1022.5 (1.6e-308); above it
    # the subnormal is one rounding of the exact product.
    assert np.abs(got[sub] - expected[sub]).max() <= 2.0**-1022.5
    kept = sub & (t >= -1022.5)
    step = np.nextafter(0.0, 1.0)
    assert np.abs(got[kept] - expected[kept]).max() <= step
    assert np.all(got[t < -1022.5] == 0.0)
    assert np.all(got >= 0.0)


def test_fast_exp2_specials() -> None:
    assert fast_exp2(0.0) == 1.0
    assert fast_exp2(-0.0) == 1.0
    assert fast_exp2(-1.0) == 0.5
    assert fast_exp2(-1022.0) == TINY
    assert fast_exp2(-np.inf) == 0.0
    assert fast_exp2(-1e300) == 0.0


def test_fast_exp2_is_monotone_on_a_fine_grid() -> None:
    # Softmax weights must not reorder: check monotonicity where it matters.
    t = np.linspace(-60.0, 0.0, 600_001)
    assert np.all(np.diff(fast_exp2_array(t)) >= 0)


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
    "rows",
    [
        [0, 0],  # k = 2, both centers equal
        [0, 1],
        [0, 0, 1],  # k = 3: every way two of three can tie
        [0, 1, 0],
        [1, 0, 0],
        [0, 0, 0],
        [0, 1, 2],
    ],
)
def test_fused_pass_with_tied_logits_matches_numpy(rows: list[int]) -> None:
    # For k = 2 and 3 the kernel computes the exps of the non-largest logits
    # only and puts them back in place by selects: equal centers give exactly
    # tied logits at every point, the case where the selects could go wrong.
    # Points are scattered so that every ordering of the distinct logits occurs.
    k, d = len(rows), 2
    rng = np.random.default_rng(7 + sum(r * 3**i for i, r in enumerate(rows)))
    distinct = rng.normal(scale=1.5, size=(3, d))
    c = distinct[rows]
    x = rng.normal(scale=3.0, size=(2000, d))
    out = np.empty((k, d + 1))
    small_kernel(k, d).em_pass(np.ascontiguousarray(x.T), c, out)
    sums, counts = numpy_pass(x, c)
    np.testing.assert_allclose(out[:, :d], sums, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(out[:, d], counts, rtol=1e-11)
    for j, r in enumerate(rows):
        twin = rows.index(r)
        # Equal centers must get equal weights, bit for bit.
        np.testing.assert_array_equal(out[j], out[twin])


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
    padded = np.zeros((2, padded_dimension(d), m))
    padded[:, :d] = data.transpose(0, 2, 1)
    em_steps(padded, run_data, centers, path, starved)
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
    padded = np.zeros((2, 4, 300))  # a zero row beyond d, as the kernels pad
    padded[:, :3] = data.transpose(0, 2, 1)
    got = loglik_runs(padded, run_data, centers)
    for b in range(4):
        x = data[run_data[b]]
        dens = np.exp(-0.5 * ((x[:, None] - centers[b][None]) ** 2).sum(axis=2))
        dens = dens.mean(axis=1) / (2 * np.pi) ** 1.5
        assert got[b] == pytest.approx(np.log(dens).mean(), abs=1e-12)


@pytest.mark.parametrize("n_dim", [3, 4, 8])
def test_centered_points_last_is_the_shifted_transpose(n_dim: int) -> None:
    rng = np.random.default_rng(6)
    data = rng.normal(loc=50.0, size=(3, 1000, 3))  # 1000: several layout tiles
    out, shift = centered_points_last(data, n_dim)
    # The mean as a running sum against NumPy's pairwise sum: both within a
    # few ulp of 50 times m, so 1e-12 on the mean.
    np.testing.assert_allclose(shift, data.mean(axis=1), rtol=0, atol=1e-12)
    expected = data.transpose(0, 2, 1) - shift[:, :, None]
    np.testing.assert_array_equal(out[:, :3], expected)
    assert np.all(out[:, 3:] == 0.0)


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
