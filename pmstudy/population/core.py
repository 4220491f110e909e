"""Population EM step, log-likelihood, gradient and Hessian, with error estimates.

With infinite data the average log-likelihood of the centers mu (K, d) is

    L(mu) = E_{X ~ f0} log f_mu(X),   f_mu(x) = (1/K) sum_j N(x; mu_j, I_d),

f0 the true mixture (uniform over the K0 true centers). ``loglik`` is this
L itself, constants included (the constant left out is zero), as the average
log-likelihood per point of `pmstudy.em` tends to it; L(mu0) is minus the
entropy of f0, and L(mu0) - L(mu) = KL(f0 || f_mu) >= 0 exactly.

The population EM step is T(mu)_j = E[w_j X] / E[w_j], the gradient
grad_j = E[w_j (X - mu_j)] = E[w_j] (T(mu)_j - mu_j), and the Hessian block
(j, l) is E[w_j (delta_jl - w_l)(X - mu_j)(X - mu_l)^T] - delta_jl E[w_j] I.

Accuracy
--------
Ranks r <= 3 (see `pmstudy.population.reduction`) use the piecewise
Gauss-Legendre rule of `pmstudy.population.quadrature` twice, with n and
n + 2 nodes per panel on the same panels, and return the n + 2 result. Each
pair of nodes gains about three orders of magnitude, so the difference of
the two is a cautious estimate of the error of the returned value; n starts
at a value tuned per r and grows by 2 for the members whose estimate exceeds
the requested accuracy, up to a limit. Two a-priori terms are added: a
rounding floor, 64 eps times the magnitudes involved, and a bound on what
the cutoff exp(-drop) of the rule leaves out (see `_truncation`). The EM
step divides by E[w_j], so for it the cutoff is lowered per member until
that bound, relative to the smallest E[w_j], is below 1% of the requested
accuracy: a nearly starved center is computed as accurately as the others.
Ranks r >= 4 use randomized quasi-Monte
Carlo (`pmstudy.population.qmc`) and report three standard errors over
independent scramblings. The error of the EM step and of the gradient is the
largest absolute error over all coordinates; of the Hessian, over all
entries.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pmstudy.errors import SpecError
from pmstudy.population import qmc
from pmstudy.population.quadrature import (
    MODE_HESSIAN,
    MODE_LOGLIK,
    MODE_STEP,
    Moments,
    PanelRule,
    moments,
    pair_index,
)
from pmstudy.population.reduction import Reduction, reduce_batch

logger = logging.getLogger(__name__)

_EPS = np.finfo(np.float64).eps
_ROUNDING = 64.0 * _EPS
_LOG_2PI = math.log(2.0 * math.pi)

# Starting and largest n (nodes per panel) by rank: with the starting n the
# estimate |Q(n + 2) - Q(n)| was below 1e-10 on the workloads of the tests
# and of `pmstudy.population_bench`; the largest is rarely reached.
_N_START = {1: 8, 2: 8, 3: 8}
_N_MAX = {1: 24, 2: 20, 3: 14}

DEFAULT_ACCURACY = 1e-10


@dataclass(frozen=True)
class Accuracy:
    """How a population quantity was computed and how accurate it is.

    Attributes
    ----------
    error : np.ndarray
        (B,) estimated absolute error.
    nodes : np.ndarray
        (B,) int64, Gauss-Legendre nodes per panel of the returned rule (0 for
        quasi-Monte Carlo and for r = 0, which is exact).
    rank : np.ndarray
        (B,) int64, dimension r of the reduced integrals.
    """

    error: np.ndarray
    nodes: np.ndarray
    rank: np.ndarray

    def describe(self) -> str:
        """One line for results: the methods used in this batch."""
        parts = []
        for r in np.unique(self.rank):
            sel = self.rank == r
            if r == 0:
                parts.append("exact (all centers coincide)")
            elif r <= 3:
                n = self.nodes[sel]
                nodes = f"{n.min()}" if n.min() == n.max() else f"{n.min()}-{n.max()}"
                parts.append(f"piecewise Gauss-Legendre, r={r}, n={nodes} nodes/panel")
            else:
                parts.append(f"randomized QMC, r={r}, {qmc.describe()}")
        err = float(np.max(self.error)) if self.error.size else 0.0
        return "; ".join(parts) + f" (max estimated error {err:.1e})"


def check_centers(
    centers_true: np.ndarray, centers: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert: (K0, d) true centers, (B, K, d) estimates."""
    centers_true = np.asarray(centers_true, dtype=np.float64)
    centers = np.asarray(centers, dtype=np.float64)
    if centers_true.ndim != 2 or centers_true.shape[0] < 1:
        raise SpecError(
            "centers_true", centers_true.shape, "an array of shape (k, d), k >= 1"
        )
    if centers.ndim != 3 or centers.shape[2] != centers_true.shape[1]:
        raise SpecError(
            "centers",
            centers.shape,
            f"an array of shape (B, k, d) with d = {centers_true.shape[1]}",
        )
    if centers.shape[1] < 1:
        raise SpecError("centers", centers.shape, "at least one center (k >= 1)")
    for name, arr in (("centers_true", centers_true), ("centers", centers)):
        if not np.all(np.isfinite(arr)):
            raise SpecError(name, "non-finite values", "finite coordinates")
    return centers_true, centers


