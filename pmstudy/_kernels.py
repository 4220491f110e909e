"""numba kernels for batched EM: dispatch on (k, d), the convergence walk, loglik.

Two kernels do the EM steps, both parallel over runs (``prange``), each run
computed whole by one thread, so a run's arithmetic never depends on the
other runs in the batch:

- small k * d: the fused kernel generated per (k, d) in `_kernel_small`, on
  points-last data (R, d, m);
- large k * d: the register-blocked kernel of `_kernel_large`, on
  points-last data padded to a multiple of four coordinates (R, D, m).

`centered_points_last` makes that layout and the mean shift (see
`pmstudy.em`) in one parallel pass over the data.

Both use NumPy's error model (no zero checks that block vectorisation) and
fast-math flags that allow reassociation of sums and FMA contraction; the
exp itself is compiled without reassociation (see `pmstudy.fastexp`). Memory
beyond one transposed copy of the data is O(k * d + k * 256) per thread.
BLAS is held to one thread while they run (the parallelism is over runs).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys

import numba
import numpy as np
from numba import njit, prange
from threadpoolctl import ThreadpoolController

from pmstudy import _kernel_large
from pmstudy._kernel_small import small_kernel

logger = logging.getLogger(__name__)

FLAGS = {"reassoc", "contract", "nsz", "arcp"}
CHUNK = 8
# Steps per call grow with the steps taken (an eighth of them, up to
# MAX_CHUNK): a run that stops inside a call wastes at most an eighth of its
# steps, while the few slow runs of a batch's tail are not paced by the cost
# of a call.
MAX_CHUNK = 256
# ... and the recorded path of a call stays below this many float64 values.
MAX_PATH_VALUES = 1 << 22

# Fused kernels keep k * (d + 1) running sums and k * d center coordinates in
# registers; beyond this they spill and the register-blocked kernel wins.
SMALL_MAX_K = 8
SMALL_MAX_SUMS = 40

_LOG_2PI = math.log(2.0 * math.pi)
_LAYOUT_TILE = 256
_controller: ThreadpoolController | None = None


def use_small_kernel(k: int, d: int) -> bool:
    """Whether (k, d) gets the fused, generated kernel."""
    return k <= SMALL_MAX_K and k * (d + 1) <= SMALL_MAX_SUMS


def single_threaded_blas():
    """Context manager holding BLAS to one thread (numba's pool untouched)."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


def _in_dask_worker() -> bool:
    """Whether this call runs in a Dask worker's task (without importing Dask)."""
    worker = sys.modules.get("distributed")
    if worker is None:
        return False
    try:
        worker.get_worker()
    except ValueError:
        return False
    return True


@contextlib.contextmanager
def kernel_threads():
    """BLAS on one thread; numba's pool on one thread inside a Dask worker.

    The study runs one Dask worker process per core, each with one thread,
    so the cores are already busy with one task each: a numba pool of
    several threads in every worker would oversubscribe them (and its idle
    threads spin). Outside Dask (the bench, a notebook) numba keeps its pool,
    ``NUMBA_NUM_THREADS`` threads, and parallelises over runs.
    ``PMSTUDY_EM_THREADS`` overrides both choices.
    """
    configured = os.environ.get("PMSTUDY_EM_THREADS")
    if configured:
        threads = max(1, min(int(configured), numba.config.NUMBA_NUM_THREADS))
    elif _in_dask_worker():
        threads = 1
    else:
        threads = numba.get_num_threads()
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        with single_threaded_blas():
            yield
    finally:
        numba.set_num_threads(previous)


@njit(cache=True, parallel=True, nogil=True)
def centered_points_last(data, n_dim):
    """Each data set minus its mean, points last, zero rows up to n_dim.

    data (R, m, d) -> (out (R, n_dim, m), shift (R, d)), n_dim >= d. Any
    shift would do (EM is translation-equivariant); one near the mean keeps
    the logits small. The mean is a plain running sum per data set, so it
    does not depend on the number of threads.
    """
    n_sets, m, d = data.shape
    out = np.empty((n_sets, n_dim, m))
    shift = np.empty((n_sets, d))
    for r in prange(n_sets):
        x = data[r]
        acc = np.zeros(d)
        for t in range(m):
            for i in range(d):
                acc[i] += x[t, i]
        mean = acc / m
        shift[r] = mean
        # Tiles of points, so that the strided reads stay in cache.
        for lo in range(0, m, _LAYOUT_TILE):
            hi = min(lo + _LAYOUT_TILE, m)
            for i in range(d):
                row = out[r, i]
                for t in range(lo, hi):
                    row[t] = x[t, i] - mean[i]
        out[r, d:] = 0.0
    return out, shift


@njit(cache=True, parallel=True, nogil=True)
def loglik_runs(data, run_data, centers):
    """(B,) average log-likelihood; data (R, D, m) points last, D >= d (rows
    beyond d are ignored), centers (B, k, d).

    Direct squared distances (no cancellation far from the origin) and the
    C library's exp and log: one pass, where accuracy matters more than speed.
    """
    n_runs, k, d = centers.shape
    m = data.shape[2]
    out = np.empty(n_runs)
    const = -0.5 * d * _LOG_2PI - math.log(k)
    for b in prange(n_runs):
        x = data[run_data[b]]
        mu = centers[b]
        logp = np.empty(k)
        total = 0.0
        for t in range(m):
            top = -np.inf
            for j in range(k):
                acc = 0.0
                for i in range(d):
                    diff = x[i, t] - mu[j, i]
                    acc += diff * diff
                logp[j] = -0.5 * acc
                top = max(top, logp[j])
            inner = 0.0
            for j in range(k):
                inner += math.exp(logp[j] - top)
            total += top + math.log(inner)
        out[b] = total / m + const
    return out


@njit(cache=True, error_model="numpy", nogil=True)
def _sum_squares(a, b):
    """sum_i (a_i - b_i)^2 in NumPy's order for short rows (one accumulator)."""
    acc = (a[0] - b[0]) * (a[0] - b[0])
    for i in range(1, a.shape[0]):
        acc += (a[i] - b[i]) * (a[i] - b[i])
    return acc


@njit(cache=True, error_model="numpy", nogil=True)
def walk_rule(
    path,
    starved_path,
    runs,
    taken,
    tol,
    noise,
    merge_block,
    block_slow,
    step_fraction,
    drift_fraction,
    step_norm,
    ratios,
    pair_dist,
    pair,
    approach,
    end,
    n_iter,
    starved,
    stop_at,
):
    """The convergence rule of `pmstudy.em`, walked along recorded paths.

    path (b, n + 1, k, d) and starved_path (b, n) come from a stepper for the
    runs ``runs`` (b,); steps taken + 1 .. taken + n are examined in turn
    and each run stops at the first step where the rule fires. The rule's
    per-run state (step_norm (B,), ratios (B, 3), pair_dist (B, H), pair
    (B,), approach (B,)) is that of `pmstudy.em._ConvergenceMonitor`, updated
    in place, as are end, n_iter and starved (B,). stop_at (b,) receives the
    index into the path of each run's last centers. Compiled without
    fast-math: the rule relies on IEEE inf and NaN comparisons, and it makes
    the same decisions as the NumPy monitor step by step.
    """
    n_local, n_plus, k, d = path.shape
    n_steps = n_plus - 1
    hist_len = pair_dist.shape[1]
    n_ratio = ratios.shape[1]
    for a in range(n_local):
        b = runs[a]
        stop_at[a] = n_steps
        for i in range(n_steps):
            step = taken + i + 1
            starved[b] |= starved_path[a, i]
            old = path[a, i]
            new = path[a, i + 1]
            top = 0.0
            scale = 0.0
            for j in range(k):
                top = max(top, _sum_squares(new[j], old[j]))
                for c in range(d):
                    scale = max(scale, abs(new[j, c]))
            norm = math.sqrt(top)
            previous = step_norm[b]
            ratio = norm / previous if previous > 0 else np.inf
            rho = ratio
            for r in range(n_ratio - 1):
                ratios[b, r] = ratios[b, r + 1]
                rho = max(rho, ratios[b, r])
            ratios[b, n_ratio - 1] = ratio
            step_norm[b] = norm
            remaining = norm * rho / (1 - rho) if rho < 1 else np.inf
            converged = norm == 0 or norm <= noise * (1.0 + scale) or remaining <= tol

            merging = False
            if k >= 2:
                closest = np.inf
                best = -1
                index = 0
                for r in range(k):
                    for c in range(r + 1, k):
                        dist = math.sqrt(_sum_squares(new[r], new[c]))
                        # Equal centers (a pair merged already) stay equal.
                        if dist > 0 and dist < closest:
                            closest = dist
                            best = index
                        index += 1
                last = pair_dist[b, (step - 1) % hist_len]
                if best == pair[b] and closest < last:
                    approach[b] += 1
                else:
                    approach[b] = 0
                pair[b] = best
                pair_dist[b, step % hist_len] = closest
                w = merge_block
                if step >= 3 * w and approach[b] >= 3 * w:
                    d0 = pair_dist[b, (step - 3 * w) % hist_len]
                    d1 = pair_dist[b, (step - 2 * w) % hist_len]
                    d2 = pair_dist[b, (step - w) % hist_len]
                    d3 = closest
                    close_old = d0 - d1
                    close_mid = d1 - d2
                    close_new = d2 - d3
                    r_new = close_new / close_mid
                    r_mid = close_mid / close_old
                    target_new = d3 - close_new * r_new / (1 - r_new)
                    target_mid = d2 - close_mid * r_mid / (1 - r_mid)
                    drift = target_mid - target_new
                    merging = (
                        r_new >= block_slow
                        and r_new < 1
                        and r_mid < 1
                        and norm <= step_fraction * d3
                        and drift >= drift_fraction * close_new
                    )
            if merging or converged:
                end[b] = 1 if merging else 0  # END_MERGING, END_CONVERGED
                n_iter[b] = step
                stop_at[a] = i + 1
                break


class NumbaStepper:
    """EM steps through the numba kernels, chosen by (k, d).

    The kernels take `CHUNK` steps per call: launching a parallel region per
    step costs more than a step on small problems.

    Parameters
    ----------
    data : np.ndarray
        (R, m, d) data; the stepper works on it minus ``shift`` (R, d), its
        mean, in the kernel's points-last layout.
    n_starts : int
        S; run b uses data set b // S.
    k : int
        Number of centers.
    """

    def __init__(self, data: np.ndarray, n_starts: int, k: int) -> None:
        n_sets, _, d = data.shape
        self.d = d
        self.chunk = CHUNK
        self.values_per_run = k * d
        self.run_data = np.repeat(np.arange(n_sets, dtype=np.int64), n_starts)
        if use_small_kernel(k, d):
            self.kernel = small_kernel(k, d).em_steps
            n_dim = d
        else:
            self.kernel = _kernel_large.em_steps
            n_dim = _kernel_large.padded_dimension(d)
        self.layout_data, self.shift = centered_points_last(
            np.ascontiguousarray(data, dtype=np.float64), n_dim
        )

    def chunk_for(self, taken: int, max_iter: int, n_active: int) -> int:
        """Steps for the next call of ``n_active`` runs after ``taken`` steps."""
        cap = max(CHUNK, MAX_PATH_VALUES // (n_active * self.values_per_run))
        grown = max(CHUNK, min(taken // 8, MAX_CHUNK, cap))
        return min(grown, max_iter - taken)

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
        n_runs, k, d = centers.shape
        path = np.empty((n_runs, n_steps + 1, k, d))
        starved = np.zeros((n_runs, n_steps), dtype=bool)
        self.kernel(
            self.layout_data,
            self.run_data[active],
            np.ascontiguousarray(centers),
            path,
            starved,
        )
        return path, starved

    def log_likelihood(
        self, centers: np.ndarray, runs: np.ndarray | None = None
    ) -> np.ndarray:
        """(b,) average log-likelihood at centers (b, k, d) of ``runs`` (all)."""
        run_data = self.run_data if runs is None else self.run_data[runs]
        return loglik_runs(self.layout_data, run_data, np.ascontiguousarray(centers))

    def points(self, run: int) -> np.ndarray:
        """(m, d) shifted data set of run ``run`` (a view of the layout)."""
        return self.layout_data[self.run_data[run], : self.d].T
