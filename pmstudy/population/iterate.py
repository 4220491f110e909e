"""Population EM: iterate the population EM step until it settles.

Convergence rule
----------------
``tol`` is a distance on the centers in units of sigma = 1: a run is
converged when the estimated distance from its returned centers to the fixed
point it is converging to is at most ``tol``, distances between two sets of
centers being max_j |mu_j - mu'_j| (Euclidean per center).

Near a fixed point population EM contracts linearly: the step
s_n = |mu^(n+1) - mu^(n)| shrinks like rho s_(n-1), rho < 1 the spectral
radius of the map's Jacobian. The remaining distance is the tail of a
geometric series, s_n rho / (1 - rho). The rule estimates rho as the largest
of the last three step ratios (the largest, so that one quick step cannot
fake fast convergence) and stops when rho < 1 and s_n rho / (1 - rho) <= tol.
On a slow plateau rho is close to 1 and the estimated distance stays large
whatever the step, so the rule refuses to stop; near a saddle the steps grow
(rho >= 1) and it never stops. Two floors: a step below rounding,
1024 eps (1 + max|mu|), is converged at once; and a step below the map's own
noise (four times the quadrature error estimate, for the piecewise rule
whose panels move in small jumps with the centers) that no longer contracts
(rho >= 1) is converged too: there the iteration only sees the rule's
jitter, and the point is a fixed point to within the rule's accuracy. The
quasi-Monte Carlo map (r >= 4) jitters the same way, at its much larger
error (about 1e-4): its points are fixed in the reduced coordinates, whose
basis turns with the centers. A ``tol`` below that error cannot be met by
the ordinary rule there, so this floor is what ends those runs.

Slow merging
------------
Two estimates sharing one cluster can merge with a degenerate (quartic)
log-likelihood in the direction that separates them; their distance D then
falls sublinearly, D_(n+1) ~ D_n - c D_n^p with p > 1, rho tends to 1 and
reaching the merged point could take 1e5 steps. Over a window of W steps the
rule checks that the same pair stays the closest, that D fell at every step,
that D fell by less than 1% per step on average (slow), that the steps are
those of the pair (at most twice the fall of D, plus ``tol``), and that the
fall of D over the two halves of the window fits D_(n+1) - D_n ~ -c D_n^p
with 1.5 <= p <= 6. A linear approach to a positive distance gives a far
larger p, and a linear merge p = 1; both are left to the ordinary rule.

As for finite samples (`pmstudy.em`), the run is then carried to the point it
merges into: the pair becomes its midpoint (the map is symmetric in two equal
centers, so they stay equal), and population EM goes on from there, pairs
already equal being left out of the merge test. The call is withdrawn, and
population EM goes on from where the run was with the merge test off, if the
merged fixed point's log-likelihood is below the run's by more than four times
the two quadrature error estimates: EM never lowers the likelihood, so the run
was not heading there. It is withdrawn too if the merged point is a saddle
across the merged centers: if the population Hessian, restricted to the
directions that split a group of equal centers about its mean, has an
eigenvalue above its error band (100 k d times the Hessian's error estimate
for the piecewise rule, k d times it for quasi-Monte Carlo, at least 1e-6),
splitting raises the likelihood and EM would leave. A carried run ends with
`END_MERGING` at a fixed point; each phase gets the full ``max_iter``, and
``n_iter`` counts the phases kept.

Runs that exhaust ``max_iter`` end with `END_BUDGET` ("undecided"), never with
a guess.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from pmstudy.em import END_BUDGET, END_CONVERGED, END_MERGING, merge_closest_pair
from pmstudy.errors import SpecError
from pmstudy.population.core import DEFAULT_ACCURACY, Accuracy, check_centers, evaluate

logger = logging.getLogger(__name__)

_RATIO_HISTORY = 3
_NOISE_FACTOR = 4.0
_ROUND_FACTOR = 1024.0 * np.finfo(np.float64).eps
_MERGE_WINDOW = 50
_MERGE_SLOW = 0.01
_MERGE_POWER = (1.5, 6.0)
# The error band of a split's curvature, as the landscape's for eigenvalues.
_SPLIT_BAND_PIECEWISE = 100.0
_SPLIT_BAND_QMC = 1.0
_SPLIT_FLOOR = 1e-6


@dataclass(frozen=True)
class PopulationResult:
    """Result of population EM for a batch of starting points.

    Attributes
    ----------
    centers : np.ndarray
        (B, k, d) final centers.
    loglik : np.ndarray
        (B,) population log-likelihood E_{X ~ f0} log f_mu(X) of the final
        centers, constants included (the constant left out is zero), so that
        the gap to the truth, loglik(centers_true) - loglik, is exactly
        KL(f0 || f_mu) >= 0.
    n_iter : np.ndarray
        (B,) int64, EM steps taken.
    end : np.ndarray
        (B,) int8, `END_CONVERGED`, `END_MERGING` or `END_BUDGET`.
    error : np.ndarray
        (B,) estimated quadrature error of the last step (largest absolute
        error over coordinates).
    method : str
        How the integrals were computed, with the largest error estimate.
    """

    centers: np.ndarray
    loglik: np.ndarray
    n_iter: np.ndarray
    end: np.ndarray
    error: np.ndarray
    method: str


def population_em(
    centers_true: np.ndarray,
    centers_init: np.ndarray,
    *,
    max_iter: int,
    tol: float,
    accuracy: float = DEFAULT_ACCURACY,
) -> PopulationResult:
    """Run population EM from a batch of starting points, merges carried.

    Parameters
    ----------
    centers_true : np.ndarray
        (k0, d) true centers.
    centers_init : np.ndarray
        (B, k, d) starting centers.
    max_iter : int
        Largest number of EM steps per run.
    tol : float
        Distance to the fixed point at which a run stops (see the module
        docstring), in units of sigma.
    accuracy : float
        Requested quadrature accuracy of each step.

    Returns
    -------
    PopulationResult
    """
    centers_true, centers = check_centers(centers_true, centers_init)
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)):
        raise SpecError("max_iter", max_iter, "an integer >= 1")
    if max_iter < 1:
        raise SpecError("max_iter", max_iter, "an integer >= 1")
    if not (isinstance(tol, (int, float)) and np.isfinite(tol) and tol > 0):
        raise SpecError("tol", tol, "a positive finite number")

    res = _iterate(centers_true, centers, max_iter, tol, accuracy, merges=True)
    k = centers.shape[1]
    pending = np.flatnonzero(res.end == END_MERGING)
    # Each round merges one more pair, so k - 1 rounds end every chain.
    for _ in range(k - 1):
        if pending.size == 0:
            break
        merged = merge_closest_pair(res.centers[pending])
        again = _iterate(centers_true, merged, max_iter, tol, accuracy, merges=True)
        slack = _NOISE_FACTOR * (again.loglik_error + res.loglik_error[pending])
        kept = again.loglik >= res.loglik[pending] - slack
        done = np.flatnonzero(kept & (again.end == END_CONVERGED))
        if done.size:
            kept[done] = ~_split_raises(centers_true, again.centers[done], accuracy)
        _take(res, pending[kept], again, kept)
        # Converged or merging again: END_MERGING; out of budget: undecided.
        res.end[pending[kept]] = np.where(
            again.end[kept] == END_BUDGET, END_BUDGET, END_MERGING
        )

        withdrawn = pending[~kept]
        if withdrawn.size:
            logger.debug("population EM: %d merge calls withdrawn", withdrawn.size)
            resumed = _iterate(
                centers_true, res.centers[withdrawn], max_iter, tol, accuracy,
                merges=False,
            )  # fmt: skip
            _take(res, withdrawn, resumed, np.ones(withdrawn.size, dtype=bool))
        pending = pending[kept][again.end[kept] == END_MERGING]

    method = Accuracy(error=res.error, nodes=res.nodes, rank=res.rank).describe()
    logger.debug(
        "population EM: %d runs, %d converged, %d merging, %d undecided",
        len(res.end), int(np.sum(res.end == END_CONVERGED)),
        int(np.sum(res.end == END_MERGING)), int(np.sum(res.end == END_BUDGET)),
    )  # fmt: skip
    return PopulationResult(
        centers=res.centers,
        loglik=res.loglik,
        n_iter=res.n_iter,
        end=res.end,
        error=res.error,
        method=method,
    )


@dataclass
class _Phase:
    """One phase of population EM for a batch: arrays (B, ...), updated in place."""

    centers: np.ndarray
    loglik: np.ndarray
    loglik_error: np.ndarray
    n_iter: np.ndarray
    end: np.ndarray
    error: np.ndarray
    nodes: np.ndarray
    rank: np.ndarray


def _take(res: _Phase, runs: np.ndarray, other: _Phase, rows: np.ndarray) -> None:
    """Rows ``rows`` of a later phase ``other`` become runs ``runs`` of ``res``;
    their steps are added to those taken before."""
    for name in ("centers", "loglik", "loglik_error", "end", "error", "nodes", "rank"):
        getattr(res, name)[runs] = getattr(other, name)[rows]
    res.n_iter[runs] += other.n_iter[rows]


def _iterate(
    centers_true: np.ndarray,
    centers: np.ndarray,
    max_iter: int,
    tol: float,
    accuracy: float,
    merges: bool,
) -> _Phase:
    """Population EM steps until every run stops; the rule of the module
    docstring, with the merge test only if ``merges``."""
    n_batch, k, _ = centers.shape
    mu = centers.copy()
    n_iter = np.zeros(n_batch, dtype=np.int64)
    end = np.full(n_batch, END_BUDGET, dtype=np.int8)
    error = np.zeros(n_batch)
    nodes = np.zeros(n_batch, dtype=np.int64)
    rank = np.zeros(n_batch, dtype=np.int64)
    steps = np.full((n_batch, _RATIO_HISTORY + 1), np.nan)
    dist_hist = np.full((n_batch, _MERGE_WINDOW + 1), np.nan)
    pair_hist = np.full((n_batch, _MERGE_WINDOW + 1), -1, dtype=np.int64)
    active = np.arange(n_batch)

    for it in range(1, max_iter + 1):
        new, acc = evaluate("step", centers_true, mu[active], accuracy=accuracy)
        step = np.linalg.norm(new - mu[active], axis=2).max(axis=1)
        mu[active] = new
        n_iter[active] = it
        error[active] = acc.error
        nodes[active] = acc.nodes
        rank[active] = acc.rank

        steps[active] = np.roll(steps[active], -1, axis=1)
        steps[active, -1] = step
        ratios = steps[active, 1:] / steps[active, :-1]
        rho = np.max(ratios, axis=1)  # NaN until enough history
        with np.errstate(divide="ignore", invalid="ignore"):
            remaining = step * rho / (1.0 - rho)
        rounding = _ROUND_FACTOR * (1.0 + np.abs(new).max(axis=(1, 2)))
        # The piecewise rule's panels move in jumps with the centers, and the
        # quasi-Monte Carlo points turn with the reduced basis: either map is
        # smooth only to about its error.
        noise = _NOISE_FACTOR * acc.error + rounding
        converged = (
            (step <= rounding)
            | ((rho < 1.0) & (remaining <= tol))
            | ((step <= noise) & ~(rho < 1.0) & (it > _RATIO_HISTORY))
        )

        pair, dist = _closest_pair(new)
        dist_hist[active] = np.roll(dist_hist[active], -1, axis=1)
        dist_hist[active, -1] = dist
        pair_hist[active] = np.roll(pair_hist[active], -1, axis=1)
        pair_hist[active, -1] = pair
        merging = _merging(dist_hist[active], pair_hist[active], step, tol) & ~converged
        if not merges:
            merging[:] = False

        end[active[converged]] = END_CONVERGED
        end[active[merging]] = END_MERGING
        active = active[~(converged | merging)]
        if active.size == 0:
            break

    loglik, loglik_acc = evaluate("loglik", centers_true, mu, accuracy=accuracy)
    return _Phase(
        centers=mu,
        loglik=loglik,
        loglik_error=np.broadcast_to(loglik_acc.error, loglik.shape).copy(),
        n_iter=n_iter,
        end=end,
        error=error,
        nodes=nodes,
        rank=rank,
    )


def _split_raises(
    centers_true: np.ndarray, centers: np.ndarray, accuracy: float
) -> np.ndarray:
    """(B,) whether splitting some group of equal centers raises the population
    log-likelihood (a saddle across the group); centers (B, k, d)."""
    hess, acc = evaluate("hessian", centers_true, centers, accuracy=accuracy)
    n_batch, k, d = centers.shape
    band = np.where(acc.rank >= 4, _SPLIT_BAND_QMC, _SPLIT_BAND_PIECEWISE)
    margin = np.maximum(_SPLIT_FLOOR, band * k * d * acc.error)
    out = np.zeros(n_batch, dtype=bool)
    for b in range(n_batch):
        basis = []
        for j in range(k):
            group = np.flatnonzero(np.all(centers[b] == centers[b, j], axis=1))
            if group[0] != j or group.size < 2:
                continue
            # Moving one member against the first, coordinate by coordinate,
            # spans every split of the group that keeps its mean.
            for other in group[1:]:
                for c in range(d):
                    v = np.zeros((k, d))
                    v[j, c], v[other, c] = 1.0, -1.0
                    basis.append(v.ravel())
        if basis:
            q, _ = np.linalg.qr(np.array(basis).T)
            curvature = np.linalg.eigvalsh(q.T @ hess[b] @ q)[-1]
            out[b] = curvature > margin[b]
    return out


def _closest_pair(mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B,) index j * k + l of the closest pair of centers and its distance."""
    n_batch, k, _ = mu.shape
    if k < 2:
        return np.full(n_batch, -1), np.full(n_batch, np.inf)
    dist = np.linalg.norm(mu[:, :, None, :] - mu[:, None, :, :], axis=3)
    # A center with itself, and equal centers (a pair merged already, which
    # stay equal), are not candidates.
    dist[dist == 0] = np.inf
    flat = dist.reshape(n_batch, -1)
    idx = np.argmin(flat, axis=1)
    return idx, flat[np.arange(n_batch), idx]


def _merging(
    dist: np.ndarray, pair: np.ndarray, step: np.ndarray, tol: float
) -> np.ndarray:
    """The slow-merge test of the module docstring on (b, W + 1) histories."""
    width = dist.shape[1] - 1
    half = width // 2
    with np.errstate(invalid="ignore", divide="ignore"):
        full = np.all(np.isfinite(dist), axis=1) & np.all(pair == pair[:, :1], axis=1)
        falls = -np.diff(dist, axis=1)
        monotone = np.all(falls > 0.0, axis=1)
        slow = dist[:, -1] >= dist[:, 0] * (1.0 - _MERGE_SLOW) ** width
        pair_moves = step <= 2.0 * falls[:, -1] + tol
        fall_a = dist[:, 0] - dist[:, half]
        fall_b = dist[:, half] - dist[:, 2 * half]
        level_a = 0.5 * (dist[:, 0] + dist[:, half])
        level_b = 0.5 * (dist[:, half] + dist[:, 2 * half])
        power = np.log(fall_a / fall_b) / np.log(level_a / level_b)
        fits = (power >= _MERGE_POWER[0]) & (power <= _MERGE_POWER[1])
    return full & monotone & slow & pair_moves & fits
