"""Reduction of population integrals in R^d to r-dimensional Gaussian integrals.

The responsibilities w_j(x) = softmax_j(<x, mu_j> - |mu_j|^2 / 2) do not
change when the same term is added to every logit. With c the mean of the
estimated centers and v_j = mu_j - c,

    <x, mu_j> - |mu_j|^2 / 2 = [<x, c> - |c|^2 / 2] + <x - c, v_j> - |v_j|^2 / 2,

so w depends on x only through z = U^T (x - c), with U (d, r) an orthonormal
basis of span{v_j} (r <= min(k - 1, d)), and w_j = softmax_j(<z, a_j> -
|a_j|^2 / 2) with a_j = U^T v_j. Given its true component i, X ~ N(mu0_i, I),
so z ~ N(m_i, I_r) with m_i = U^T (mu0_i - c), and the rest of X - c,
(I - U U^T)(X - c), is independent of z with mean p_i = (I - U U^T)(mu0_i - c).
Every population expectation is thus a sum over i of r-dimensional integrals.
Working relative to c also keeps the logits small when all centers sit far
from the origin.

Within span{v_j} the basis is rotated so that the innermost integration
direction crosses every switching plane {a_j . z - |a_j|^2/2 = a_l . z - ...}
(normal a_j - a_l) as squarely as possible, and, for r = 3, the outermost
direction crosses every line of three-way ties squarely; the kernels then
see no switching plane sliding fast along an inner line.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

# Singular values of the centered estimates below this fraction of
# max(1, largest) are exact zeros: dropping such a direction moves a center by
# less than about 1e-13 sigma, far below the quadrature error.
_RANK_TOL = 1e-13

# Estimated centers whose reduced coordinates agree to this (relative to
# max(1, spread)) are one group of identical logits for the kernels.
_GROUP_TOL = 1e-13

# Candidate directions for the rotation search.
_N_ANGLES = 180
_N_SPHERE = 600
_N_KEEP = 12


@dataclass(frozen=True)
class Reduction:
    """Reduced problem for the batch members that share one rank r.

    Attributes
    ----------
    index : np.ndarray
        (b,) int64, positions of these members in the caller's batch.
    origin : np.ndarray
        (b, d) mean c of each member's estimated centers.
    basis : np.ndarray
        (b, d, r) orthonormal basis U of the span of the centered estimates,
        columns ordered innermost integration direction first.
    slopes : np.ndarray
        (b, K, r) a_j = U^T (mu_j - c).
    means : np.ndarray
        (b, K0, r) m_i = U^T (mu0_i - c).
    perp : np.ndarray
        (b, K0, d) p_i = (I - U U^T)(mu0_i - c).
    rep : np.ndarray
        (b, K) int64, first index of each estimate's group of coinciding
        estimates (the kernels treat a group as one logit).
    group_size : np.ndarray
        (b, K) float64, size of that group.
    """

    index: np.ndarray
    origin: np.ndarray
    basis: np.ndarray
    slopes: np.ndarray
    means: np.ndarray
    perp: np.ndarray
    rep: np.ndarray
    group_size: np.ndarray

    @property
    def rank(self) -> int:
        return self.basis.shape[2]


def reduce_batch(centers_true: np.ndarray, centers: np.ndarray) -> list[Reduction]:
    """Split a batch by rank and reduce each part.

    Parameters
    ----------
    centers_true : np.ndarray
        (K0, d) true centers.
    centers : np.ndarray
        (B, K, d) estimated centers.

    Returns
    -------
    list of Reduction
        One per distinct rank r present in the batch, ordered by r.
    """
    origin = centers.mean(axis=1)
    centered = centers - origin[:, None, :]
    _, sing, vt = np.linalg.svd(centered, full_matrices=False)
    scale = np.maximum(1.0, sing[:, :1])
    ranks = np.sum(sing > _RANK_TOL * scale, axis=1)
    parts = []
    for r in np.unique(ranks):
        idx = np.flatnonzero(ranks == r)
        basis = np.swapaxes(vt[idx, :r, :], 1, 2)  # (b, d, r)
        slopes = np.einsum("bkd,bdr->bkr", centered[idx], basis)
        rep, size = _groups(slopes)
        if r in (2, 3):
            rot = _rotation(slopes, rep)  # (b, r, r), rows: new directions
            basis = np.einsum("bdr,bsr->bds", basis, rot)
            slopes = np.einsum("bkr,bsr->bks", slopes, rot)
        rel_true = centers_true[None, :, :] - origin[idx, None, :]
        means = np.einsum("bid,bdr->bir", rel_true, basis)
        perp = rel_true - np.einsum("bir,bdr->bid", means, basis)
        parts.append(
            Reduction(
                index=idx,
                origin=origin[idx],
                basis=basis,
                slopes=slopes,
                means=means,
                perp=perp,
                rep=rep,
                group_size=size,
            )
        )
    return parts


def _groups(slopes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Groups of coinciding estimates: (b, K) representative and group size."""
    n_batch, k, _ = slopes.shape
    spread = np.abs(slopes).max(axis=(1, 2)) if slopes.size else np.zeros(n_batch)
    tol = _GROUP_TOL * np.maximum(1.0, spread)
    diff = np.abs(slopes[:, :, None, :] - slopes[:, None, :, :]).max(axis=3, initial=0)
    same = diff <= tol[:, None, None]
    rep = np.argmax(same, axis=2).astype(np.int64)  # first coinciding index
    size = np.zeros((n_batch, k))
    for j in range(k):
        size[:, j] = np.sum(rep == rep[:, j : j + 1], axis=1)
    return rep, size


