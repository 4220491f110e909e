"""The piecewise Gauss-Legendre rule: batched moments of the responsibilities.

`moments` evaluates, for every member of a reduced batch, the integrals the
kernels in `pmstudy.population._kernels` describe, with n Gauss-Legendre
nodes per panel on every level. Two rules that differ only in n (the panels
are the same) give the error estimate used by `pmstudy.population.core`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np

from pmstudy.population import _kernels
from pmstudy.population.reduction import Reduction

logger = logging.getLogger(__name__)

MODE_STEP = 0  # w_j, w_j z
MODE_HESSIAN = 1  # w_j w_l, w_j w_l z, w_j w_l z z^T
MODE_LOGLIK = 2  # as MODE_STEP, and the log-sum-exp

# r = 1 batches smaller than this run on the calling thread: the work (about
# 0.1 ms a member) is smaller than handing it to threads.
_PARALLEL_LINES = 64
# r = 2 batches smaller than this too (one member is about 5 ms of work).
_PARALLEL_PLANES = 4
# Chunks per thread: tasks differ in cost, so a few chunks each balance them.
_CHUNKS_PER_THREAD = 4
_POOL: dict[tuple[int, int], ThreadPoolExecutor] = {}


@dataclass(frozen=True)
class PanelRule:
    """Shape of the panels (see `pmstudy.population._kernels`).

    Attributes
    ----------
    drop : float
        Contributions below exp(-drop) per unit volume are left out: the
        remainder where exp(-gap) phi is smaller, and each true component
        beyond the ball of radius sqrt(2 drop) around its center. The
        default, exp(-37) = 8.5e-17, is raised per member where a center's
        total responsibility is small (see `pmstudy.population.core`).
    first : float
        First panel width at a breakpoint, times 1 / (slope difference).
    growth : float
        Ratio of successive panel widths away from a breakpoint.
    cap : float
        Largest panel width (sigmas), before the outer levels divide it by
        the rate at which switching planes slide along the inner directions.
    rate_max : float, optional
        Largest such division; by default 16 for r = 2 and 1 (none) for
        r = 3, where it cost evaluations without gaining accuracy (measured
        on the tetrahedron workload of `pmstudy.population_bench`).
    """

    drop: float = 37.0
    first: float = 1.0
    growth: float = 3.0
    cap: float = 2.0
    rate_max: float | None = None

    def as_array(self, drop: float | None = None, rank: int = 2) -> np.ndarray:
        drop = self.drop if drop is None else drop
        rate_max = self.rate_max
        if rate_max is None:
            rate_max = 16.0 if rank <= 2 else 1.0
        return np.array(
            [math.sqrt(2.0 * drop), drop, self.first, self.growth, self.cap,
             rate_max]
        )  # fmt: skip


@functools.lru_cache(maxsize=64)
def gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n,) nodes and weights of the n-point Gauss-Legendre rule on [-1, 1]."""
    xs, ws = np.polynomial.legendre.leggauss(n)
    xs.setflags(write=False)
    ws.setflags(write=False)
    return xs, ws


@functools.lru_cache(maxsize=16)
def pair_index(k: int) -> np.ndarray:
    """(k, k) symmetric table: index of the pair (j, l), j <= l, in 0..k(k+1)/2-1."""
    table = np.empty((k, k), dtype=np.int64)
    count = 0
    for j in range(k):
        for m in range(j, k):
            table[j, m] = table[m, j] = count
            count += 1
    table.setflags(write=False)
    return table


@dataclass(frozen=True)
class Moments:
    """Integrals for a reduced batch, each weighted by 1/K0 per true component.

    With g_q = w_j (mode 0) or w_j w_l, j <= l (mode 1), z ~ N(m_i, I_r):

    Attributes
    ----------
    m0 : np.ndarray
        (b, K0, Q) E_i[g_q] / K0.
    m1 : np.ndarray
        (b, K0, Q, r) E_i[g_q z] / K0.
    m2 : np.ndarray
        (b, Q, r, r) sum_i E_i[g_q z z^T] / K0 (mode 1; zeros in mode 0).
    lse : np.ndarray
        (b, K0) E_i[log sum_j exp(<z, a_j> - |a_j|^2/2)] / K0 (mode 0).
    n_evaluations : int
        Nodes evaluated (innermost level), for benchmarks.
    """

    m0: np.ndarray
    m1: np.ndarray
    m2: np.ndarray
    lse: np.ndarray
    n_evaluations: int = 0


