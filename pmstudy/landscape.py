"""Critical points of the population log-likelihood and their census.

`critical_point` runs population EM from a batch of starting points until it
settles, polishes each limit with Newton's method on the gradient, and
classifies it by the eigenvalues of the Hessian there. `census` does this for
the starting points of several schemes, groups the limits that coincide up
to a permutation of the centers, and reports each distinct point with its
log-likelihood gap to the truth, its Hessian eigenvalues, its kind and the
fraction of each scheme's starts that reached it (its basin).

Kinds
-----
- "global maximum": all eigenvalues below -`eig_tol` and the centers equal
  the true centers up to permutation (the truth is the global maximum of the
  population likelihood: L(mu0) - L(mu) = KL(f0 || f_mu)).
- "local maximum": all eigenvalues below -`eig_tol`, elsewhere.
- "saddle": some eigenvalue above `eig_tol`.
- "degenerate": none above, some within +-`eig_tol` (a merged pair of
  estimates on one cluster is the usual case); second derivatives do not
  decide such a point.
- "undecided": population EM ran out of budget; never classified.

`eig_tol` is max(1e-6, c (k d) e_H), e_H the Hessian's error estimate: an
eigenvalue moves by at most k d e_H under that error (Weyl's inequality with
the Frobenius norm), so a sign decided outside the band is safe; inside it
the point is called degenerate. c = 100 for the piecewise rule (r <= 3),
whose estimate is the difference of two rules and could be optimistic by a
large factor; c = 1 for quasi-Monte Carlo (r >= 4), whose estimate is
already three standard errors over independent scramblings.

Where the population integrals are only accurate to e (the step's error
estimate), the computed critical point is that of a map perturbed by e, and
lies about e / (1 - rho) from the exact one, rho < 1 the contraction of EM
there. Two limits count as one point, and a limit as the truth, within
`position_tol` = max(1e-6, 10 e): exact to 1e-6 for r <= 3 (e ~ 1e-11), about
3e-3 for quasi-Monte Carlo (e ~ 3e-4; measured offsets from the truth were
below e).

Runs that end with a slow merge (`END_MERGING`) have been carried to the merged
point by `population_em` (the closest pair replaced by its midpoint, population
EM going on from there) before the polish.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from pmstudy.em import END_BUDGET
from pmstudy.errors import SpecError
from pmstudy.population import (
    population_em,
    population_gradient,
    population_hessian,
    population_loglik,
)
from pmstudy.population.core import check_centers, evaluate

logger = logging.getLogger(__name__)

KINDS = ("global maximum", "local maximum", "saddle", "degenerate", "undecided")

_NEWTON_STEPS = 8
_NEWTON_GRADIENT = 1e-10
_NEWTON_MAX_STEP = 1e-2  # a longer Newton step would leave the EM limit
_EIG_FLOOR = 1e-6
_SAME_POINT = 1e-6  # distance (sigma) under which two limits are one point
_POSITION_FACTOR = 10.0  # position_tol in units of the step's error estimate
_BAND_PIECEWISE = 100.0
_BAND_QMC = 1.0


@dataclass(frozen=True)
class CriticalPoints:
    """Limits of population EM from a batch of starts, polished and classified.

    Attributes
    ----------
    centers : np.ndarray
        (B, k, d) the critical points (for undecided runs: where EM stopped).
    loglik : np.ndarray
        (B,) population log-likelihood there (constants included).
    loglik_gap : np.ndarray
        (B,) L(centers_true) - L(centers) >= 0 (up to the error estimate).
    gradient_norm : np.ndarray
        (B,) largest absolute gradient entry after the polish.
    hessian_eigenvalues : np.ndarray
        (B, k*d) ascending.
    kind : np.ndarray
        (B,) str, one of `KINDS`.
    em_end : np.ndarray
        (B,) int8, how population EM ended (`pmstudy.em.END_*`).
    n_iter : np.ndarray
        (B,) int64, population EM steps (every phase kept, for merged runs).
    loglik_error : np.ndarray
        (B,) error estimate of loglik_gap.
    eig_tol : np.ndarray
        (B,) the band around zero within which an eigenvalue counts as zero.
    position_tol : np.ndarray
        (B,) distance within which the point counts as the truth, or as
        another limit (see the module docstring).
    method : str
        How the population integrals were computed.
    """

    centers: np.ndarray
    loglik: np.ndarray
    loglik_gap: np.ndarray
    gradient_norm: np.ndarray
    hessian_eigenvalues: np.ndarray
    kind: np.ndarray
    em_end: np.ndarray
    n_iter: np.ndarray
    loglik_error: np.ndarray
    eig_tol: np.ndarray
    position_tol: np.ndarray
    method: str


def critical_point(
    centers_true: np.ndarray,
    centers_init: np.ndarray,
    *,
    max_iter: int,
    tol: float,
) -> CriticalPoints:
    """Population EM to a critical point, Newton polish, Hessian, kind.

    Parameters
    ----------
    centers_true : np.ndarray
        (k, d) true centers.
    centers_init : np.ndarray
        (B, k, d) starting centers (the same k).
    max_iter : int
        Population EM budget per phase (see the module docstring).
    tol : float
        Population EM tolerance (distance to the fixed point, sigma units).

    Returns
    -------
    CriticalPoints
    """
    centers_true, centers_init = check_centers(centers_true, centers_init)
    if centers_init.shape[1] != centers_true.shape[0]:
        raise SpecError(
            "centers_init",
            centers_init.shape,
            f"(B, k, d) with k = {centers_true.shape[0]}, the number of true centers",
        )
    res = population_em(centers_true, centers_init, max_iter=max_iter, tol=tol)
    centers = res.centers.copy()
    end = res.end.copy()
    n_iter = res.n_iter.copy()
    method = res.method
    position_tol = np.maximum(_SAME_POINT, _POSITION_FACTOR * res.error)

    decided = np.flatnonzero(end != END_BUDGET)
    grad_norm = np.full(len(centers), np.nan)
    if decided.size:
        centers[decided], grad_norm[decided] = _newton_polish(
            centers_true, centers[decided]
        )
    k, d = centers_true.shape
    eig = np.full((len(centers), k * d), np.nan)
    eig_tol = np.full(len(centers), np.nan)
    if decided.size:
        hess, acc = evaluate("hessian", centers_true, centers[decided])
        eig[decided] = np.linalg.eigvalsh(hess)
        band = np.where(acc.rank >= 4, _BAND_QMC, _BAND_PIECEWISE)
        eig_tol[decided] = np.maximum(_EIG_FLOOR, band * k * d * acc.error)
    loglik, ll_err = population_loglik(centers_true, centers)
    ll_true, ll_true_err = population_loglik(centers_true, centers_true[None])
    kind = _classify(centers_true, centers, eig, eig_tol, position_tol, end)
    return CriticalPoints(
        centers=centers,
        loglik=loglik,
        loglik_gap=ll_true[0] - loglik,
        gradient_norm=grad_norm,
        hessian_eigenvalues=eig,
        kind=kind,
        em_end=end,
        n_iter=n_iter,
        loglik_error=ll_err + ll_true_err[0],
        eig_tol=eig_tol,
        position_tol=position_tol,
        method=method,
    )


def _newton_polish(
    centers_true: np.ndarray, centers: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Newton steps on the gradient; a step is kept only if it is short and
    lowers the gradient. Returns the centers and the gradient's largest entry.

    A singular Hessian (a merged pair) is handled by the least-squares step,
    which leaves the null direction alone; the gradient vanishes there by
    symmetry.
    """
    centers = centers.copy()
    n_batch, k, d = centers.shape
    grad, _ = population_gradient(centers_true, centers)
    norm = np.abs(grad).reshape(n_batch, -1).max(axis=1)
    todo = np.flatnonzero(norm > _NEWTON_GRADIENT)
    for _ in range(_NEWTON_STEPS):
        if todo.size == 0:
            break
        hess, _ = population_hessian(centers_true, centers[todo])
        flat_grad = grad[todo].reshape(todo.size, -1)
        steps = np.stack(
            [
                np.linalg.lstsq(h, -g, rcond=1e-10)[0]
                for h, g in zip(hess, flat_grad, strict=True)
            ]
        )
        trial = centers[todo] + steps.reshape(todo.size, k, d)
        new_grad, _ = population_gradient(centers_true, trial)
        new_norm = np.abs(new_grad).reshape(todo.size, -1).max(axis=1)
        short = np.abs(steps).max(axis=1) <= _NEWTON_MAX_STEP
        better = short & (new_norm < norm[todo])
        keep = todo[better]
        centers[keep] = trial[better]
        grad[keep] = new_grad[better]
        norm[keep] = new_norm[better]
        todo = keep[norm[keep] > _NEWTON_GRADIENT]
    return centers, norm


