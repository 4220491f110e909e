"""Population EM: the convergence rule, slow merges, budgets, the bench."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pmstudy.em import END_BUDGET, END_CONVERGED, END_MERGING
from pmstudy.errors import SpecError
from pmstudy.population import population_em, population_step
from pmstudy.population_bench import format_population_bench, run_population_bench

TRIANGLE = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3.0) / 2.0]])


def test_tighter_tolerance_changes_no_outcome():
    centers_true = np.array([[0.0], [2.0], [8.0]])
    rng = np.random.default_rng(9)
    starts = rng.uniform(-2.0, 10.0, size=(12, 3, 1))
    loose = population_em(centers_true, starts, max_iter=20000, tol=1e-7)
    tight = population_em(centers_true, starts, max_iter=20000, tol=1e-9)
    np.testing.assert_array_equal(loose.end, tight.end)
    assert np.all(loose.end == END_CONVERGED)
    # Converged within tol of the same fixed point (up to a little slack for
    # the estimate of rho).
    assert np.abs(loose.centers - tight.centers).max() <= 3e-7
    assert loose.method.startswith("piecewise Gauss-Legendre, r=1")


def test_fixed_point_is_a_fixed_point():
    centers_true = 1.5 * TRIANGLE
    start = centers_true[None] + np.array([[[0.3, -0.2], [0.1, 0.4], [-0.3, 0.1]]])
    res = population_em(centers_true, start, max_iter=5000, tol=1e-10)
    assert res.end[0] == END_CONVERGED
    step, err = population_step(centers_true, res.centers)
    assert np.abs(step - res.centers).max() <= 1e-10 + err[0]
    assert res.error[0] < 1e-10


def test_slow_merge_ends_early():
    centers_true = np.array([[0.0], [2.0], [20.0]])
    start = np.array([[[1.0], [19.5], [20.5]]])
    res = population_em(centers_true, start, max_iter=100000, tol=1e-10)
    assert res.end[0] == END_MERGING
    assert res.n_iter[0] < 1000
    # Carried to the merged point: the pair on the far center is one point,
    # a fixed point of population EM.
    mu = np.sort(res.centers[0, :, 0])
    assert mu[1] == mu[2]
    step, err = population_step(centers_true, res.centers)
    assert np.abs(step - res.centers).max() <= 1e-8 + err[0]


def test_a_wrong_merge_call_is_withdrawn(monkeypatch):
    # A merge test that fires as soon as its window is full, whatever the
    # distances: the run (near the truth) is called merging, its merged point
    # is far below it in log-likelihood, so the call is withdrawn and the run
    # goes on from where it was, to the truth.
    from pmstudy.population import iterate

    def eager(dist, pair, step, tol):
        return np.all(np.isfinite(dist), axis=1)

    monkeypatch.setattr(iterate, "_merging", eager)
    centers_true = 1.5 * TRIANGLE  # overlapping: about 100 steps from this start
    start = (centers_true + 0.3)[None]
    res = population_em(centers_true, start, max_iter=2000, tol=1e-10)
    assert res.end[0] == END_CONVERGED
    assert res.n_iter[0] > iterate._MERGE_WINDOW
    np.testing.assert_allclose(res.centers[0], centers_true, atol=1e-8)


def test_budget_ends_undecided():
    centers_true = 1.5 * TRIANGLE
    start = np.array([[[0.1, 0.2], [0.12, 0.21], [1.0, 1.0]]])
    res = population_em(centers_true, start, max_iter=2, tol=1e-12)
    assert res.end[0] == END_BUDGET
    assert res.n_iter[0] == 2


def test_one_center_goes_to_the_mean():
    centers_true = np.array([[0.0, 1.0], [2.0, 3.0]])
    res = population_em(centers_true, np.zeros((1, 1, 2)), max_iter=10, tol=1e-10)
    assert res.end[0] == END_CONVERGED
    np.testing.assert_allclose(res.centers[0, 0], [1.0, 2.0], atol=1e-14)
    assert "exact" in res.method


@pytest.mark.parametrize(
    "kwargs, field",
    [({"max_iter": 0, "tol": 1e-6}, "max_iter"), ({"max_iter": 5, "tol": -1}, "tol")],
)
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(SpecError, match=field):
        population_em(TRIANGLE, TRIANGLE[None], **kwargs)


def test_bench_reports_documented_keys():
    result = run_population_bench(quick=True, ranks=(1,))
    assert {"rows", "default", "note"} <= set(result)
    for row in result["rows"]:
        assert set(row) == {
            "r", "workload", "n", "seconds_per_step", "evaluations_per_step",
            "max_error",
        }  # fmt: skip
    (default,) = result["default"]
    assert default["actual_error"] <= default["estimated_error"]
    assert json.loads(format_population_bench(result, "json")) == result
    assert "ms/step" in format_population_bench(result, "table")


def test_split_check_finds_the_saddle_of_a_merged_pair():
    # Two true centers 4 apart, both estimates at their mean: the mixture's
    # variance about it is 1 + 4 > 1, so splitting raises the population
    # log-likelihood (curvature about 4 per unit split): a saddle. With the
    # true centers 1e-4 apart the curvature (about 2.5e-9) is inside the
    # error band, so the merged point counts as a maximum across the pair.
    from pmstudy.population.iterate import _split_raises

    far = _split_raises(np.array([[0.0], [4.0]]), np.array([[[2.0], [2.0]]]), 1e-12)
    close = np.array([[0.0], [1e-4]])
    near = _split_raises(close, np.array([[[5e-5], [5e-5]]]), 1e-12)
    assert far.tolist() == [True]
    assert near.tolist() == [False]
