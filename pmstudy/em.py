"""Batched EM for the centers of a uniform mixture of unit-variance Gaussians.

The model is f_mu(x) = (1/k) sum_j N(x; mu_j, I_d): weights stay 1/k and the
covariance stays I, so only the centers move. One EM step is

    w_tj  = softmax_j(<x_t, mu_j> - |mu_j|^2 / 2)      (E-step, in log space)
    mu_j <- sum_t w_tj x_t / sum_t w_tj                 (M-step)

`fit_em` runs R data sets times S starts ("runs") in one batch. Every run is
computed on its own: no sum ever mixes two runs, and a run's arithmetic does
not depend on which other runs are present, so its result is the same bit for
bit whatever the batch (the study's determinism across batchings relies on
it). Runs that have stopped leave the batch.

Translation
-----------
EM is equivariant under translation, so each data set is shifted by its own
mean (and its starts with it) before fitting and the centers are shifted back
at the end. This keeps the logits <x, mu> - |mu|^2/2 small when the data sit
far from the origin, where they would otherwise lose digits to cancellation.

Convergence rule
----------------
``tol`` is a distance on the centers, in units of sigma = 1: a run is
converged when the estimated distance between the centers it returns and the
fixed point that EM is converging to is at most ``tol``, where distances
between two sets of centers are the largest Euclidean distance between
corresponding centers, max_j |mu_j - mu'_j|.

Near a fixed point EM is a linear contraction: step n, s_n = mu^(n+1) - mu^(n),
shrinks as |s_n| ~ rho |s_(n-1)| with rho the largest eigenvalue of the EM
map's Jacobian (real and in [0, 1) at a strict local maximum). The remaining
distance is then the tail of a geometric series, |s_n| rho / (1 - rho). The
rule estimates rho as the largest of the last three step ratios
|s_i| / |s_(i-1)| (the largest, so that a transient quick step does not fake
fast convergence) and stops when

    rho < 1   and   |s_n| * rho / (1 - rho) <= tol.

On a slow plateau rho is near 1, the estimate of the remaining distance is
large whatever the step, and the rule refuses to stop; when a step grows
(rho >= 1) it never stops. With a correct rho the returned centers are within
about ``tol`` of the fixed point, so a tighter ``tol`` moves them by at most
about ``tol`` and cannot change which fixed point a run reached. An exact
fixed point (a zero step) stops at once. Steps below the float64 noise floor,
1024 * eps * (1 + max |mu|) on the mean-shifted centers, cannot be resolved:
such a run is converged whatever ``tol``.

Slow merging
------------
When two estimates sit on one cluster they may merge into one. At the merge
point the EM map has Jacobian eigenvalue 1 in the direction that separates
them, and the distance D between them closes sublinearly (D_(n+1) ~ D_n -
c D_n^p with p > 1), so rho -> 1 and the convergence rule above correctly
never fires; reaching the merged point within ``tol`` could take 1e5 or more
steps. The rule recognizes it on the closest pair of centers, over three
blocks of W = 25 steps: the pair stayed the closest pair and D fell at every
step; its closing per block slows by a ratio r with 0.99^W <= r < 1 (per step
at least 0.99, i.e. slow); the step is below 1% of D; and the linear
extrapolation of where D is heading, D* = D - C r / (1 - r) with C the closing
over the last block, itself moved down by at least a quarter of the closing in
that block. That last test separates a merge from a slow linear approach to a
positive distance, where D* stays put, and from a linear merge (D* = 0
throughout) that the ordinary rule finishes in reasonable time. The test does
not involve ``tol`` and fires long before D reaches ``tol`` (at D of order 0.1).
If both tests fire at the same step, the merge wins.

The run is then carried to the point it is merging into: the pair is replaced
by its midpoint (EM keeps two equal centers equal, so the pair stays merged)
and EM goes on from there under the same rules, with pairs that are already
equal left out of the merge test, until it converges; a later merge of another
pair is carried the same way. EM never lowers the likelihood, so a run cannot
be heading to a point whose log-likelihood is below the one it already had. If
the merged fixed point is below it (by more than rounding), the merge call was
wrong (a slow approach to a nearby distinct fixed point can look like a merge
for a while): it is withdrawn and EM goes on from where the run was, with the
merge test off. The call is withdrawn too if the merged point is a saddle,
which EM would leave by splitting the pair again. To second order, moving
merged centers apart at p by delta changes the log-likelihood in proportion
to delta^2 u' (C - I) u, where C is the covariance about p of the data
weighted by the group's total responsibility and u the direction of the
split: the merged point is a maximum across the pair only if every eigenvalue
of C is at most 1 (1 + 1e-6 here, a margin for a point converged to ``tol``;
a saddle that shallow has its split maximum within about 1e-3 of it).

A carried run ends with `END_MERGING` at a fixed point, which the outcome
judges like any other; each phase gets the full budget ``max_iter``, and
``n_iter`` counts the steps of every phase kept. The merged
point is reached under ``tol`` like any fixed point, so tightening ``tol`` does
not change the end kind.

Backends
--------
"numpy" is the plain reference path (array expressions, points in chunks of
fixed size so that memory stays bounded). "numba" runs the compiled kernels of
`pmstudy._kernels`: a fused kernel generated per small (k, d), a
register-blocked kernel over blocks of points for large k * d, both parallel
over runs; they take several steps per call (more as a run goes on: an eighth of
the steps taken, up to 256) and the rule above then walks the recorded path, in
compiled code when numba imports, so a run stops at exactly the step it would
stop at one step at a time. Inside a Dask worker numba's pool is held to one
thread (the workers already occupy the cores; see
`pmstudy._kernels.kernel_threads`). "auto" is numba when it imports. The two
backends agree to rounding (about 1e-14), not bit for bit; each is bit-for-bit
independent of the batch.

Starved centers
---------------
A center far from every point gets responsibilities that all underflow to
zero; its M-step would be 0/0. Such a center is kept where it was for that
step (it has no data to move it) and the run's ``starved`` flag is set. No
output is ever NaN or inf for finite input.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np

from pmstudy.errors import SpecError
from pmstudy.projection import responsibilities

logger = logging.getLogger(__name__)

END_CONVERGED: int = 0
END_MERGING: int = 1
END_BUDGET: int = 2

BACKENDS = ("auto", "numpy", "numba")

# Ratios of the convergence rule (see the module docstring).
_RATIO_HISTORY = 3
_NOISE_FACTOR = 1024.0 * np.finfo(np.float64).eps
_MERGE_BLOCK = 25
_MERGE_RHO_SLOW = 0.99
_MERGE_STEP_FRACTION = 0.01
_MERGE_DRIFT_FRACTION = 0.25
# A merged point may be below the run's log-likelihood by rounding only (the
# average over m points loses a few ulp of its size).
_LOGLIK_SLACK = 1e-12
# A merged point is a saddle when the responsibility-weighted covariance of
# its group exceeds 1 by more than this (see "Slow merging").
_SPLIT_SLACK = 1e-6

# Points per chunk in the NumPy path: bounds its temporaries, fixed so that the
# order of every sum depends only on the run's own shape.
_NUMPY_CHUNK_ELEMENTS = 1 << 20

_LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True)
class EMResult:
    """Result of a batched EM fit.

    Attributes
    ----------
    centers : np.ndarray
        (R, S, k, d) float64, final centers.
    loglik : np.ndarray
        (R, S) float64, average log-likelihood per point of the full density
        (1/k) sum_j N(x; mu_j, I), constants included, at the final centers.
    n_iter : np.ndarray
        (R, S) int64, EM steps taken.
    end : np.ndarray
        (R, S) int8, how the run ended: `END_CONVERGED`, `END_MERGING` or
        `END_BUDGET`.
    starved : np.ndarray
        (R, S) bool, some center's total responsibility underflowed to zero
        at some step (it was then kept where it was).
    """

    centers: np.ndarray
    loglik: np.ndarray
    n_iter: np.ndarray
    end: np.ndarray
    starved: np.ndarray


def fit_em(
    data: np.ndarray,
    centers_init: np.ndarray,
    *,
    max_iter: int,
    tol: float,
    backend: str = "auto",
) -> EMResult:
    """Fit the centers of every (data set, start) pair by EM.

    Parameters
    ----------
    data : np.ndarray
        (R, m, d) float64, R data sets of m points each. Finite.
    centers_init : np.ndarray
        (R, S, k, d) float64, S starts per data set. Finite.
    max_iter : int
        Iteration budget per run, at least 1.
    tol : float
        Convergence tolerance on the centers, in units of sigma = 1 (see the
        module docstring for the exact rule). Positive.
    backend : {"auto", "numpy", "numba"}
        "numpy" is the plain reference path; "numba" the compiled kernels;
        "auto" picks numba when it is importable.

    Returns
    -------
    EMResult
        Centers (R, S, k, d), log-likelihood (R, S), steps taken (R, S), end
        kind (R, S) and starved flag (R, S).

    Raises
    ------
    SpecError
        If shapes, values or options are invalid.
    """
    data, centers_init = _check_inputs(data, centers_init, max_iter, tol, backend)
    n_sets, n_starts, k, d = centers_init.shape

    stepper = _make_stepper(data, n_starts, k, backend)
    shift = stepper.shift  # (R, d)
    centers = (centers_init - shift[:, None, None, :]).reshape(-1, k, d).copy()

    with _kernel_context(stepper):
        end, n_iter, starved = _iterate(stepper, centers, max_iter, tol)
        loglik = stepper.log_likelihood(centers)
        _carry_merges(stepper, centers, loglik, end, n_iter, starved, max_iter, tol)
    centers = centers.reshape(n_sets, n_starts, k, d) + shift[:, None, None, :]
    return EMResult(
        centers=centers,
        loglik=loglik.reshape(n_sets, n_starts),
        n_iter=n_iter.reshape(n_sets, n_starts),
        end=end.reshape(n_sets, n_starts),
        starved=starved.reshape(n_sets, n_starts),
    )


def log_likelihood(data: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Average log-likelihood per point of the full mixture density.

    Parameters
    ----------
    data : np.ndarray
        (R, m, d) float64.
    centers : np.ndarray
        (R, S, k, d) float64.

    Returns
    -------
    np.ndarray
        (R, S) float64, (1/m) sum_t log((1/k) sum_j N(x_t; mu_j, I)).
    """
    data, centers = _check_arrays(data, centers)
    n_sets, n_starts, k, d = centers.shape
    shift = data.mean(axis=1)
    data_c = np.ascontiguousarray(data - shift[:, None, :])
    centers_c = (centers - shift[:, None, None, :]).reshape(-1, k, d)
    run_data = np.repeat(np.arange(n_sets), n_starts)
    return _loglik_numpy(data_c, run_data, centers_c).reshape(n_sets, n_starts)


