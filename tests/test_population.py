"""Population EM step and log-likelihood against independent computations.

References used here, none sharing code with pmstudy.population:
- a Monte Carlo sample of 1e7 points (in chunks), with its standard error;
- a uniform grid (the trapezoidal rule, which converges geometrically for
  these analytic, Gaussian-decaying integrands) for d <= 2, summed with
  math.fsum; on the test cases it agrees with itself at two spacings to
  about 1e-15;
- the piecewise rule itself with far more nodes and finer panels.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from pmstudy.errors import SpecError
from pmstudy.population import (
    population_gradient,
    population_loglik,
    population_step,
)
from pmstudy.population.core import evaluate
from pmstudy.population.quadrature import PanelRule

TRIANGLE = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3.0) / 2.0]])
MC_POINTS = 10_000_000
MC_CHUNK = 1 << 17  # cache-sized blocks: the sums are memory-bound
FINE_RULE = PanelRule(drop=60.0, first=0.3, growth=2.0, cap=1.0)


def _log_density_terms(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """(m, k) -|x - mu_j|^2 / 2 for the points x (m, d)."""
    return -0.5 * np.sum((x[:, None, :] - centers[None, :, :]) ** 2, axis=2)


def monte_carlo(configs, rng, n_points=MC_POINTS):
    """MC estimates of the EM step and log-likelihood with standard errors.

    configs: list of (centers_true (k0, d), centers (k, d)) with one d. The
    standard normal draws of each chunk are shared by the configurations
    (each gets its own component labels): every estimate is still a plain
    1e7-point Monte Carlo estimate. The step's standard error is the
    delta-method one of the ratio E[w_j X] / E[w_j]:
    Var(w_j (X - T_j)) / (n E[w_j]^2).
    """
    d = configs[0][0].shape[1]
    sums = []
    for _, centers in configs:
        k = centers.shape[0]
        sums.append(
            {
                "w": np.zeros(k),
                "wx": np.zeros((k, d)),
                "w2": np.zeros(k),
                "w2x": np.zeros((k, d)),
                "w2x2": np.zeros((k, d)),
                "ll": 0.0,
                "ll2": 0.0,
            }
        )
    for start in range(0, n_points, MC_CHUNK):
        m = min(MC_CHUNK, n_points - start)
        # float32 draws are twice as fast; their rounding (1e-7) is far below
        # the standard errors (1e-4) that this test resolves.
        noise = rng.standard_normal((m, d), dtype=np.float32)
        for (centers_true, centers), acc in zip(configs, sums, strict=True):
            k = centers.shape[0]
            labels = rng.integers(centers_true.shape[0], size=m)
            x = centers_true[labels] + noise
            # -|x - mu_j|^2 / 2 without the term -|x|^2 / 2 common to all j.
            terms = x @ centers.T - 0.5 * np.sum(centers**2, axis=1)
            top = terms.max(axis=1, keepdims=True)
            e = np.exp(terms - top)
            total = e.sum(axis=1, keepdims=True)
            w = e / total
            ll = top[:, 0] + np.log(total[:, 0]) - 0.5 * np.einsum("md,md->m", x, x)
            ll -= math.log(k) + 0.5 * d * math.log(2 * math.pi)
            acc["w"] += w.sum(axis=0)
            acc["wx"] += w.T @ x
            acc["w2"] += (w**2).sum(axis=0)
            acc["w2x"] += (w**2).T @ x
            acc["w2x2"] += (w**2).T @ (x**2)
            acc["ll"] += ll.sum()
            acc["ll2"] += (ll**2).sum()
    out = []
    n = n_points
    for acc in sums:
        ew = acc["w"] / n
        step = acc["wx"] / acc["w"][:, None]
        var = (
            acc["w2x2"] / n
            - 2 * step * acc["w2x"] / n
            + step**2 * (acc["w2"] / n)[:, None]
        )
        step_se = np.sqrt(np.maximum(var, 0.0) / n) / ew[:, None]
        ll_mean = acc["ll"] / n
        ll_se = math.sqrt(max(acc["ll2"] / n - ll_mean**2, 0.0) / n)
        out.append((step, step_se, ll_mean, ll_se))
    return out


def grid_spacing(centers: np.ndarray) -> float:
    """Grid spacing for about 1e-15 accuracy.

    The responsibilities have complex poles at distance pi / D from the real
    axis, D the largest slope difference |mu_j - mu_l|; the trapezoidal rule
    with spacing h then errs by about exp(-2 pi^2 / (D h)), 1e-17 at
    h = 0.5 / D.
    """
    diff = np.linalg.norm(centers[:, None] - centers[None], axis=2).max()
    return min(0.04, 0.5 / max(diff, 1e-3))


def grid_reference(centers_true, centers, reach=10.0):
    """EM step, E[w_j] and log-likelihood on a uniform grid (d = 1 or 2)."""
    k0, d = centers_true.shape
    k = centers.shape[0]
    spacing = grid_spacing(centers)
    lo = centers_true.min(axis=0) - reach
    hi = centers_true.max(axis=0) + reach
    axes = [np.arange(lo[a], hi[a] + spacing, spacing) for a in range(d)]
    rows = axes[1] if d == 2 else np.array([0.0])
    parts_w, parts_wx, parts_ll = [], [], []
    for y in rows:
        x = (
            axes[0][:, None]
            if d == 1
            else np.stack([axes[0], np.full_like(axes[0], y)], axis=1)
        )
        dens = np.mean(np.exp(_log_density_terms(x, centers_true)), axis=1)
        dens *= spacing**d / (2 * math.pi) ** (d / 2)
        terms = _log_density_terms(x, centers)
        top = terms.max(axis=1, keepdims=True)
        e = np.exp(terms - top)
        w = e / e.sum(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(e.sum(axis=1))
        ll = lse - math.log(k) - 0.5 * d * math.log(2 * math.pi)
        parts_w.append(dens @ w)
        parts_wx.append((w * dens[:, None]).T @ x)
        parts_ll.append(dens * ll)
    ew = np.array([math.fsum(c) for c in np.array(parts_w).T])
    wx = np.array(parts_wx)
    num = np.array([[math.fsum(wx[:, j, a]) for a in range(d)] for j in range(k)])
    loglik = math.fsum(np.concatenate(parts_ll))
    return num / ew[:, None], ew, loglik


# --------------------------------------------------------------------------
# against Monte Carlo
# --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("d", [1, 2, 10])
def test_step_and_loglik_match_monte_carlo(d):
    rng = np.random.default_rng(np.random.SeedSequence([2016, d]))
    configs = []
    for k in (2, 3, 5):
        centers_true = 2.0 * rng.standard_normal((k, d))
        configs.append((centers_true, centers_true + 0.7 * rng.standard_normal((k, d))))
    # One BLAS thread: the products are small and memory-bound, and more
    # threads only spin.
    with threadpool_limits(limits=1, user_api="blas"):
        estimates = monte_carlo(configs, rng)
    for (centers_true, centers), mc in zip(configs, estimates, strict=True):
        mc_step, mc_se, mc_ll, mc_ll_se = mc
        step, step_err = population_step(centers_true, centers[None])
        loglik, ll_err = population_loglik(centers_true, centers[None])
        # Within 4 MC standard errors, plus the population rule's own error
        # estimate (which matters only for r >= 4, quasi-Monte Carlo).
        k = len(centers)
        assert np.all(np.abs(step[0] - mc_step) <= 4.0 * mc_se + step_err[0]), k
        assert abs(loglik[0] - mc_ll) <= 4.0 * mc_ll_se + ll_err[0], k


# --------------------------------------------------------------------------
# the truth is a fixed point
# --------------------------------------------------------------------------


def _fixed_point_cases():
    line3 = np.array([[0.0], [1.0], [2.0]])
    pair_far = np.array([[0.0], [1.5], [15.0]])
    return {
        "k2 d1": np.array([[-1.0], [1.0]]),
        "k3 d1 overlapping": line3,
        "k3 d1 close pair and far": pair_far,
        "k3 d1 far from origin": line3 * 2.0 + 400.0,
        "k3 d1 at +-400": np.array([[-400.0], [0.0], [400.0]]),
        "k3 d2 triangle sep 1": TRIANGLE,
        "k3 d2 triangle sep 3": 3.0 * TRIANGLE,
        "k3 d2 far from origin": 3.0 * TRIANGLE + np.array([400.0, -400.0]),
    }


@pytest.mark.parametrize("name", list(_fixed_point_cases()))
def test_truth_is_fixed_point(name):
    centers_true = _fixed_point_cases()[name]
    step, error = population_step(centers_true, centers_true[None])
    assert error[0] < 1e-10
    assert np.abs(step[0] - centers_true).max() <= error[0]
    grad, grad_err = population_gradient(centers_true, centers_true[None])
    assert np.abs(grad).max() <= grad_err[0]


def test_high_dimension_reduces_to_subspace():
    rng = np.random.default_rng(7)
    centers3 = np.array([[0.0, 0.0, 0.0], [3.0, 0.5, -1.0], [1.0, 2.5, 1.0]])
    # Embed in R^100: an orthonormal map plus an offset.
    q, _ = np.linalg.qr(rng.standard_normal((100, 3)))
    offset = rng.standard_normal(100)
    centers100 = centers3 @ q.T + offset
    start3 = centers3 + 0.4 * rng.standard_normal((3, 3))
    start100 = start3 @ q.T + offset

    step3, err3 = population_step(centers3, start3[None])
    step100, err100 = population_step(centers100, start100[None])
    assert err100[0] < 1e-10
    assert np.abs(step100[0] - (step3[0] @ q.T + offset)).max() <= err3[0] + err100[0]
    at_truth, err = population_step(centers100, centers100[None])
    assert err[0] < 1e-10
    assert np.abs(at_truth[0] - centers100).max() <= err[0]
    ll3, e3 = population_loglik(centers3, start3[None])
    ll100, e100 = population_loglik(centers100, start100[None])
    # The 97 extra dimensions add -97/2 (log(2 pi) + 1) exactly.
    extra = -0.5 * 97 * (math.log(2 * math.pi) + 1.0)
    assert abs(ll100[0] - (ll3[0] + extra)) <= e3[0] + e100[0]


# --------------------------------------------------------------------------
# honest error estimates away from the truth
# --------------------------------------------------------------------------


def _away_cases():
    rng = np.random.default_rng(11)
    cases = []
    for centers_true in (
        np.array([[0.0], [1.0], [2.0]]),
        np.array([[0.0], [1.0], [10.0]]),
        np.array([[0.0], [3.0], [6.0], [9.0]]),
        TRIANGLE,
        3.0 * TRIANGLE,
        np.array([[0.0, 0.0], [1.5, 0.0], [4.0, 9.0]]),
    ):
        mid = centers_true.mean(axis=0)
        starts = [
            mid + 2.0 * (centers_true - mid),  # farther apart: sharp switching
            mid + 3.5 * (centers_true - mid),
            centers_true + 0.7 * rng.standard_normal(centers_true.shape),
            mid + 0.3 * (centers_true - mid),  # nearly merged
        ]
        cases.append((centers_true, np.stack(starts)))
    return cases


@pytest.mark.parametrize("case", range(6))
def test_error_estimate_bounds_a_finer_rule(case):
    centers_true, starts = _away_cases()[case]
    for quantity in ("step", "loglik", "gradient"):
        value, acc = evaluate(quantity, centers_true, starts)
        fine, fine_acc = evaluate(
            quantity, centers_true, starts, n_nodes=20, rule=FINE_RULE
        )
        diff = np.abs(value - fine).reshape(len(starts), -1).max(axis=1)
        assert np.all(acc.error < 1e-10), quantity
        assert np.all(diff <= acc.error), quantity
        assert np.all(fine_acc.error < acc.error), quantity


@pytest.mark.parametrize("case", [0, 1, 3, 5])
def test_step_matches_uniform_grid(case):
    centers_true, starts = _away_cases()[case]
    step, err = population_step(centers_true, starts)
    loglik, ll_err = population_loglik(centers_true, starts)
    for b in range(len(starts)):
        if centers_true.shape[1] == 2 and grid_spacing(starts[b]) < 0.02:
            continue  # too many grid points for a test
        ref, _, ref_ll = grid_reference(centers_true, starts[b])
        # The grid's own error is about 1e-15 here (see the module docstring).
        assert np.abs(step[b] - ref).max() <= err[b] + 1e-14
        assert abs(loglik[b] - ref_ll) <= ll_err[b] + 1e-14


def test_gradient_is_weighted_step():
    centers_true = 3.0 * TRIANGLE
    rng = np.random.default_rng(3)
    centers = centers_true + 0.6 * rng.standard_normal((3, 2))
    step, step_err = population_step(centers_true, centers[None])
    grad, grad_err = population_gradient(centers_true, centers[None])
    _, ew, _ = grid_reference(centers_true, centers)
    expected = ew[:, None] * (step[0] - centers)
    assert np.abs(grad[0] - expected).max() <= grad_err[0] + step_err[0] + 1e-14


def test_step_is_permutation_equivariant_and_batch_independent():
    centers_true = 3.0 * TRIANGLE
    rng = np.random.default_rng(5)
    batch = centers_true + 0.8 * rng.standard_normal((5, 3, 2))
    step, err = population_step(centers_true, batch)
    perm = np.array([2, 0, 1])
    step_perm, err_perm = population_step(centers_true, batch[:, perm])
    # Reordering may change the panels (the choice of directions), so the
    # two agree within their error estimates, not bit for bit.
    diff = np.abs(step_perm - step[:, perm]).max(axis=(1, 2))
    assert np.all(diff <= err + err_perm)
    alone, _ = population_step(centers_true, batch[3:4])
    np.testing.assert_array_equal(alone[0], step[3])


def test_coinciding_centers():
    centers_true = 3.0 * TRIANGLE
    merged = np.stack([centers_true[[0, 0, 1]], np.repeat(centers_true[:1], 3, 0)])
    step, err = population_step(centers_true, merged)
    assert np.all(np.isfinite(step)) and np.all(err < 1e-10)
    # Coinciding estimates stay together; all three together go to the mean.
    np.testing.assert_array_equal(step[0, 0], step[0, 1])
    np.testing.assert_allclose(step[1], np.repeat(centers_true.mean(0)[None], 3, 0))
    ref, _, _ = grid_reference(centers_true, merged[0])
    assert np.abs(step[0] - ref).max() <= err[0] + 1e-14


@pytest.mark.parametrize(
    "centers_true, centers, field",
    [
        (np.zeros((3,)), np.zeros((1, 3, 1)), "centers_true"),
        (np.zeros((3, 2)), np.zeros((3, 2)), "centers"),
        (np.zeros((3, 2)), np.zeros((1, 3, 1)), "centers"),
        (np.zeros((3, 2)), np.full((1, 3, 2), np.nan), "centers"),
    ],
)
def test_bad_input_names_the_field(centers_true, centers, field):
    with pytest.raises(SpecError, match=field):
        population_step(centers_true, centers)


@pytest.mark.slow
def test_tetrahedron_in_high_dimension_is_a_fixed_point():
    # k = 4 centers spanning a 3-dimensional subspace of R^100: r = 3.
    rng = np.random.default_rng(12)
    tetra = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float)
    q, _ = np.linalg.qr(rng.standard_normal((100, 3)))
    offset = 50.0 * rng.standard_normal(100)
    centers3 = 1.5 * tetra
    centers100 = centers3 @ q.T + offset
    step, err = population_step(centers100, centers100[None])
    assert err[0] < 1e-10
    assert np.abs(step[0] - centers100).max() <= err[0]
    start3 = centers3 + 0.3 * rng.standard_normal((4, 3))
    step3, err3 = population_step(centers3, start3[None])
    step100, err100 = population_step(centers100, (start3 @ q.T + offset)[None])
    assert np.abs(step100[0] - (step3[0] @ q.T + offset)).max() <= err3[0] + err100[0]
