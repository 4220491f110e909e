"""Projection-based and two-round initialization schemes.

Three schemes that do more work than picking points: ``pca_em`` (EM in the
top principal subspace, lifted back), ``spectral`` (k-means++ and Lloyd steps
in the top principal subspace, then cluster means in the full space) and
``two_round`` (Dasgupta & Schulman's two-round variant of EM). They use the
data only, never the true centers.

The small EM and Lloyd rounds they need are written here in plain NumPy, so
that this module does not depend on the study's EM kernel. The schemes they
start from (Forgy, k-means++, ...) live in ``pmstudy.schemes``, which passes
them in as functions; this keeps the import one-way (schemes -> projection).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

logger = logging.getLogger(__name__)

# A function (data (n, p), number of centers, generator) -> centers (c, p).
SeedFunction = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

# Points per block in the E-step and assignment loops, so that an (m, k)
# array is never formed for large m: about 2**20 entries per block.
_BLOCK_ENTRIES = 2**20


def _block_rows(width: int) -> int:
    """Rows per block so that a block of `width` columns has ~_BLOCK_ENTRIES."""
    return max(1, _BLOCK_ENTRIES // max(width, 1))


def principal_subspace(x: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and top principal directions of the data.

    Parameters
    ----------
    x : numpy.ndarray
        (m, d) data.
    dim : int
        Number of directions wanted; at most min(m, d) are returned.

    Returns
    -------
    mean : numpy.ndarray
        (d,) data mean.
    basis : numpy.ndarray
        (d, p) orthonormal columns, p = min(dim, m, d), spanning the top p
        principal directions of the centered data (largest variance first).
        Directions beyond the data's rank are an arbitrary orthonormal
        completion, as returned by the decomposition.
    """
    m, d = x.shape
    mean = x.mean(axis=0)
    centered = x - mean
    p = min(dim, m, d)
    if m >= d:
        # The d x d scatter matrix is the cheaper decomposition when m >= d.
        _, eigenvectors = np.linalg.eigh(centered.T @ centered)
        basis = eigenvectors[:, ::-1][:, :p]
    else:
        _, _, vt = np.linalg.svd(centered, full_matrices=False)
        basis = vt[:p].T
    return mean, np.ascontiguousarray(basis)


def responsibilities(
    x: np.ndarray, centers: np.ndarray, log_weights: np.ndarray
) -> np.ndarray:
    """Posterior component probabilities, (c, n), computed in log space.

    For unit-variance spherical components the log posterior of j is, up to
    a constant in j, <x, mu_j> - |mu_j|^2 / 2 + log w_j; subtracting the
    maximum over j before exponentiating keeps every exp in [0, 1]. The
    components run along the first axis so that the reductions over j are
    elementwise operations on long rows (reductions along a short last axis
    are several times slower in NumPy).
    """
    logits = centers @ x.T
    logits -= (0.5 * np.sum(centers * centers, axis=1) - log_weights)[:, None]
    logits -= logits.max(axis=0)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=0)
    return logits


