"""Randomized quasi-Monte Carlo for population integrals of rank r >= 4.

The piecewise rule of `pmstudy.population.quadrature` grows like (nodes)^r
and is too slow beyond r = 3. Here each true component's integral is
estimated by scrambled Sobol points mapped to N(m_i, I_r) by the inverse
normal CDF, with several independent scramblings; the caller averages them
and reports three standard errors over the scramblings as the error.

The scramblings are fixed (drawn once from a Generator with a fixed seed),
so that the population EM map is a deterministic function of the centers,
as its convergence rule requires, and results are reproducible.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
from scipy.special import logsumexp, ndtri
from scipy.stats import qmc as scipy_qmc

from pmstudy.population.quadrature import MODE_HESSIAN, Moments
from pmstudy.population.reduction import Reduction

logger = logging.getLogger(__name__)

LOG2_POINTS = 14
N_SCRAMBLES = 8
_SEED = 20160912  # fixed: the rule is a deterministic quadrature
_CHUNK = 1 << 21  # points x estimates per block of work


def describe() -> str:
    return f"{N_SCRAMBLES} scrambled Sobol sets of 2^{LOG2_POINTS} points"


@functools.lru_cache(maxsize=8)
def normal_points(r: int) -> np.ndarray:
    """(N_SCRAMBLES, 2^LOG2_POINTS, r) standard normal RQMC point sets."""
    rng = np.random.default_rng(np.random.SeedSequence([_SEED, r]))
    sets = []
    for _ in range(N_SCRAMBLES):
        sobol = scipy_qmc.Sobol(d=r, scramble=True, rng=rng)
        u = sobol.random_base2(LOG2_POINTS)
        sets.append(ndtri(u))
    pts = np.stack(sets)
    pts.setflags(write=False)
    return pts


def moments(red: Reduction, mode: int) -> list[Moments]:
    """One `Moments` per scrambling, for every member of `red` (rank r >= 4)."""
    n_batch, k, r = red.slopes.shape
    k_true = red.means.shape[1]
    pts = normal_points(r)
    jj, ll = np.triu_indices(k)
    n_q = jj.size if mode == MODE_HESSIAN else k
    out = []
    for base in pts:
        m0 = np.zeros((n_batch, k_true, n_q))
        m1 = np.zeros((n_batch, k_true, n_q, r))
        m2 = np.zeros((n_batch, n_q, r, r))
        lse = np.zeros((n_batch, k_true))
        n_pts = base.shape[0]
        for b in range(n_batch):
            a = red.slopes[b]
            offs = -0.5 * np.sum(a**2, axis=1)
            for i in range(k_true):
                z = red.means[b, i] + base  # (N, r)
                logits = z @ a.T + offs
                top = logsumexp(logits, axis=1, keepdims=True)
                w = np.exp(logits - top)
                if mode != MODE_HESSIAN:
                    g = w
                    lse[b, i] = top.mean() / k_true
                else:
                    g = w[:, jj] * w[:, ll]
                    m2[b] += np.einsum("nq,nr,ns->qrs", g, z, z) / (n_pts * k_true)
                m0[b, i] = g.mean(axis=0) / k_true
                m1[b, i] = (g.T @ z) / (n_pts * k_true)
        out.append(Moments(m0, m1, m2, lse))
    return out