# --------------------------------------------------------------------------
# assembly of the d-dimensional quantities from the reduced moments
# --------------------------------------------------------------------------


def _step_parts(red: Reduction, mom: Moments) -> tuple[np.ndarray, np.ndarray]:
    """E[w_j] (b, K) and E[w_j (X - c)] (b, K, d)."""
    ew = mom.m0.sum(axis=1)
    num = np.einsum("bdr,bjr->bjd", red.basis, mom.m1.sum(axis=1))
    num += np.einsum("bij,bid->bjd", mom.m0, red.perp)
    return ew, num


def _assemble_step(red, mom, centers_true, centers):
    ew, num = _step_parts(red, mom)
    c = red.origin[:, None, :]
    # A center whose responsibility underflowed everywhere has nothing to move
    # it: it stays (its E[w_j] is then below 1e-300, not a quadrature matter).
    starved = ew <= 1e-300
    safe = np.where(starved, 1.0, ew)
    step = np.where(starved[..., None], centers, c + num / safe[..., None])
    scale = 1.0 + np.abs(c).max(axis=2) + np.abs(num / safe[..., None]).max(axis=2)
    return step, _ROUNDING * scale.max(axis=1)


def _assemble_loglik(red, mom, centers_true, centers):
    k = centers.shape[1]
    k_true, d = centers_true.shape
    rel = centers_true[None, :, :] - red.origin[:, None, :]
    sq = (np.sum(rel**2, axis=2) + d).mean(axis=1)
    lse = mom.lse.sum(axis=1)
    value = -0.5 * d * _LOG_2PI - math.log(k) - 0.5 * sq + lse
    floor = _ROUNDING * (1.0 + 0.5 * sq + np.abs(lse) + 0.5 * d * _LOG_2PI)
    return value, floor


def _assemble_gradient(red, mom, centers_true, centers):
    ew, num = _step_parts(red, mom)
    v = centers - red.origin[:, None, :]
    grad = num - ew[..., None] * v
    scale = 1.0 + np.abs(num).max(axis=(1, 2)) + np.abs(v).max(axis=(1, 2))
    return grad, _ROUNDING * scale


def _assemble_hessian(red, mom, centers_true, centers):
    n_batch, k, r = red.slopes.shape
    d = centers.shape[2]
    pidx = pair_index(k)
    a = red.slopes
    u = red.basis
    p = red.perp
    # Pair moments expanded to (j, l): per true component for the low degrees.
    q0 = mom.m0[:, :, pidx]  # (b, K0, K, K)
    q1 = mom.m1[:, :, pidx, :]  # (b, K0, K, K, r)
    g0 = q0.sum(axis=1)  # (b, K, K)
    g1 = q1.sum(axis=1)  # (b, K, K, r)
    g2 = mom.m2[:, pidx]  # (b, K, K, r, r)

    def block(g0, g1, g2, q0, q1, aj, al):
        """E[g (X - mu_j)(X - mu_l)^T] for (b, J, L) stacks of weights g."""
        ez = (
            g2
            - g1[..., :, None] * al[..., None, :]
            - aj[..., :, None] * g1[..., None, :]
        )
        ez = ez + g0[..., None, None] * aj[..., :, None] * al[..., None, :]
        out = np.einsum("bdr,bjlrs,bes->bjlde", u, ez, u)
        fj = q1 - q0[..., None] * aj[:, None]  # (b, K0, J, L, r)
        fl = q1 - q0[..., None] * al[:, None]
        out += np.einsum("bdr,bijlr,bie->bjlde", u, fj, p)
        out += np.einsum("bid,bijlr,ber->bjlde", p, fl, u)
        out += np.einsum("bijl,bid,bie->bjlde", q0, p, p)
        proj = np.eye(d)[None] - np.einsum("bdr,ber->bde", u, u)
        out += g0[..., None, None] * proj[:, None, None]
        return out

    aj = np.broadcast_to(a[:, :, None, :], (n_batch, k, k, r))
    al = np.broadcast_to(a[:, None, :, :], (n_batch, k, k, r))
    pair = block(g0, g1, g2, q0, q1, aj, al)  # E[w_j w_l (X-mu_j)(X-mu_l)^T]
    # w_j = sum_l w_j w_l: the single-weight moments with both offsets a_j.
    s0 = g0.sum(axis=2)[:, :, None]
    s1 = g1.sum(axis=2)[:, :, None]
    s2 = g2.sum(axis=2)[:, :, None]
    t0 = q0.sum(axis=3)[..., None]
    t1 = q1.sum(axis=3)[:, :, :, None]
    a_own = a[:, :, None, :]
    single = block(s0, s1, s2, t0, t1, a_own, a_own)[:, :, 0]  # (b, K, d, d)
    ew = g0.sum(axis=2)  # (b, K)
    hess = -pair
    for j in range(k):
        hess[:, j, j] += single[:, j] - ew[:, j, None, None] * np.eye(d)
    hess = hess.transpose(0, 1, 3, 2, 4).reshape(n_batch, k * d, k * d)
    hess = 0.5 * (hess + np.swapaxes(hess, 1, 2))
    rel = np.abs(centers - red.origin[:, None, :]).max(axis=(1, 2))
    spread = np.maximum(rel, np.abs(p).max(axis=(1, 2), initial=0.0))
    return hess, _ROUNDING * (1.0 + spread) ** 2 * 8.0


