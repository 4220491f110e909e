"""Register-blocked EM kernel for large k * d, on points-last data.

For k = 10, d = 50 one EM pass costs about 1,000 multiply-adds per point for
the logits and as many for the weighted sums: it has the shape of two small
matrix products per block of points. A BLAS call per block of a few hundred
points reached only about 40% of this machine's peak (its kernels are tuned
for large matrices, and each call has fixed costs); the loops below reach
60-90% because they keep a 2 x 4 tile of the products in registers and let
LLVM vectorise over points:

- logits (k, T) of a block of T points: for each pair of centers and each
  group of four coordinates, one pass over the points updates both rows of
  the logits from four rows of data;
- the softmax over centers, a few passes over the block in place (each loop
  touches few arrays, so LLVM can vectorise it without run-time alias
  checks), in base 2 with `fast_exp2` (the centers are scaled by log2(e)
  for the logits);
- weighted sums (k, d): for each pair of centers and each group of four
  coordinates, eight dot products over the points, accumulated in registers.

The data are padded with zero rows to a multiple of `D_STEP` coordinates,
and the centers with zero coordinates: the padding adds exact zeros to every
logit and sum, so the result is that of the unpadded problem. Buffers hold
an even number of center rows; an odd k gets a dummy row whose weights are
zero and whose results are ignored.

Each run is computed whole by one thread in a fixed order, so its result
does not depend on the number of threads or on the other runs in the batch.
"""

from __future__ import annotations

import logging

import numpy as np
from numba import njit, prange

from pmstudy.fastexp import LOG2E, fast_exp2

logger = logging.getLogger(__name__)

FLAGS = {"reassoc", "contract", "nsz", "arcp"}
BLOCK = 256
D_STEP = 4