def em_step(
    x: np.ndarray, centers: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One EM step for a mixture of N(mu_j, I) with the given weights.

    Parameters
    ----------
    x : numpy.ndarray
        (m, p) data.
    centers : numpy.ndarray
        (c, p) current centers.
    weights : numpy.ndarray, optional
        (c,) mixing weights used in the E-step; equal weights if omitted.
        A zero weight switches its component off.

    Returns
    -------
    centers : numpy.ndarray
        (c, p) updated centers, sum_t r_tj x_t / sum_t r_tj. A component with
        no responsibility at all (it underflowed to 0 for every point) keeps
        its previous center.
    weights : numpy.ndarray
        (c,) fitted weights, sum_t r_tj / m.
    """
    m = x.shape[0]
    c = centers.shape[0]
    if weights is None:
        log_weights = np.zeros(c)
    else:
        with np.errstate(divide="ignore"):  # log(0) = -inf switches j off
            log_weights = np.log(weights)
    totals = np.zeros(c)
    sums = np.zeros_like(centers)
    step = _block_rows(c)
    for start in range(0, m, step):
        block = x[start : start + step]
        r = responsibilities(block, centers, log_weights)
        totals += r.sum(axis=1)
        sums += r @ block
    updated = centers.copy()
    alive = totals > 0
    updated[alive] = sums[alive] / totals[alive, None]
    return updated, totals / m


def _nearest(z: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest center for every point, (n,)."""
    labels = np.empty(z.shape[0], dtype=np.intp)
    half_norms = 0.5 * np.sum(centers * centers, axis=1)
    step = _block_rows(centers.shape[0])
    for start in range(0, z.shape[0], step):
        block = z[start : start + step]
        # argmin |z - c|^2 = argmax <z, c> - |c|^2 / 2
        labels[start : start + step] = np.argmax(block @ centers.T - half_norms, axis=1)
    return labels


def _cluster_means(
    x: np.ndarray, labels: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Means of x over each label, (k, p), and the cluster sizes, (k,)."""
    counts = np.bincount(labels, minlength=k)
    sums = np.empty((k, x.shape[1]))
    for axis in range(x.shape[1]):
        sums[:, axis] = np.bincount(labels, weights=x[:, axis], minlength=k)
    means = np.zeros_like(sums)
    filled = counts > 0
    means[filled] = sums[filled] / counts[filled, None]
    return means, counts


def pca_em(
    x: np.ndarray,
    k: int,
    rng: np.random.Generator,
    *,
    dim: int,
    iterations: int,
    base: SeedFunction,
) -> np.ndarray:
    """EM in the top principal subspace, lifted back to R^d.

    Follows the project-then-cluster approach of Vempala & Wang, "A spectral
    algorithm for learning mixtures of distributions" (JCSS 68, 2004): for a
    mixture of spherical Gaussians the top k - 1 principal directions of the
    centered data estimate the span of the centered true centers, where the
    problem is low-dimensional. Steps: center the data at its mean; project
    onto its top `dim` principal directions (at most min(m, d)); start from
    `base` there; run `iterations` EM steps with equal weights and unit
    variance (an orthonormal projection keeps the components N(., I)); lift
    the centers back as mean + basis @ center, so the part orthogonal to the
    subspace is the data mean's.

    Infinite-sample analog: `iterations` steps of population EM on the true
    mixture projected onto its principal subspace (for dim = k - 1, the span
    of the centered true centers), from the base scheme's analog there,
    lifted back with the mixture's mean.

    Parameters
    ----------
    x : numpy.ndarray
        (m, d) data.
    k : int
        Number of centers.
    rng : numpy.random.Generator
        Passed to `base`, the only consumer of randomness.
    dim : int
        Dimension of the subspace, >= 1.
    iterations : int
        EM steps in the subspace, >= 0.
    base : callable
        (z, k, rng) -> (k, p) initial centers in the subspace.

    Returns
    -------
    numpy.ndarray
        (k, d) initial centers.
    """
    mean, basis = principal_subspace(x, dim)
    z = (x - mean) @ basis
    centers = np.asarray(base(z, k, rng), dtype=np.float64)
    for _ in range(iterations):
        centers, _ = em_step(z, centers)
    return mean + centers @ basis.T


def spectral(
    x: np.ndarray,
    k: int,
    rng: np.random.Generator,
    *,
    dim: int,
    iterations: int,
    seed: SeedFunction,
) -> np.ndarray:
    """k-means in the top principal subspace, then cluster means in R^d.

    Follows Kumar & Kannan, "Clustering with spectral norm and the k-means
    algorithm" (FOCS 2010), after Vempala & Wang (JCSS 2004): project the
    centered data onto its top `dim` principal directions (default k, at
    most min(m, d)), seed there with `seed` (k-means++), run `iterations`
    Lloyd steps there (an empty cluster keeps its center), assign every point
    to its nearest center in the subspace, and return each cluster's mean
    computed in the full space. A cluster left empty by the final assignment
    gets its subspace center lifted back (data mean + basis @ center).

    Infinite-sample analog: population Lloyd steps on the true mixture
    projected onto its top principal subspace, from population k-means++
    seeding, followed by the true mixture's mean over each resulting cell.

    Parameters
    ----------
    x : numpy.ndarray
        (m, d) data.
    k : int
        Number of centers.
    rng : numpy.random.Generator
        Passed to `seed`, the only consumer of randomness.
    dim : int
        Dimension of the subspace, >= 1.
    iterations : int
        Lloyd steps in the subspace, >= 0.
    seed : callable
        (z, k, rng) -> (k, p) seeding in the subspace.

    Returns
    -------
    numpy.ndarray
        (k, d) initial centers.
    """
    mean, basis = principal_subspace(x, dim)
    z = (x - mean) @ basis
    centers = np.asarray(seed(z, k, rng), dtype=np.float64)
    for _ in range(iterations):
        means, counts = _cluster_means(z, _nearest(z, centers), k)
        centers = np.where(counts[:, None] > 0, means, centers)

    labels = _nearest(z, centers)
    full, counts = _cluster_means(x, labels, k)
    lifted = mean + centers @ basis.T
    return np.where(counts[:, None] > 0, full, lifted)


def farthest_point_order(points: np.ndarray, first: int, n: int) -> np.ndarray:
    """Farthest-point traversal: n distinct row indices of `points`.

    Starts at row `first`, then repeatedly adds the row farthest from all rows
    chosen so far (ties to the lowest index). A row that coincides with a
    chosen one has distance 0, so it is taken only once every distinct row
    is; the indices are always distinct, whatever the coincidences.

    Parameters
    ----------
    points : numpy.ndarray
        (L, p) points, L >= n.
    first : int
        Index of the first pick.
    n : int
        Number of indices to return.

    Returns
    -------
    numpy.ndarray
        (n,) distinct indices in the order picked.
    """
    chosen = [first]
    distance = np.sum((points - points[first]) ** 2, axis=1)
    distance[first] = -1.0  # never pick a row twice
    for _ in range(n - 1):
        nxt = int(np.argmax(distance))
        chosen.append(nxt)
        distance = np.minimum(distance, np.sum((points - points[nxt]) ** 2, axis=1))
        distance[chosen] = -1.0
    return np.array(chosen, dtype=np.intp)


def default_n_start(k: int) -> int:
    """Dasgupta & Schulman's number of starting centers, ceil(k ln k) + 1."""
    return int(np.ceil(k * np.log(k))) + 1


def two_round(
    x: np.ndarray,
    k: int,
    rng: np.random.Generator,
    *,
    n_start: int,
    threshold: float,
    pick: SeedFunction,
) -> np.ndarray:
    """The two-round variant of EM of Dasgupta & Schulman.

    Follows S. Dasgupta and L. J. Schulman, "A probabilistic analysis of EM
    for mixtures of separated, spherical Gaussians", JMLR 8 (2007) 203-226,
    with the variance fixed at 1 and the final weights fixed at 1/k as in
    pmstudy's model:

    1. Start from L = `n_start` data points chosen by `pick` (Forgy: distinct
       points; L is cut to m if m < L), with equal weights 1/L.
    2. Round one: one EM step with L components, fitting centers and weights.
    3. Prune: drop components whose fitted weight is below threshold / L
       (`threshold` is in units of the uniform weight 1/L). If fewer than k
       survive, the k heaviest are kept instead.
    4. Reduce to exactly k by a farthest-point traversal over the survivors,
       starting from one chosen uniformly at random (one ``rng.integers``).
       Survivors that coincide (for instance because starting points did)
       are picked only after every distinct one, and the k indices are
       always distinct, so exactly k centers remain.
    5. Round two: one EM step with these k centers and equal weights.

    The rounds run on data centered at their mean (EM commutes with
    translation) so that a large offset cannot spoil the logits.

    Infinite-sample analog: L draws from the true mixture, one population EM
    step with L components, the same pruning and traversal, and one
    population EM step with k components.

    Parameters
    ----------
    x : numpy.ndarray
        (m, d) data.
    k : int
        Number of centers.
    rng : numpy.random.Generator
        Used by `pick`, then for the first pick of the traversal.
    n_start : int
        L, the number of starting centers, >= k.
    threshold : float
        Pruning threshold in units of 1/L, in [0, 1].
    pick : callable
        (x, L, rng) -> (L, d) starting centers.

    Returns
    -------
    numpy.ndarray
        (k, d) initial centers.
    """
    m = x.shape[0]
    n_start = min(n_start, m)
    mean = x.mean(axis=0)
    centered = x - mean

    start = np.asarray(pick(centered, n_start, rng), dtype=np.float64)
    centers, weights = em_step(centered, start)

    survivors = np.flatnonzero(weights >= threshold / n_start)
    if survivors.size < k:
        logger.debug("two-round: %d survivors for k = %d", survivors.size, k)
        # Stable sort: among equal weights the lower index wins.
        survivors = np.sort(np.argsort(-weights, kind="stable")[:k])
    first = int(rng.integers(survivors.size))
    order = farthest_point_order(centers[survivors], first, k)
    centers = centers[survivors[order]]

    centers, _ = em_step(centered, centers)
    return mean + centers