_QUANTITIES: dict[str, tuple[int, Callable]] = {
    "step": (MODE_STEP, _assemble_step),
    "loglik": (MODE_LOGLIK, _assemble_loglik),
    "gradient": (MODE_STEP, _assemble_gradient),
    "hessian": (MODE_HESSIAN, _assemble_hessian),
}


def _difference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.abs(x - y).reshape(x.shape[0], -1).max(axis=1)


def _truncation(red: Reduction, mom: Moments, drop: np.ndarray, quantity: str):
    """Bound on what the cutoff exp(-drop) leaves out, in the quantity's units.

    Per unit volume the left-out integrand is below K exp(-drop) (times the
    polynomial factor); the region is within the balls of radius
    sqrt(2 drop), of volume factor (2 sqrt(2 drop) / sqrt(2 pi))^r against the
    normalised density. The EM step divides by E[w_j], so its bound is
    relative to the smallest E[w_j].
    """
    n_batch, k, r = red.slopes.shape
    radius = np.sqrt(2.0 * drop)
    spread = 1.0 + np.abs(red.means).max(axis=(1, 2), initial=0.0) + radius
    absolute = k * np.exp(-drop) * (2.0 * radius / math.sqrt(2.0 * math.pi)) ** r
    if quantity == "step":
        ew = mom.m0.sum(axis=1).min(axis=1)
        return absolute * spread / np.maximum(ew, 1e-300)
    if quantity == "hessian":
        return absolute * spread**2
    return absolute * spread


def _needed_drop(red, mom, drop, accuracy):
    """The cutoff that brings the step's truncation bound to accuracy / 100."""
    bound = _truncation(red, mom, drop, "step")
    target = 0.01 * accuracy
    # The bound scales like exp(-drop); the volume factor changes slowly, and
    # the half unit covers it.
    excess = np.log(np.maximum(bound / target, 1.0))
    return np.minimum(np.where(excess > 0.0, drop + excess + 0.5, drop), 700.0)


def _piecewise(quantity, red, centers_true, centers, accuracy, n_nodes, rule):
    """Value, error estimate and nodes for members of rank 1..3 (see module)."""
    mode, assemble = _QUANTITIES[quantity]
    rule = PanelRule() if rule is None else rule
    r = red.rank
    n = _N_START[r] if n_nodes is None else n_nodes
    n_max = _N_MAX[r] if n_nodes is None else n_nodes

    def run(rows, n, drop):
        part = _subset(red, rows)
        mom = moments(part, mode, n, rule, drop)
        value, floor = assemble(part, mom, centers_true, centers[rows])
        return value, floor + _truncation(part, mom, drop, quantity), mom

    rows = np.arange(red.index.size)
    drop = np.full(rows.size, rule.drop)
    coarse, _, mom = run(rows, n, drop)
    if quantity == "step":
        # A center with a small total responsibility needs a smaller cutoff:
        # raise it until the relative truncation bound is met.
        for _ in range(8):
            need = _needed_drop(red, mom, drop, accuracy)
            bump = need > drop
            if not np.any(bump):
                break
            drop[bump] = need[bump]
            coarse[bump], _, mom_b = run(rows[bump], n, drop[bump])
            mom = _replace(mom, bump, mom_b)

    value = np.empty_like(coarse)
    error = np.empty(rows.size)
    nodes = np.empty(rows.size, dtype=np.int64)
    todo = rows
    while True:
        fine, floor, _ = run(todo, n + 2, drop[todo])
        err = _difference(fine, coarse) + floor
        value[todo] = fine
        error[todo] = err
        nodes[todo] = n + 2
        again = err > accuracy
        if n + 2 >= n_max or not np.any(again):
            return value, error, nodes
        todo = todo[again]
        coarse = fine[again]
        n += 2


