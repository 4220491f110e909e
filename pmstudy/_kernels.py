"""numba kernels for batched EM: dispatch on (k, d), blocked BLAS path, loglik.

Two kernels do the EM steps, both parallel over runs (``prange``), each run
computed whole by one thread, so a run's arithmetic never depends on the
other runs in the batch:

- small k * d: the fused kernel generated per (k, d) in `_kernel_small`, on
  points-last data (R, d, m);
- large k * d: blocks of `BLOCK` points on points-first data (R, m, d), with
  BLAS for the two products (logits = mu @ x_block.T, sums += w @ x_block)
  and `fast_exp` for the softmax. BLAS is held to one thread while these run
  (the parallelism is over runs).

Both use NumPy's error model (no zero checks that block vectorisation) and
fast-math flags that allow reassociation of sums and FMA contraction; the
exp itself is compiled without reassociation (see `pmstudy.fastexp`). Memory
beyond one transposed copy of the data is O(k * BLOCK) per thread.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from numba import njit, prange
from threadpoolctl import ThreadpoolController

from pmstudy._kernel_small import small_kernel
from pmstudy.fastexp import fast_exp_nonpositive

logger = logging.getLogger(__name__)

FLAGS = {"reassoc", "contract", "nsz", "arcp"}
BLOCK = 256
CHUNK = 8

# Fused kernels keep k * (d + 1) running sums and k * d center coordinates in
# registers; beyond this they spill and the blocked BLAS kernel wins.
SMALL_MAX_K = 8
SMALL_MAX_SUMS = 40

_LOG_2PI = math.log(2.0 * math.pi)
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


@njit(cache=True, fastmath=FLAGS, error_model="numpy", nogil=True)
def _softmax_columns(logits, half_sq, top, total):
    """In place: logits (k, p) -> responsibilities; returns nothing.

    Row j gets half_sq[j] added; each column is shifted by its maximum and
    normalised. top and total are (p,) scratch.
    """
    k, p = logits.shape
    for t in range(p):
        top[t] = logits[0, t] + half_sq[0]
    for j in range(1, k):
        for t in range(p):
            v = logits[j, t] + half_sq[j]
            top[t] = v if v > top[t] else top[t]
    for t in range(p):
        total[t] = 0.0
    for j in range(k):
        for t in range(p):
            e = fast_exp_nonpositive(logits[j, t] + half_sq[j] - top[t])
            logits[j, t] = e
            total[t] += e
    for t in range(p):
        total[t] = 1.0 / total[t]
    for j in range(k):
        for t in range(p):
            logits[j, t] *= total[t]


@njit(cache=True, fastmath=FLAGS, error_model="numpy", nogil=True)
def _em_step_blocked(x, mu, sums, counts, logits, top, total):
    """One EM pass of one run: x (m, d), mu (k, d) -> sums (k, d), counts (k,)."""
    m = x.shape[0]
    k = mu.shape[0]
    half_sq = np.empty(k)
    for j in range(k):
        acc = 0.0
        for i in range(mu.shape[1]):
            acc += mu[j, i] * mu[j, i]
        half_sq[j] = -0.5 * acc
    sums[:] = 0.0
    counts[:] = 0.0
    for lo in range(0, m, BLOCK):
        hi = min(lo + BLOCK, m)
        block = x[lo:hi]
        if hi - lo == BLOCK:
            resp = logits
            np.dot(mu, block.T, resp)
            _softmax_columns(resp, half_sq, top, total)
        else:
            resp = np.dot(mu, block.T)
            _softmax_columns(resp, half_sq, top, total)
        sums += np.dot(resp, block)
        for j in range(k):
            acc = 0.0
            for t in range(hi - lo):
                acc += resp[j, t]
            counts[j] += acc


@njit(cache=True, parallel=True, error_model="numpy", nogil=True)
def em_steps_blocked(data, run_data, centers, path, starved):
    """EM steps for every run, recording each.

    data (R, m, d); centers (B, k, d); path (B, n + 1, k, d) receives the
    start and the centers after each of the n steps; starved (B, n) whether
    some center had zero total responsibility at that step (kept in place).
    """
    n_runs, k, d = centers.shape
    n_steps = path.shape[1] - 1
    for b in prange(n_runs):
        x = data[run_data[b]]
        mu = centers[b].copy()
        path[b, 0] = mu
        sums = np.empty((k, d))
        counts = np.empty(k)
        logits = np.empty((k, BLOCK))
        top = np.empty(BLOCK)
        total = np.empty(BLOCK)
        for step in range(n_steps):
            _em_step_blocked(x, mu, sums, counts, logits, top, total)
            hungry = False
            for j in range(k):
                if counts[j] > 0.0:
                    for i in range(d):
                        mu[j, i] = sums[j, i] / counts[j]
                else:
                    hungry = True
            path[b, step + 1] = mu
            starved[b, step] = hungry


@njit(cache=True, parallel=True, nogil=True)
def loglik_runs(data, run_data, centers):
    """(B,) average log-likelihood; data (R, m, d), centers (B, k, d).

    Direct squared distances (no cancellation far from the origin) and the
    C library's exp and log: one pass, where accuracy matters more than speed.
    """
    n_runs, k, d = centers.shape
    m = data.shape[1]
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
                    diff = x[t, i] - mu[j, i]
                    acc += diff * diff
                logp[j] = -0.5 * acc
                top = max(top, logp[j])
            inner = 0.0
            for j in range(k):
                inner += math.exp(logp[j] - top)
            total += top + math.log(inner)
        out[b] = total / m + const
    return out


class NumbaStepper:
    """EM steps through the numba kernels, chosen by (k, d).

    The kernels take `CHUNK` steps per call: launching a parallel region per
    step costs more than a step on small problems.

    Parameters
    ----------
    data_c : np.ndarray
        (R, m, d) mean-shifted data.
    n_starts : int
        S; run b uses data set b // S.
    k : int
        Number of centers.
    """

    def __init__(self, data_c: np.ndarray, n_starts: int, k: int) -> None:
        n_sets, _, d = data_c.shape
        self.chunk = CHUNK
        self.data = data_c
        self.run_data = np.repeat(np.arange(n_sets, dtype=np.int64), n_starts)
        if use_small_kernel(k, d):
            self.kernel = small_kernel(k, d).em_steps
            self.layout_data = np.ascontiguousarray(data_c.transpose(0, 2, 1))
        else:
            self.kernel = em_steps_blocked
            self.layout_data = data_c

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

    def log_likelihood(self, centers: np.ndarray) -> np.ndarray:
        """(B,) average log-likelihood at centers (B, k, d)."""
        return loglik_runs(self.data, self.run_data, np.ascontiguousarray(centers))
