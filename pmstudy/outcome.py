"""The outcome of each EM run: success, fail or undecided, and how it failed.

On one data set, EM runs from the true centers (the oracle) and from every scheme.
The best-known maximum of that data set is the run with the highest
log-likelihood among them. A run is a *success* when it ended at a fixed point and
agrees with the best-known maximum, both in its centers (after the best
permutation) and in its log-likelihood; a *fail* when it ended at a fixed point
elsewhere; *undecided* when its iteration budget ran out first.

The tolerances must sit well above EM's own convergence error (so that a tighter
EM tolerance cannot flip a verdict) and well below the distance between distinct
fixed points (fractions of sigma in center space).

Failure structure: assign each estimated center to its nearest true center; a true
center with no estimate is *merged* away, one with two or more is *split*.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from pmstudy.em import END_BUDGET

__all__ = [
    "FAIL",
    "SUCCESS",
    "UNDECIDED",
    "OUTCOME_MEANINGS",
    "Judgement",
    "judge",
    "matched_distance",
    "failure_structure",
]

FAIL = 0
SUCCESS = 1
UNDECIDED = 2
OUTCOME_MEANINGS = "fail success undecided"


@dataclass(frozen=True)
class Judgement:
    """Outcomes of every run on R data sets with S starts each.

    Attributes
    ----------
    outcome : ndarray of shape (R, S), int8
        `FAIL`, `SUCCESS` or `UNDECIDED`.
    best_loglik : ndarray of shape (R,)
        The best-known maximum's log-likelihood per data set.
    loglik_gap : ndarray of shape (R, S)
        ``best_loglik - loglik``, never negative.
    center_error : ndarray of shape (R, S)
        Largest distance between an estimated and a true center after the best
        permutation.
    n_merged, n_split : ndarray of shape (R, S), int8
        True centers left without an estimate / holding two or more.
    """

    outcome: np.ndarray
    best_loglik: np.ndarray
    loglik_gap: np.ndarray
    center_error: np.ndarray
    n_merged: np.ndarray
    n_split: np.ndarray


def matched_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Largest center distance between two center sets after the best matching.

    Parameters
    ----------
    a, b : ndarray of shape (k, d)

    Returns
    -------
    float
        ``max_j |a_j - b_pi(j)|`` for the permutation pi that minimizes the sum of
        squared distances (the Hungarian method).
    """
    cost = ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=-1)
    rows, cols = linear_sum_assignment(cost)
    return float(np.sqrt(cost[rows, cols].max()))


def failure_structure(centers: np.ndarray, centers_true: np.ndarray) -> tuple[int, int]:
    """Count merged and split true centers.

    Parameters
    ----------
    centers : ndarray of shape (k, d)
        Estimated centers.
    centers_true : ndarray of shape (k, d)

    Returns
    -------
    (n_merged, n_split) : tuple of int
    """
    cost = ((centers[:, None, :] - centers_true[None, :, :]) ** 2).sum(axis=-1)
    counts = np.bincount(cost.argmin(axis=1), minlength=len(centers_true))
    return int((counts == 0).sum()), int((counts >= 2).sum())


def judge(
    centers: np.ndarray,
    loglik: np.ndarray,
    end: np.ndarray,
    centers_true: np.ndarray,
    *,
    center_tol: float,
    loglik_tol: float,
) -> Judgement:
    """Judge every run against its data set's best-known maximum.

    Parameters
    ----------
    centers : ndarray of shape (R, S, k, d)
        Final centers; start 0 of each data set is the oracle.
    loglik : ndarray of shape (R, S)
        Average log-likelihood of each run.
    end : ndarray of shape (R, S)
        End kinds from `pmstudy.em`.
    centers_true : ndarray of shape (k, d)
    center_tol : float
        Largest matched center distance to the best-known maximum for a success.
    loglik_tol : float
        Largest log-likelihood shortfall from the best-known maximum for a success.

    Returns
    -------
    Judgement
    """
    n_sets, n_starts = loglik.shape
    best = np.argmax(loglik, axis=1)
    best_loglik = loglik[np.arange(n_sets), best]
    gap = np.maximum(best_loglik[:, None] - loglik, 0.0)

    outcome = np.empty((n_sets, n_starts), dtype=np.int8)
    center_error = np.empty((n_sets, n_starts))
    n_merged = np.empty((n_sets, n_starts), dtype=np.int8)
    n_split = np.empty((n_sets, n_starts), dtype=np.int8)
    for r in range(n_sets):
        best_centers = centers[r, best[r]]
        for s in range(n_starts):
            center_error[r, s] = matched_distance(centers[r, s], centers_true)
            n_merged[r, s], n_split[r, s] = failure_structure(
                centers[r, s], centers_true
            )
            if end[r, s] == END_BUDGET:
                outcome[r, s] = UNDECIDED
                continue
            same = (
                gap[r, s] <= loglik_tol
                and matched_distance(centers[r, s], best_centers) <= center_tol
            )
            outcome[r, s] = SUCCESS if same else FAIL
    return Judgement(outcome, best_loglik, gap, center_error, n_merged, n_split)