def _replace(mom: Moments, rows: np.ndarray, part: Moments) -> Moments:
    """`mom` with the members selected by the mask `rows` taken from `part`."""
    fields = []
    for whole, sub in zip(
        (mom.m0, mom.m1, mom.m2, mom.lse),
        (part.m0, part.m1, part.m2, part.lse),
        strict=True,
    ):
        whole = whole.copy()
        whole[rows] = sub
        fields.append(whole)
    return Moments(*fields)


def evaluate(
    quantity: str,
    centers_true: np.ndarray,
    centers: np.ndarray,
    *,
    accuracy: float = DEFAULT_ACCURACY,
    n_nodes: int | None = None,
    rule: PanelRule | None = None,
) -> tuple[np.ndarray, Accuracy]:
    """A population quantity for a batch of centers, with its error estimate.

    Parameters
    ----------
    quantity : str
        "step", "loglik", "gradient" or "hessian".
    centers_true : np.ndarray
        (K0, d) true centers.
    centers : np.ndarray
        (B, K, d) estimated centers.
    accuracy : float
        Requested absolute error; n grows until the estimate is below it.
    n_nodes : int, optional
        Use exactly this n (and n + 2 for the estimate), no adaptation of n.
    rule : PanelRule, optional
        Panel shape, for studies of the rule itself.

    Returns
    -------
    value : np.ndarray
        (B, K, d) step or gradient, (B,) loglik, (B, K*d, K*d) Hessian.
    acc : Accuracy
        Error estimates, nodes and ranks.
    """
    centers_true, centers = check_centers(centers_true, centers)
    if not accuracy > 0:
        raise SpecError("accuracy", accuracy, "a positive number")
    mode, assemble = _QUANTITIES[quantity]
    n_batch, k, d = centers.shape
    shape = {
        "step": (n_batch, k, d),
        "gradient": (n_batch, k, d),
        "loglik": (n_batch,),
        "hessian": (n_batch, k * d, k * d),
    }[quantity]
    value = np.empty(shape)
    error = np.empty(n_batch)
    nodes = np.zeros(n_batch, dtype=np.int64)
    rank = np.zeros(n_batch, dtype=np.int64)

    for red in reduce_batch(centers_true, centers):
        idx = red.index
        r = red.rank
        rank[idx] = r
        sub_c = centers[idx]
        if r == 0:
            val, floor = assemble(red, moments(red, mode, 0), centers_true, sub_c)
            value[idx] = val
            error[idx] = floor
        elif r <= 3:
            val, err, nod = _piecewise(
                quantity, red, centers_true, sub_c, accuracy, n_nodes, rule
            )
            value[idx] = val
            error[idx] = err
            nodes[idx] = nod
        else:
            runs = [
                assemble(red, mom, centers_true, sub_c)[0]
                for mom in qmc.moments(red, mode)
            ]
            stack = np.stack(runs)
            value[idx] = stack.mean(axis=0)
            spread = stack.std(axis=0, ddof=1) / math.sqrt(len(runs))
            error[idx] = 3.0 * spread.reshape(len(idx), -1).max(axis=1)
    if np.any(error > accuracy):
        logger.debug(
            "population %s: %d of %d members above the requested accuracy %.1e",
            quantity, int(np.sum(error > accuracy)), n_batch, accuracy,
        )  # fmt: skip
    return value, Accuracy(error=error, nodes=nodes, rank=rank)


def evaluate_rule(
    quantity: str,
    centers_true: np.ndarray,
    centers: np.ndarray,
    n_nodes: int,
    rule: PanelRule | None = None,
) -> tuple[np.ndarray, int]:
    """One piecewise rule with n_nodes per panel, no error estimate (r <= 3).

    For measurements of error against cost. Returns the value (as in
    `evaluate`) and the number of innermost evaluations.
    """
    centers_true, centers = check_centers(centers_true, centers)
    mode, assemble = _QUANTITIES[quantity]
    parts = reduce_batch(centers_true, centers)
    if len(parts) != 1 or parts[0].rank > 3:
        raise ValueError("evaluate_rule needs one rank r <= 3 for the whole batch")
    red = parts[0]
    mom = moments(red, mode, n_nodes, rule)
    value, _ = assemble(red, mom, centers_true, centers)
    return value, mom.n_evaluations


def _subset(red: Reduction, rows: np.ndarray) -> Reduction:
    if rows.size == red.index.size:
        return red
    return Reduction(
        index=red.index[rows],
        origin=red.origin[rows],
        basis=red.basis[rows],
        slopes=red.slopes[rows],
        means=red.means[rows],
        perp=red.perp[rows],
        rep=red.rep[rows],
        group_size=red.group_size[rows],
    )
