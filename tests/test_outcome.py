"""Outcomes: the best-known maximum, verdicts, matching and failure structure."""

from __future__ import annotations

import itertools

import numpy as np

from pmstudy.em import END_BUDGET, END_CONVERGED, END_MERGING
from pmstudy.outcome import (
    FAIL,
    SUCCESS,
    UNDECIDED,
    failure_structure,
    judge,
    matched_distance,
)

TRUTH = np.array([[0.0], [1.0], [4.0]])


def brute_matched_distance(a, b):
    """Independent: try every permutation, minimize the sum of squares."""
    best = None
    for perm in itertools.permutations(range(len(a))):
        diff = a - b[list(perm)]
        cost = (diff**2).sum()
        if best is None or cost < best[0]:
            best = (cost, np.sqrt((diff**2).sum(axis=1)).max())
    return best[1]


def test_matched_distance_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(50):
        a, b = rng.normal(size=(2, 4, 3))
        assert np.isclose(
            matched_distance(a, b), brute_matched_distance(a, b), rtol=1e-12
        )
    assert matched_distance(TRUTH[::-1], TRUTH) == 0.0


def test_failure_structure_counts():
    # two estimates on the far center, one between the pair: 1 merged, 1 split
    assert failure_structure(np.array([[0.5], [3.9], [4.1]]), TRUTH) == (1, 1)
    assert failure_structure(TRUTH[[2, 0, 1]], TRUTH) == (0, 0)


def test_judge_verdicts():
    bad = np.array([[0.5], [3.9], [4.1]])
    centers = np.stack([TRUTH, TRUTH[[1, 0, 2]] + 1e-6, bad, TRUTH, bad])[None]
    loglik = np.array([[-2.0, -2.0 - 1e-9, -2.1, -2.0, -2.1]])
    end = np.array(
        [[END_CONVERGED, END_CONVERGED, END_CONVERGED, END_BUDGET, END_MERGING]]
    )
    verdict = judge(centers, loglik, end, TRUTH, center_tol=1e-3, loglik_tol=1e-6)
    assert verdict.outcome.tolist() == [[SUCCESS, SUCCESS, FAIL, UNDECIDED, FAIL]]
    assert verdict.best_loglik.tolist() == [-2.0]
    assert np.all(verdict.loglik_gap >= 0)
    assert np.isclose(verdict.loglik_gap[0, 2], 0.1)
    assert verdict.n_merged[0].tolist() == [0, 0, 1, 0, 1]
    assert verdict.n_split[0].tolist() == [0, 0, 1, 0, 1]


def test_best_known_maximum_need_not_be_the_oracle():
    # When a scheme beats the oracle, the oracle is judged against it.
    other = TRUTH + np.array([[0.3], [0.0], [0.0]])
    centers = np.stack([TRUTH, other])[None]
    loglik = np.array([[-2.0, -1.9]])
    end = np.zeros((1, 2), dtype=np.int8)
    verdict = judge(centers, loglik, end, TRUTH, center_tol=1e-3, loglik_tol=1e-6)
    assert verdict.outcome.tolist() == [[FAIL, SUCCESS]]