def moments(
    red: Reduction,
    mode: int,
    n: int,
    rule: PanelRule | None = None,
    drop: np.ndarray | None = None,
) -> Moments:
    """Moments of the responsibilities for every member of `red`.

    Parameters
    ----------
    red : Reduction
        Reduced batch of rank r in {0, 1, 2, 3}.
    mode : int
        `MODE_STEP` or `MODE_HESSIAN`.
    n : int
        Gauss-Legendre nodes per panel on every level.
    rule : PanelRule, optional
        Panel shape; the default is what the error estimates were tuned on.
    drop : np.ndarray, optional
        (b,) per-member cutoff replacing ``rule.drop``.
    """
    rule = PanelRule() if rule is None else rule
    n_batch, k, r = red.slopes.shape
    k_true = red.means.shape[1]
    n_q = k * (k + 1) // 2 if mode == MODE_HESSIAN else k
    wt = np.full(k_true, 1.0 / k_true)
    if r == 0:
        return _moments_rank0(red, mode, n_q)
    if r > 3:
        raise ValueError(f"the piecewise rule handles r <= 3, not r = {r}")
    xs, ws = gauss_legendre(n)
    pidx = pair_index(k)
    drops = np.full(n_batch, rule.drop) if drop is None else np.asarray(drop)
    prm = np.stack([rule.as_array(x, r) for x in drops])
    slopes = np.ascontiguousarray(red.slopes)
    means = np.ascontiguousarray(red.means)
    args = (slopes, means, red.rep, red.group_size, wt)
    if r == 1:
        acc = _zeros(n_batch, k_true, n_q, r)
        _in_chunks(_kernels.drive_lines, n_batch, n_batch >= _PARALLEL_LINES,
                   (*args, mode, pidx, xs, ws, prm, *acc))  # fmt: skip
        return Moments(*acc[:4], n_evaluations=int(acc[4].sum()))

    out_lo = np.empty((n_batch, _kernels.MAX_OUTER_PANELS))
    out_hi = np.empty((n_batch, _kernels.MAX_OUTER_PANELS))
    counts = _kernels.outer_panels_batch(*args, prm, out_lo, out_hi)
    task_b = np.repeat(np.arange(n_batch), counts)
    mask = np.arange(out_lo.shape[1])[None, :] < counts[:, None]
    acc = _zeros(task_b.size, k_true, n_q, r)
    parallel = r == 3 or n_batch >= _PARALLEL_PLANES
    _in_chunks(_kernels.drive_strips, task_b.size, parallel,
               (*args, task_b, out_lo[mask], out_hi[mask], mode, pidx, xs, ws, prm,
                *acc))  # fmt: skip
    # Sum each member's tasks in task order: the result does not depend on the
    # other members of the batch or on the threads.
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    nonempty = counts > 0
    total = []
    for part in acc:
        summed = np.zeros((n_batch,) + part.shape[1:], dtype=part.dtype)
        if task_b.size:
            summed[nonempty] = np.add.reduceat(part, starts[nonempty], axis=0)
        total.append(summed)
    return Moments(*total[:4], n_evaluations=int(total[4].sum()))


def _in_chunks(kernel, n_items: int, parallel: bool, args: tuple) -> None:
    """kernel(start, stop, *args) over 0..n_items-1, in threads if parallel.

    The kernels release the GIL and write each item's results to its own
    rows, so contiguous chunks can run concurrently and the results do not
    depend on the chunking. Threads: numba's setting (NUMBA_NUM_THREADS or
    `numba.set_num_threads`), so that whoever limits numba limits this too.
    """
    threads = numba.get_num_threads()
    if not parallel or threads < 2 or n_items < 2:
        kernel(0, n_items, *args)
        return
    n_chunks = min(n_items, threads * _CHUNKS_PER_THREAD)
    edges = np.linspace(0, n_items, n_chunks + 1).astype(np.int64)
    # One pool per thread count, kept for the process: starting threads on
    # every call would cost more than small jobs take. Keyed by the process
    # id as well: a forked child (multiprocessing workers) inherits the pool
    # object but not its threads, and must make its own.
    key = (os.getpid(), threads)
    pool = _POOL.get(key)
    if pool is None:
        pool = _POOL[key] = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="pmstudy-population"
        )
    futures = [
        pool.submit(kernel, int(a), int(b), *args)
        for a, b in zip(edges[:-1], edges[1:], strict=True)
        if b > a
    ]
    for future in futures:
        future.result()


def _zeros(n: int, k_true: int, n_q: int, r: int) -> tuple[np.ndarray, ...]:
    """Accumulators (see `Moments`) and the evaluation counter for n members."""
    return (
        np.zeros((n, k_true, n_q)),
        np.zeros((n, k_true, n_q, r)),
        np.zeros((n, n_q, r, r)),
        np.zeros((n, k_true)),
        np.zeros(n, dtype=np.int64),
    )


def _moments_rank0(red: Reduction, mode: int, n_q: int) -> Moments:
    """All estimates coincide: w_j = 1/K everywhere, the log-sum-exp is log K."""
    n_batch, k, _ = red.slopes.shape
    k_true = red.means.shape[1]
    value = 1.0 / k**2 if mode == MODE_HESSIAN else 1.0 / k
    m0 = np.full((n_batch, k_true, n_q), value / k_true)
    m1 = np.zeros((n_batch, k_true, n_q, 0))
    m2 = np.zeros((n_batch, n_q, 0, 0))
    lse = np.full((n_batch, k_true), np.log(k) / k_true)
    return Moments(m0, m1, m2, lse)