def _pair_normals(slopes: np.ndarray, rep: np.ndarray) -> np.ndarray:
    """(b, P, r) unit normals a_j - a_l of the switching planes (NaN if unused)."""
    k = slopes.shape[1]
    pairs = list(itertools.combinations(range(k), 2))
    normals = np.stack([slopes[:, j] - slopes[:, m] for j, m in pairs], axis=1)
    used = np.stack([(rep[:, j] == j) & (rep[:, m] == m) for j, m in pairs], axis=1)
    norm = np.linalg.norm(normals, axis=2, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = normals / norm
    unit[~used] = np.nan
    return unit


def _rotation(slopes: np.ndarray, rep: np.ndarray) -> np.ndarray:
    """(b, r, r) orthogonal matrices whose rows are the integration directions."""
    r = slopes.shape[2]
    normals = _pair_normals(slopes, rep)
    if r == 2:
        angles = np.pi * np.arange(_N_ANGLES) / _N_ANGLES
        dirs = np.stack([np.cos(angles), np.sin(angles)], axis=1)
        score = _min_abs_cos(normals, dirs)  # (b, n_dirs)
        best = dirs[np.argmax(score, axis=1)]
        return np.stack([best, np.stack([-best[:, 1], best[:, 0]], axis=1)], axis=1)
    return _rotation3(slopes, rep, normals)


def _min_abs_cos(unit: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """(b, n_dirs) smallest |cos| between each direction and the used vectors."""
    cos = np.abs(np.einsum("bpr,nr->bpn", unit, dirs))
    cos = np.where(np.isnan(cos), np.inf, cos)
    score = cos.min(axis=1)
    return np.where(np.isinf(score), 1.0, score)


def _sphere_points(n: int) -> np.ndarray:
    """(n, 3) nearly uniform directions on the upper half sphere (Fibonacci)."""
    golden = np.pi * (3.0 - np.sqrt(5.0))
    height = (np.arange(n) + 0.5) / n
    radius = np.sqrt(1.0 - height**2)
    theta = golden * np.arange(n)
    return np.stack([radius * np.cos(theta), radius * np.sin(theta), height], axis=1)


def _rotation3(slopes: np.ndarray, rep: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """r = 3: innermost direction square to the planes, outermost to the lines."""
    n_batch, k, _ = slopes.shape
    triples = list(itertools.combinations(range(k), 3))
    lines = []
    for j, m, o in triples:
        used = (rep[:, j] == j) & (rep[:, m] == m) & (rep[:, o] == o)
        ell = np.cross(slopes[:, j] - slopes[:, m], slopes[:, j] - slopes[:, o])
        norm = np.linalg.norm(ell, axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            ell = ell / norm
        ell[~used | (norm[:, 0] == 0.0)] = np.nan
        lines.append(ell)
    lines_arr = np.stack(lines, axis=1) if lines else np.full((n_batch, 0, 3), np.nan)

    cand = _sphere_points(_N_SPHERE)
    score_in = _min_abs_cos(normals, cand)  # (b, n)
    keep = np.argsort(-score_in, axis=1)[:, :_N_KEEP]
    angles = np.pi * np.arange(_N_ANGLES // 4) / (_N_ANGLES // 4)
    rot = np.empty((n_batch, 3, 3))
    for b in range(n_batch):
        best = -1.0
        for c in keep[b]:
            e_in = cand[c]
            helper = np.array([1.0, 0.0, 0.0]) if abs(e_in[0]) < 0.9 else np.eye(3)[1]
            u = np.cross(e_in, helper)
            u /= np.linalg.norm(u)
            w = np.cross(e_in, u)
            outs = np.cos(angles)[:, None] * u + np.sin(angles)[:, None] * w
            s_out = _min_abs_cos(lines_arr[b : b + 1], outs)[0]
            a = int(np.argmax(s_out))
            score = min(score_in[b, c], s_out[a])
            if score > best:
                best = score
                e_out = outs[a]
                rot[b] = np.stack([e_in, np.cross(e_out, e_in), e_out])
    return rot
