"""Binomial intervals against independent root-finding, and report rows."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize, stats

from pmstudy.analysis import clopper_pearson, interval, wilson


def wilson_by_root(x, n, alpha):
    """The Wilson bounds solve |x/n - p| = z sqrt(p (1 - p) / n) for p."""
    z = stats.norm.isf(alpha / 2)
    phat = x / n

    def f(p):
        return (phat - p) ** 2 - z * z * p * (1 - p) / n

    # f vanishes at p = phat only when phat is 0 or 1; step off it there.
    inner_lo, inner_hi = min(phat, 1 - 1e-12), max(phat, 1e-12)
    lo = 0.0 if x == 0 else optimize.brentq(f, 0.0, inner_lo, xtol=1e-14)
    hi = 1.0 if x == n else optimize.brentq(f, inner_hi, 1.0, xtol=1e-14)
    return lo, hi


def clopper_by_root(x, n, alpha):
    """Exact bounds: P(X >= x | lo) = alpha/2 and P(X <= x | hi) = alpha/2."""
    lo = (
        0.0
        if x == 0
        else optimize.brentq(
            lambda p: stats.binom.sf(x - 1, n, p) - alpha / 2,
            1e-15,
            1 - 1e-15,
            xtol=1e-14,
        )
    )
    hi = (
        1.0
        if x == n
        else optimize.brentq(
            lambda p: stats.binom.cdf(x, n, p) - alpha / 2, 1e-15, 1 - 1e-15, xtol=1e-14
        )
    )
    return lo, hi


@pytest.mark.parametrize("n", [1, 7, 200])
@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_wilson_and_clopper_pearson_against_roots(n, alpha):
    xs = np.arange(n + 1)
    lo, hi = wilson(xs, np.full_like(xs, n), alpha)
    clo, chi = clopper_pearson(xs, np.full_like(xs, n), alpha)
    for x in xs:
        # brentq's tolerance is ~1e-12 here; both sides are smooth in p.
        np.testing.assert_allclose(
            (lo[x], hi[x]), wilson_by_root(x, n, alpha), atol=1e-9
        )
        np.testing.assert_allclose(
            (clo[x], chi[x]), clopper_by_root(x, n, alpha), atol=1e-9
        )


@pytest.mark.parametrize("method", ["wilson", "clopper-pearson"])
def test_extremes_are_exact_and_monotone(method):
    n = 50
    xs = np.arange(n + 1)
    for alpha in (0.05, 1e-12):
        lo, hi = interval(xs, np.full_like(xs, n), alpha, method)
        assert lo[0] == 0.0 and hi[-1] == 1.0
        assert np.all((lo >= 0) & (hi <= 1) & (lo <= xs / n) & (xs / n <= hi))
        assert np.all(np.diff(lo) >= 0) and np.all(np.diff(hi) >= 0)


def test_no_data_is_nan_not_a_crash():
    lo, hi = wilson(np.array([0]), np.array([0]))
    assert np.isnan(lo[0]) and np.isnan(hi[0])
    with pytest.raises(ValueError, match="interval"):
        interval(np.array([1]), np.array([2]), method="bayes")