# --------------------------------------------------------------------------
# validation


def _check_arrays(data: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, ...]:
    data = np.asarray(data)
    centers = np.asarray(centers)
    if data.ndim != 3 or data.shape[1] < 1 or data.shape[2] < 1:
        raise SpecError("data", data.shape, "an array of shape (R, m, d), m, d >= 1")
    if centers.ndim != 4 or centers.shape[2] < 1:
        raise SpecError(
            "centers_init", centers.shape, "an array of shape (R, S, k, d), k >= 1"
        )
    if centers.shape[0] != data.shape[0] or centers.shape[3] != data.shape[2]:
        raise SpecError(
            "centers_init",
            centers.shape,
            f"shape (R, S, k, d) matching data (R, m, d) = {data.shape}",
        )
    for name, array in (("data", data), ("centers_init", centers)):
        if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(
            array.dtype, np.integer
        ):
            raise SpecError(name, array.dtype, "a real float64 array")
    data = np.ascontiguousarray(data, dtype=np.float64)
    centers = np.ascontiguousarray(centers, dtype=np.float64)
    for name, array in (("data", data), ("centers_init", centers)):
        if not np.all(np.isfinite(array)):
            raise SpecError(name, "non-finite values", "finite numbers only")
    return data, centers


def _check_inputs(
    data: np.ndarray, centers: np.ndarray, max_iter: int, tol: float, backend: str
) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(max_iter, bool) or not isinstance(max_iter, int | np.integer):
        raise SpecError("max_iter", max_iter, "an integer >= 1")
    if max_iter < 1:
        raise SpecError("max_iter", max_iter, "an integer >= 1")
    if not isinstance(tol, float | int | np.floating) or not (0 < tol < np.inf):
        raise SpecError("tol", tol, "a finite number > 0")
    if backend not in BACKENDS:
        raise SpecError("backend", backend, f"one of {BACKENDS}")
    return _check_arrays(data, centers)