def padded_dimension(d: int) -> int:
    """The number of data rows the kernel wants: d rounded up to `D_STEP`."""
    return -(-d // D_STEP) * D_STEP


@njit(cache=True, fastmath=FLAGS, error_model="numpy", nogil=True)
def _logits(c, half_sq, x, lo, hi, out):
    """out[j, t] = half_sq[j] + c[j] . x[:, lo + t] for the block lo:hi.

    c (k2, D) with k2 even and D a multiple of 4; x (D, m); out (k2, >= hi - lo).
    """
    k2, n_dim = c.shape
    for j in range(0, k2, 2):
        r0 = out[j]
        r1 = out[j + 1]
        h0 = half_sq[j]
        h1 = half_sq[j + 1]
        for i in range(0, n_dim, 4):
            x0 = x[i, lo:hi]
            x1 = x[i + 1, lo:hi]
            x2 = x[i + 2, lo:hi]
            x3 = x[i + 3, lo:hi]
            a0, a1, a2, a3 = c[j, i], c[j, i + 1], c[j, i + 2], c[j, i + 3]
            b0, b1 = c[j + 1, i], c[j + 1, i + 1]
            b2, b3 = c[j + 1, i + 2], c[j + 1, i + 3]
            if i == 0:
                for t in range(hi - lo):
                    u0, u1, u2, u3 = x0[t], x1[t], x2[t], x3[t]
                    r0[t] = h0 + a0 * u0 + a1 * u1 + a2 * u2 + a3 * u3
                    r1[t] = h1 + b0 * u0 + b1 * u1 + b2 * u2 + b3 * u3
            else:
                for t in range(hi - lo):
                    u0, u1, u2, u3 = x0[t], x1[t], x2[t], x3[t]
                    r0[t] += a0 * u0 + a1 * u1 + a2 * u2 + a3 * u3
                    r1[t] += b0 * u0 + b1 * u1 + b2 * u2 + b3 * u3


@njit(cache=True, fastmath=FLAGS, error_model="numpy", nogil=True)
def _softmax(w, k, p, top, total, counts):
    """In place over rows 0..k-1 and columns 0..p-1 of w: logits -> weights.

    The logits are in base 2. Each column is shifted by its largest logit
    (whose power of 2 is then 1, so the sum is at least 1) and normalised;
    counts[j] += the sum of row j.
    """
    for t in range(p):
        top[t] = w[0, t]
    for j in range(1, k):
        row = w[j]
        for t in range(p):
            top[t] = row[t] if row[t] > top[t] else top[t]
    for t in range(p):
        total[t] = 0.0
    for j in range(k):
        row = w[j]
        for t in range(p):
            e = fast_exp2(row[t] - top[t])
            row[t] = e
            total[t] += e
    for t in range(p):
        total[t] = 1.0 / total[t]
    for j in range(k):
        row = w[j]
        acc = 0.0
        for t in range(p):
            v = row[t] * total[t]
            row[t] = v
            acc += v
        counts[j] += acc


@njit(cache=True, fastmath=FLAGS, error_model="numpy", nogil=True)
def _weighted_sums(w, x, lo, hi, sums):
    """sums[j, i] += sum_t w[j, t] x[i, lo + t]; w (k2, >= hi - lo), x (D, m)."""
    k2, n_dim = sums.shape
    p = hi - lo
    for j in range(0, k2, 2):
        w0 = w[j]
        w1 = w[j + 1]
        for i in range(0, n_dim, 4):
            x0 = x[i, lo:hi]
            x1 = x[i + 1, lo:hi]
            x2 = x[i + 2, lo:hi]
            x3 = x[i + 3, lo:hi]
            a0 = a1 = a2 = a3 = 0.0
            b0 = b1 = b2 = b3 = 0.0
            for t in range(p):
                u = w0[t]
                v = w1[t]
                a0 += u * x0[t]
                a1 += u * x1[t]
                a2 += u * x2[t]
                a3 += u * x3[t]
                b0 += v * x0[t]
                b1 += v * x1[t]
                b2 += v * x2[t]
                b3 += v * x3[t]
            sums[j, i] += a0
            sums[j, i + 1] += a1
            sums[j, i + 2] += a2
            sums[j, i + 3] += a3
            sums[j + 1, i] += b0
            sums[j + 1, i + 1] += b1
            sums[j + 1, i + 2] += b2
            sums[j + 1, i + 3] += b3


@njit(cache=True, fastmath=FLAGS, error_model="numpy", nogil=True)
def em_pass(x, c, k, sums, counts, w, top, total, scaled):
    """One EM pass of one run over all points.

    x (D, m) padded points-last data; c (k2, D) padded centers (rows >= k and
    coordinates >= d zero); sums (k2, D) and counts (k2,) receive the
    weighted sums and total weights; w (k2, BLOCK), top and total (BLOCK,)
    and scaled (k2, D) are scratch; a dummy row (odd k) gets zero weights in
    every block, so its sums are zero too.
    """
    m = x.shape[1]
    k2, n_dim = c.shape
    # Base-2 logits: log2(e) (c . x - |c|^2 / 2), through scaled centers.
    half_sq = np.zeros(k2)
    for j in range(k2):
        acc = 0.0
        for i in range(n_dim):
            acc += c[j, i] * c[j, i]
            scaled[j, i] = c[j, i] * LOG2E
        half_sq[j] = -0.5 * acc * LOG2E
    sums[:] = 0.0
    counts[:] = 0.0
    for lo in range(0, m, BLOCK):
        hi = min(lo + BLOCK, m)
        _logits(scaled, half_sq, x, lo, hi, w)
        if k < k2:
            # The dummy row's logits are not weights; zero them for the sums.
            w[k2 - 1, : hi - lo] = 0.0
        _softmax(w, k, hi - lo, top, total, counts)
        _weighted_sums(w, x, lo, hi, sums)


@njit(cache=True, parallel=True, error_model="numpy", nogil=True)
def em_steps(data, run_data, centers, path, starved):
    """EM steps for every run, recording each.

    data (R, D, m) points last, zero rows from d up to D = `padded_dimension`;
    centers (B, k, d); path (B, n + 1, k, d) receives the start and the
    centers after each of the n steps; starved (B, n) whether some center had
    zero total weight at that step (it is kept in place).
    """
    n_runs, k, d = centers.shape
    n_dim = data.shape[1]
    k2 = k + (k % 2)
    n_steps = path.shape[1] - 1
    for b in prange(n_runs):
        x = data[run_data[b]]
        c = np.zeros((k2, n_dim))
        c[:k, :d] = centers[b]
        path[b, 0] = centers[b]
        sums = np.empty((k2, n_dim))
        counts = np.empty(k2)
        w = np.empty((k2, BLOCK))
        top = np.empty(BLOCK)
        total = np.empty(BLOCK)
        scaled = np.empty((k2, n_dim))
        for step in range(n_steps):
            em_pass(x, c, k, sums, counts, w, top, total, scaled)
            hungry = False
            for j in range(k):
                if counts[j] > 0.0:
                    for i in range(d):
                        c[j, i] = sums[j, i] / counts[j]
                else:
                    hungry = True
            path[b, step + 1] = c[:k, :d]
            starved[b, step] = hungry