def _same_up_to_permutation(a: np.ndarray, b: np.ndarray, tol: float) -> bool:
    """Whether the centers a and b (k, d) agree within tol after reordering."""
    k = a.shape[0]
    dist = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
    return any(
        dist[np.arange(k), list(perm)].max() <= tol
        for perm in itertools.permutations(range(k))
    )


def _classify(centers_true, centers, eig, eig_tol, position_tol, end) -> np.ndarray:
    kind = np.empty(len(centers), dtype=object)
    for b in range(len(centers)):
        if end[b] == END_BUDGET:
            kind[b] = "undecided"
        elif eig[b].max() > eig_tol[b]:
            kind[b] = "saddle"
        elif eig[b].max() >= -eig_tol[b]:
            kind[b] = "degenerate"
        elif _same_up_to_permutation(centers[b], centers_true, position_tol[b]):
            kind[b] = "global maximum"
        else:
            kind[b] = "local maximum"
    return kind


def _canonical(centers: np.ndarray) -> np.ndarray:
    """Centers ordered lexicographically by coordinates, for reporting."""
    order = np.lexsort(centers.T[::-1])
    return centers[order]


def census(
    centers_true: np.ndarray,
    inits: Mapping[str, np.ndarray],
    *,
    max_iter: int,
    tol: float,
) -> dict:
    """Distinct critical points reached from each scheme's starts.

    Parameters
    ----------
    centers_true : np.ndarray
        (k, d) true centers.
    inits : Mapping[str, np.ndarray]
        Scheme name -> (N, k, d) starting centers.
    max_iter, tol
        As for `critical_point`.

    Returns
    -------
    dict
        JSON-ready: ``{"centers_true": [[...]], "method": str,
        "critical_points": [{"centers", "loglik_gap", "hessian_eigenvalues",
        "kind", "basin": {scheme: fraction}}], "undecided": {scheme:
        fraction}}``. Points are distinct up to a permutation of the centers
        (within `position_tol`, 1e-6 for r <= 3), ordered by log-likelihood
        gap; each basin fraction is the share of that scheme's starts that
        reached the point.
    """
    centers_true = np.asarray(centers_true, dtype=np.float64)
    if not isinstance(inits, Mapping) or not inits:
        raise SpecError("inits", inits, "a non-empty mapping scheme -> (N, k, d)")
    names = list(inits)
    arrays = []
    for name in names:
        arr = np.asarray(inits[name], dtype=np.float64)
        if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1:] != centers_true.shape:
            raise SpecError(
                f"inits.{name}",
                arr.shape,
                f"an array of shape (N, {centers_true.shape[0]}, "
                f"{centers_true.shape[1]}) with N >= 1",
            )
        arrays.append(arr)
    scheme = np.concatenate([np.full(len(a), i) for i, a in enumerate(arrays)])
    cps = critical_point(
        centers_true, np.concatenate(arrays), max_iter=max_iter, tol=tol
    )

    points: list[dict] = []
    members: list[list[int]] = []
    for b in range(len(scheme)):
        if cps.kind[b] == "undecided":
            continue
        for idx, point in enumerate(points):
            near = max(cps.position_tol[b], cps.position_tol[point["_first"]])
            if _same_up_to_permutation(cps.centers[b], point["_centers"], near):
                members[idx].append(b)
                break
        else:
            points.append({"_centers": cps.centers[b], "_first": b})
            members.append([b])

    total = np.array([len(a) for a in arrays])
    out_points = []
    for point, mem in zip(points, members, strict=True):
        b = point["_first"]
        counts = np.bincount(scheme[mem], minlength=len(names))
        out_points.append(
            {
                "centers": _canonical(cps.centers[b]).tolist(),
                "loglik_gap": float(cps.loglik_gap[b]),
                "hessian_eigenvalues": [float(x) for x in cps.hessian_eigenvalues[b]],
                "kind": str(cps.kind[b]),
                "basin": {
                    name: float(counts[i] / total[i]) for i, name in enumerate(names)
                },
            }
        )
    out_points.sort(key=lambda p: p["loglik_gap"])
    undecided = np.bincount(scheme[cps.kind == "undecided"], minlength=len(names))
    return {
        "centers_true": centers_true.tolist(),
        "method": cps.method,
        "critical_points": out_points,
        "undecided": {
            name: float(undecided[i] / total[i]) for i, name in enumerate(names)
        },
    }


__all__ = ["KINDS", "CriticalPoints", "census", "critical_point"]
