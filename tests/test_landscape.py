"""Critical points and the census of the population log-likelihood."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pmstudy.em import END_CONVERGED
from pmstudy.errors import SpecError
from pmstudy.landscape import KINDS, census, critical_point
from pmstudy.population import population_em

TRIANGLE = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3.0) / 2.0]])
# The close-pair-plus-far configuration shipped as the counterexample study:
# layout (0, 1, 4) at separation 2.
COUNTEREXAMPLE = np.array([[0.0], [2.0], [8.0]])


def _schemes(rng, centers_true, n):
    """Starting points of three simple schemes, drawn here for the test."""
    k, d = centers_true.shape
    lo = centers_true.min(axis=0) - 2.0
    hi = centers_true.max(axis=0) + 2.0
    mean = centers_true.mean(axis=0)
    labels = rng.integers(k, size=(n, k))
    return {
        "uniform-box": rng.uniform(lo, hi, size=(n, k, d)),
        "near-mean": mean + 0.5 * rng.standard_normal((n, k, d)),
        "sample-points": centers_true[labels] + rng.standard_normal((n, k, d)),
    }


def test_k2_every_start_reaches_the_truth():
    centers_true = np.array([[-1.2, 0.4], [1.2, -0.4]])
    rng = np.random.default_rng(2)
    inits = _schemes(rng, centers_true, 12)
    out = census(centers_true, inits, max_iter=20000, tol=1e-9)
    assert len(out["critical_points"]) == 1
    point = out["critical_points"][0]
    assert point["kind"] == "global maximum"
    assert abs(point["loglik_gap"]) < 1e-9
    assert all(frac == 1.0 for frac in point["basin"].values())
    assert all(frac == 0.0 for frac in out["undecided"].values())
    assert max(point["hessian_eigenvalues"]) < 0.0


def test_triangle_two_close_starts_reach_the_truth():
    centers_true = 3.0 * TRIANGLE
    # Two centers close together on one true center, the third between the
    # other two: a generic (not symmetric) version of the classic bad start.
    init = np.array([[[0.10, 0.20], [0.14, 0.23], [2.3, 1.3]]])
    res = population_em(centers_true, init, max_iter=50000, tol=1e-9)
    assert res.end[0] == END_CONVERGED
    order = np.lexsort(res.centers[0].T[::-1])
    expected = centers_true[np.lexsort(centers_true.T[::-1])]
    assert np.abs(res.centers[0][order] - expected).max() < 1e-8


def test_counterexample_has_a_strict_local_maximum():
    rng = np.random.default_rng(4)
    inits = _schemes(rng, COUNTEREXAMPLE, 16)
    out = census(COUNTEREXAMPLE, inits, max_iter=20000, tol=1e-9)
    kinds = {p["kind"] for p in out["critical_points"]}
    assert kinds <= set(KINDS)
    assert "global maximum" in kinds
    local = [p for p in out["critical_points"] if p["kind"] == "local maximum"]
    assert len(local) == 1
    point = local[0]
    centers = np.array(point["centers"])[:, 0]
    # Two estimates on the far center, one between the close pair.
    assert np.sum(np.abs(centers - 8.0) < 1.0) == 2
    assert np.sum((centers > 0.0) & (centers < 2.0)) == 1
    assert point["loglik_gap"] > 0.3
    assert max(point["hessian_eigenvalues"]) < -0.02
    assert sum(point["basin"].values()) > 0.0
    # Fractions of each scheme add up to one with the undecided runs.
    for name in inits:
        total = sum(p["basin"][name] for p in out["critical_points"])
        assert total + out["undecided"][name] == pytest.approx(1.0)


def test_slow_merge_is_carried_to_a_degenerate_point():
    centers_true = np.array([[0.0], [2.0], [20.0]])
    init = np.array([[[1.0], [19.5], [20.5]]])
    cps = critical_point(centers_true, init, max_iter=5000, tol=1e-9)
    assert cps.kind[0] == "degenerate"
    centers = np.sort(cps.centers[0, :, 0])
    assert centers[1] == centers[2]
    assert abs(cps.hessian_eigenvalues[0]).min() <= cps.eig_tol[0]
    assert cps.gradient_norm[0] <= 1e-10


def test_budget_run_out_is_undecided():
    centers_true = 3.0 * TRIANGLE
    init = np.array([[[0.10, 0.20], [0.14, 0.23], [2.3, 1.3]]])
    cps = critical_point(centers_true, init, max_iter=3, tol=1e-12)
    assert cps.kind[0] == "undecided"
    out = census(centers_true, {"one": init}, max_iter=3, tol=1e-12)
    assert out["critical_points"] == []
    assert out["undecided"] == {"one": 1.0}


def test_census_rejects_bad_inits():
    with pytest.raises(SpecError, match="inits.bad"):
        census(COUNTEREXAMPLE, {"bad": np.zeros((2, 2, 1))}, max_iter=10, tol=1e-6)
    with pytest.raises(SpecError, match="inits"):
        census(COUNTEREXAMPLE, {}, max_iter=10, tol=1e-6)


@pytest.mark.slow
def test_rank_four_converges_and_finds_the_truth_within_its_accuracy():
    # k = 5 in d = 4: integrals of rank 4, quasi-Monte Carlo with an error of
    # a few 1e-4. A tol of 1e-8 cannot be met there; the rule's noise floor
    # must end the run, and the truth must be recognised within position_tol
    # (10 times the step's error), not called degenerate or undecided.
    centers_true = np.vstack([np.zeros(4), 3.0 * np.eye(4)])
    rng = np.random.default_rng(4)
    start = centers_true[None] + rng.normal(scale=0.5, size=(1, 5, 4))
    cps = critical_point(centers_true, start, max_iter=200, tol=1e-8)
    assert cps.em_end[0] == END_CONVERGED
    assert cps.n_iter[0] < 100
    assert "randomized QMC, r=4" in cps.method
    assert cps.kind[0] == "global maximum"
    assert 1e-6 < cps.position_tol[0] < 1e-2
    offset = np.abs(np.sort(cps.centers[0], axis=0) - np.sort(centers_true, axis=0))
    assert offset.max() <= cps.position_tol[0]
    # Its gap is zero within its own error estimate.
    assert abs(cps.loglik_gap[0]) <= cps.loglik_error[0]
    # A clear maximum: the eigenvalues are far outside the band.
    assert cps.hessian_eigenvalues[0].max() < -10 * cps.eig_tol[0]