# --------------------------------------------------------------------------
# the iteration and its convergence rule


def _iterate(
    stepper: _NumpyStepper,
    centers: np.ndarray,
    max_iter: int,
    tol: float,
    runs: np.ndarray | None = None,
    merges: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run EM on ``runs`` (default all) until each stops; ``centers`` (B, k, d)
    is updated in place for those runs.

    The stepper takes ``stepper.chunk_for(...)`` steps per call and returns
    the whole path; the rule (compiled when numba imports) then walks that
    path step by step, and a run that
    stops inside a chunk keeps the centers of its stopping step (the extra
    steps it computed are dropped, so chunking changes no result). With
    ``merges`` False the slow-merge test never fires.

    Returns
    -------
    end, n_iter, starved : np.ndarray
        (B,) each; only the entries of ``runs`` are meaningful.
    """
    n_runs, k, _ = centers.shape
    end = np.full(n_runs, END_BUDGET, dtype=np.int8)
    n_iter = np.full(n_runs, max_iter, dtype=np.int64)
    starved = np.zeros(n_runs, dtype=bool)
    monitor = _ConvergenceMonitor(n_runs, k, tol, merges)
    active = np.arange(n_runs) if runs is None else np.asarray(runs, dtype=np.int64)
    taken = 0

    walk = _compiled_rule()
    while active.size and taken < max_iter:
        n_steps = stepper.chunk_for(taken, max_iter, active.size)
        path, starved_path = stepper.steps(active, centers[active], n_steps)
        if walk is not None:
            stop_at = np.empty(active.size, dtype=np.int64)
            walk(
                path,
                starved_path,
                active,
                taken,
                monitor.tol,
                _NOISE_FACTOR,
                _MERGE_BLOCK,
                monitor.block_slow,
                _MERGE_STEP_FRACTION,
                _MERGE_DRIFT_FRACTION,
                monitor.step_norm,
                monitor.ratios,
                monitor.pair_dist,
                monitor.pair,
                monitor.approach,
                end,
                n_iter,
                starved,
                stop_at,
            )
            live = np.flatnonzero(end[active] == END_BUDGET)
        else:
            stop_at, live = _walk_python(
                monitor, path, starved_path, active, taken, end, n_iter, starved
            )
        centers[active] = path[np.arange(active.size), stop_at]
        active = active[live]
        taken += n_steps

    logger.debug(
        "EM: %d runs, %d converged, %d merging, %d out of budget",
        n_runs,
        np.count_nonzero(end == END_CONVERGED),
        np.count_nonzero(end == END_MERGING),
        np.count_nonzero(end == END_BUDGET),
    )
    return end, n_iter, starved


def _carry_merges(
    stepper: _NumpyStepper,
    centers: np.ndarray,
    loglik: np.ndarray,
    end: np.ndarray,
    n_iter: np.ndarray,
    starved: np.ndarray,
    max_iter: int,
    tol: float,
) -> None:
    """Carry runs that stopped merging to the fixed point they merge into.

    See "Slow merging" in the module docstring. Arrays are (B, ...) and are
    updated in place for the runs that ended with `END_MERGING`; each run is
    handled on its own, so its result does not depend on the batch.
    """
    k = centers.shape[1]
    pending = np.flatnonzero(end == END_MERGING)
    # Each round merges one more pair, so k - 1 rounds end every chain.
    for _ in range(k - 1):
        if pending.size == 0:
            return
        trial = centers.copy()
        trial[pending] = merge_closest_pair(centers[pending])
        end2, n2, starved2 = _iterate(stepper, trial, max_iter, tol, runs=pending)
        loglik2 = stepper.log_likelihood(trial[pending], pending)
        before = loglik[pending]
        kept = loglik2 >= before - _LOGLIK_SLACK * (1.0 + np.abs(before))

        # A merged point that splitting would raise is a saddle: not the end.
        done = kept & (end2[pending] == END_CONVERGED)
        excess = np.zeros(pending.size)
        for a in np.flatnonzero(done):
            excess[a] = _split_excess(stepper.points(pending[a]), trial[pending[a]])
        kept &= excess <= _SPLIT_SLACK

        taken = pending[kept]
        centers[taken] = trial[taken]
        loglik[taken] = loglik2[kept]
        n_iter[taken] += n2[taken]
        starved[taken] |= starved2[taken]
        # Converged or merging again: END_MERGING; out of budget: undecided.
        end[taken] = np.where(end2[taken] == END_BUDGET, END_BUDGET, END_MERGING)

        withdrawn = pending[~kept]
        if withdrawn.size:
            logger.debug("EM: %d merge calls withdrawn", withdrawn.size)
            end3, n3, starved3 = _iterate(
                stepper, centers, max_iter, tol, runs=withdrawn, merges=False
            )
            end[withdrawn] = end3[withdrawn]
            n_iter[withdrawn] += n3[withdrawn]
            starved[withdrawn] |= starved3[withdrawn]
            loglik[withdrawn] = stepper.log_likelihood(centers[withdrawn], withdrawn)
        pending = taken[end2[taken] == END_MERGING]


def _split_excess(x: np.ndarray, centers: np.ndarray) -> float:
    """How far splitting a group of equal centers would raise the likelihood.

    Parameters
    ----------
    x : np.ndarray
        (m, d) data (as the stepper holds them).
    centers : np.ndarray
        (k, d) centers with at least one group of equal ones.

    Returns
    -------
    float
        The largest, over groups, of lambda_max(C) - 1, C the covariance of the
        data about the group's center weighted by the group's total
        responsibility (see the module docstring); -inf without a group.
    """
    resp = responsibilities(x, centers, np.zeros(len(centers)))  # (k, m)
    worst = -np.inf
    seen = np.zeros(len(centers), dtype=bool)
    for j in range(len(centers)):
        group = np.all(centers == centers[j], axis=1)
        if seen[j] or group.sum() < 2:
            continue
        seen |= group
        weight = resp[group].sum(axis=0)
        total = weight.sum()
        if total <= 0:
            continue
        y = x - centers[j]
        cov = (y * weight[:, None]).T @ y / total
        worst = max(worst, float(np.linalg.eigvalsh(cov)[-1]) - 1.0)
    return worst


def merge_closest_pair(centers: np.ndarray) -> np.ndarray:
    """Each run's closest pair of distinct centers merged into one point.

    Centers that are equal already form one group (an earlier merge): the
    two groups of the closest pair of distinct positions all move to the mean
    of their members.

    Parameters
    ----------
    centers : np.ndarray
        (b, k, d), k >= 2.

    Returns
    -------
    np.ndarray
        (b, k, d), a copy; a run whose centers are all equal is unchanged.
    """
    out = centers.copy()
    rows, cols = np.triu_indices(centers.shape[1], 1)
    dist = np.sum((centers[:, rows] - centers[:, cols]) ** 2, axis=2)  # (b, pairs)
    dist[dist == 0] = np.inf
    pair = np.argmin(dist, axis=1)
    for b in np.flatnonzero(np.isfinite(dist[np.arange(len(centers)), pair])):
        run = centers[b]
        j, i = rows[pair[b]], cols[pair[b]]
        group = np.all(run == run[j], axis=1) | np.all(run == run[i], axis=1)
        out[b, group] = run[group].mean(axis=0)
    return out


def _compiled_rule():
    """`pmstudy._kernels.walk_rule` when numba imports, else None."""
    try:
        from pmstudy._kernels import walk_rule
    except ImportError:
        return None
    return walk_rule


def _walk_python(
    monitor: _ConvergenceMonitor,
    path: np.ndarray,
    starved_path: np.ndarray,
    active: np.ndarray,
    taken: int,
    end: np.ndarray,
    n_iter: np.ndarray,
    starved: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The rule along a recorded path, one step at a time over all runs.

    The NumPy counterpart of `pmstudy._kernels.walk_rule`, used without
    numba. Returns the path index of each run's last centers (b,) and the
    local indices of the runs still going.
    """
    n_steps = path.shape[1] - 1
    stop_at = np.full(active.size, n_steps)
    live = np.arange(active.size)
    for i in range(n_steps):
        runs = active[live]
        starved[runs] |= starved_path[live, i]
        converged, merging = monitor.update(
            runs, path[live, i], path[live, i + 1], taken + i + 1
        )
        done = converged | merging
        end[runs[converged]] = END_CONVERGED
        end[runs[merging]] = END_MERGING
        n_iter[runs[done]] = taken + i + 1
        stop_at[live[done]] = i + 1
        live = live[~done]
        if live.size == 0:
            break
    return stop_at, live


class _ConvergenceMonitor:
    """Per-run state of the convergence rule; see the module docstring.

    All runs start together, so they share the step counter, and the state of
    a run is read and written only through its own row: the decisions for one
    run never depend on the others.
    """

    def __init__(self, n_runs: int, k: int, tol: float, merges: bool = True) -> None:
        self.tol = float(tol)
        self.k = k
        self.step_norm = np.full(n_runs, np.nan)
        self.ratios = np.full((n_runs, _RATIO_HISTORY), np.inf)
        # Closest-pair history over three blocks plus one step.
        self.history_len = 3 * _MERGE_BLOCK + 1
        self.pair_dist = np.full((n_runs, self.history_len), np.nan)
        self.pair = np.full(n_runs, -1, dtype=np.int64)
        self.approach = np.zeros(n_runs, dtype=np.int64)
        # Without the merge test, a block ratio that no closing pair can reach.
        self.block_slow = _MERGE_RHO_SLOW**_MERGE_BLOCK if merges else np.inf
        if k >= 2:
            rows, cols = np.triu_indices(k, 1)
            self.pair_rows, self.pair_cols = rows, cols

    def update(
        self, active: np.ndarray, old: np.ndarray, new: np.ndarray, step: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Record step ``step`` (old -> new, each (b, k, d)); say who stops.

        Returns
        -------
        converged, merging : np.ndarray
            (b,) bool each, for the runs in ``active``.
        """
        norm = np.sqrt(np.max(np.sum((new - old) ** 2, axis=2), axis=1))
        previous = self.step_norm[active]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(previous > 0, norm / previous, np.inf)
        ratios = np.concatenate([self.ratios[active, 1:], ratio[:, None]], axis=1)
        self.ratios[active] = ratios
        self.step_norm[active] = norm

        rho = np.max(ratios, axis=1)  # inf until three ratios are known
        with np.errstate(divide="ignore", invalid="ignore"):
            remaining = np.where(rho < 1, norm * rho / (1 - rho), np.inf)
        scale = 1.0 + np.max(np.abs(new), axis=(1, 2))
        converged = (
            (norm == 0) | (norm <= _NOISE_FACTOR * scale) | (remaining <= self.tol)
        )

        merging = self._update_merge(active, new, norm, step)
        return converged & ~merging, merging

    def _update_merge(
        self, active: np.ndarray, new: np.ndarray, norm: np.ndarray, step: int
    ) -> np.ndarray:
        if self.k < 2:
            return np.zeros(active.size, dtype=bool)
        diff = new[:, self.pair_rows, :] - new[:, self.pair_cols, :]
        dist = np.sqrt(np.sum(diff * diff, axis=2))  # (b, n_pairs)
        # Equal centers (a pair merged already) stay equal: not a candidate.
        dist[dist == 0] = np.inf
        pair = np.argmin(dist, axis=1)
        closest = dist[np.arange(active.size), pair]
        pair[np.isinf(closest)] = -1

        slot = step % self.history_len
        last = self.pair_dist[active, (step - 1) % self.history_len]
        approaching = (pair == self.pair[active]) & (closest < last)
        approach = np.where(approaching, self.approach[active] + 1, 0)
        self.approach[active] = approach
        self.pair[active] = pair
        self.pair_dist[active, slot] = closest

        w = _MERGE_BLOCK
        if step < 3 * w:
            return np.zeros(active.size, dtype=bool)
        hist = self.pair_dist[active]
        d0, d1, d2, d3 = (
            hist[:, (step - i * w) % self.history_len] for i in (3, 2, 1, 0)
        )
        close_old, close_mid, close_new = d0 - d1, d1 - d2, d2 - d3
        # Zero or infinite ratios are legitimate here (a pair that stopped
        # closing): they fail the comparisons below, as they should.
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            r_new = close_new / close_mid
            r_mid = close_mid / close_old
            target_new = d3 - close_new * r_new / (1 - r_new)
            target_mid = d2 - close_mid * r_mid / (1 - r_mid)
            drift = target_mid - target_new
        return (
            (approach >= 3 * w)
            & (r_new >= self.block_slow)
            & (r_new < 1)
            & (r_mid < 1)
            & (norm <= _MERGE_STEP_FRACTION * d3)
            & (drift >= _MERGE_DRIFT_FRACTION * close_new)
        )


# --------------------------------------------------------------------------
# the plain NumPy path


def _make_stepper(
    data: np.ndarray, n_starts: int, k: int, backend: str
) -> _NumpyStepper:
    """The stepper for ``backend``; "auto" prefers numba and falls back."""
    if backend in ("auto", "numba"):
        try:
            from pmstudy._kernels import NumbaStepper
        except ImportError:
            if backend == "numba":
                raise
            logger.warning("numba is not importable: EM runs on the NumPy path")
        else:
            return NumbaStepper(data, n_starts, k)
    return _NumpyStepper(data, n_starts)


def _kernel_context(stepper: object):
    """BLAS held to one thread for the numba kernels (they run in parallel);
    inside a Dask worker, numba's pool held to one thread too (see
    `pmstudy._kernels.kernel_threads`)."""
    if isinstance(stepper, _NumpyStepper):
        return contextlib.nullcontext()
    from pmstudy._kernels import kernel_threads

    return kernel_threads()


class _NumpyStepper:
    """EM steps with NumPy array expressions: the reference path.

    Parameters
    ----------
    data : np.ndarray
        (R, m, d) data; the stepper works on it minus ``shift`` (R, d), its
        mean.
    n_starts : int
        S; run b uses data set b // S.
    """

    chunk = 1  # no launch cost to amortise

    def chunk_for(self, taken: int, max_iter: int, n_active: int) -> int:
        """Steps for the next call: one (no call cost to amortise)."""
        return 1

    def __init__(self, data: np.ndarray, n_starts: int) -> None:
        self.shift = data.mean(axis=1)
        self.data = np.ascontiguousarray(data - self.shift[:, None, :])
        self.run_data = np.repeat(np.arange(data.shape[0]), n_starts)

    def steps(
        self, active: np.ndarray, centers: np.ndarray, n_steps: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``n_steps`` EM steps for runs ``active`` from centers (b, k, d).

        Returns
        -------
        path : np.ndarray
            (b, n_steps + 1, k, d), the start and the centers after each step.
        starved : np.ndarray
            (b, n_steps) bool, some center was starved at that step.
        """
        path = np.empty((centers.shape[0], n_steps + 1) + centers.shape[1:])
        path[:, 0] = centers
        starved = np.zeros((centers.shape[0], n_steps), dtype=bool)
        for i in range(n_steps):
            for run_set, lo, hi in _groups(self.run_data[active]):
                path[lo:hi, i + 1], starved[lo:hi, i] = _em_step_numpy(
                    self.data[run_set], path[lo:hi, i]
                )
        return path, starved

    def log_likelihood(
        self, centers: np.ndarray, runs: np.ndarray | None = None
    ) -> np.ndarray:
        """(b,) average log-likelihood at centers (b, k, d) of ``runs`` (all)."""
        run_data = self.run_data if runs is None else self.run_data[runs]
        return _loglik_numpy(self.data, run_data, centers)

    def points(self, run: int) -> np.ndarray:
        """(m, d) shifted data set of run ``run``."""
        return self.data[self.run_data[run]]


def _groups(run_data: np.ndarray):
    """Yield (data set, lo, hi) for the runs [lo, hi) that share a data set."""
    cuts = np.flatnonzero(np.diff(run_data)) + 1
    bounds = np.concatenate([[0], cuts, [run_data.size]])
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        yield int(run_data[lo]), int(lo), int(hi)


def _em_step_numpy(x: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, ...]:
    """One EM step for g starts on one data set.

    Parameters
    ----------
    x : np.ndarray
        (m, d) data.
    centers : np.ndarray
        (g, k, d) centers.

    Returns
    -------
    new_centers : np.ndarray
        (g, k, d).
    starved : np.ndarray
        (g,) bool, some center got zero total responsibility (kept in place).
    """
    m, d = x.shape
    g, k, _ = centers.shape
    chunk = max(1, _NUMPY_CHUNK_ELEMENTS // (k * max(d, 1)))
    half_sq = 0.5 * np.sum(centers * centers, axis=2)[:, None, :]  # (g, 1, k)
    centers_t = centers.transpose(0, 2, 1)
    sums = np.zeros((g, k, d))
    counts = np.zeros((g, k))
    for lo in range(0, m, chunk):
        xc = x[lo : lo + chunk]
        logits = np.matmul(xc, centers_t) - half_sq  # (g, c, k)
        logits -= np.max(logits, axis=2, keepdims=True)
        resp = np.exp(logits)
        resp /= np.sum(resp, axis=2, keepdims=True)
        sums += np.matmul(resp.transpose(0, 2, 1), xc)
        counts += np.sum(resp, axis=1)

    fed = counts > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        new = np.where(fed[:, :, None], sums / counts[:, :, None], centers)
    return new, ~np.all(fed, axis=1)


def _loglik_numpy(
    data_c: np.ndarray, run_data: np.ndarray, centers: np.ndarray
) -> np.ndarray:
    """(B,) average log-likelihood of runs with centers (B, k, d)."""
    _, m, d = data_c.shape
    k = centers.shape[1]
    chunk = max(1, _NUMPY_CHUNK_ELEMENTS // (k * d))
    const = -0.5 * d * _LOG_2PI - np.log(k)
    out = np.empty(centers.shape[0])
    for b in range(centers.shape[0]):
        x = data_c[run_data[b]]
        total = 0.0
        for lo in range(0, m, chunk):
            # Direct squared distances: no cancellation when points are far
            # from the origin but close to a center.
            diff = x[lo : lo + chunk, None, :] - centers[b][None, :, :]
            logp = -0.5 * np.sum(diff * diff, axis=2)  # (c, k)
            top = np.max(logp, axis=1)
            lse = top + np.log(np.sum(np.exp(logp - top[:, None]), axis=1))
            total += float(np.sum(lse))
        out[b] = total / m + const
    return out
