"""Initialization schemes behind one registry.

A scheme maps a data set x (m, d) to k initial centers (k, d). Each scheme
declares its parameters once (type, default, valid range), its function and a
sentence on its infinite-sample analog: what it becomes when run on an
unlimited sample of the true mixture. For m = inf the study runs the scheme
on a large proxy sample, so the analog says what that proxy approximates.

Every scheme draws its randomness from the generator passed in, in a fixed
order, so that the same seed gives the same centers.

Simple schemes live here; the projection-based and two-round schemes
(pca-em, spectral, two-round) have their algorithms in ``pmstudy.projection``
and are registered here, with the simple schemes passed to them as
functions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.cluster import KMeans, kmeans_plusplus

from pmstudy import projection
from pmstudy.errors import SpecError

logger = logging.getLogger(__name__)

# Data beyond this magnitude would overflow squared distances (and sklearn's
# distance computations) to inf; such data are refused rather than silently
# turned into NaN centers.
MAX_ABS_COORDINATE = 1e100


# --------------------------------------------------------------------------
# parameter declarations
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Param:
    """One declared scheme parameter.

    ``default`` is a value or a function of (k, d). Bounds are inclusive
    unless ``low_open`` is set.
    """

    kind: type
    default: Any
    low: float | None = None
    low_open: bool = False
    high: float | None = None
    choices: tuple[str, ...] | None = None

    def expected(self) -> str:
        """What a valid value looks like, for error messages."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        noun = "an integer" if self.kind is int else "a finite number"
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"<= {self.high:g}")
        return noun + (" " + " and ".join(parts) if parts else "")

    def check(self, field_name: str, value: Any) -> Any:
        """Return `value` converted to the declared type, or raise SpecError."""
        if self.choices is not None:
            if value not in self.choices:
                raise SpecError(field_name, value, self.expected())
            return value
        if isinstance(value, bool) or not isinstance(value, Real):
            raise SpecError(field_name, value, self.expected())
        if self.kind is int:
            if not isinstance(value, Integral):
                raise SpecError(field_name, value, self.expected())
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise SpecError(field_name, value, self.expected())
        too_low = self.low is not None and (
            value <= self.low if self.low_open else value < self.low
        )
        too_high = self.high is not None and value > self.high
        if too_low or too_high:
            raise SpecError(field_name, value, self.expected())
        return value


_InitFn = Callable[[np.ndarray, int, np.random.Generator, np.ndarray, dict], np.ndarray]


@dataclass(frozen=True)
class _Scheme:
    """A registered scheme: its function, its analog, its parameters."""

    init: _InitFn
    analog: str
    params: dict[str, _Param] = field(default_factory=dict)
    # Cross-checks of the normalized params against k and d, if any.
    check_extra: Callable[[str, dict, int, int], None] | None = None


# --------------------------------------------------------------------------
# helpers shared by the schemes
# --------------------------------------------------------------------------


def _sklearn_seed(rng: np.random.Generator) -> int:
    """An integer seed for scikit-learn's RandomState, drawn from rng."""
    return int(rng.integers(0, 2**32 - 1))


def _first_distinct(x: np.ndarray, order: np.ndarray, n: int) -> np.ndarray:
    """Positions in `order` of the first occurrence of each distinct row.

    Walks ``x[order]`` and returns the sorted positions (into `order`) where a
    row value appears for the first time, stopping once n are found. Prefixes
    grow geometrically, so data with many distinct values cost O(n) rows.
    """
    m = order.size
    size = min(m, max(4 * n, 16))
    while True:
        # Adding 0.0 maps -0.0 to 0.0, so equal coordinates compare equal.
        _, first = np.unique(x[order[:size]] + 0.0, axis=0, return_index=True)
        if first.size >= n or size == m:
            break
        size = min(m, 4 * size)
    first.sort()
    return first[:n]


def _has_distinct(x: np.ndarray, n: int) -> bool:
    """True if x holds at least n distinct rows."""
    return _first_distinct(x, np.arange(x.shape[0]), n).size >= n


def _distinct_indices(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n distinct indices into x, with distinct values where possible.

    Walks a uniformly random permutation of the indices and keeps each index
    whose value differs from all values kept so far: with continuous data
    this is n indices uniformly without replacement. If x has fewer than n
    distinct values, all of them are kept and the rest of the n indices are
    the next unused ones in the permutation (their values repeat; indices
    never do). Needs n <= m. Consumes one ``rng.permutation(m)``.
    """
    m = x.shape[0]
    order = rng.permutation(m)
    positions = _first_distinct(x, order, n)
    if positions.size < n:
        logger.debug("only %d distinct data values for %d centers", positions.size, n)
        unused = np.ones(m, dtype=bool)
        unused[positions] = False
        fill = np.flatnonzero(unused)[: n - positions.size]
        positions = np.concatenate([positions, fill])
    return order[positions]


# --------------------------------------------------------------------------
# the simple schemes
# --------------------------------------------------------------------------


def _forgy(
    x: np.ndarray,
    k: int,
    rng: np.random.Generator,
    centers_true: np.ndarray,
    params: dict,
) -> np.ndarray:
    """Forgy: k distinct data points chosen uniformly at random.

    Indices are always distinct, and so are the values whenever the data hold
    at least k distinct values. With fewer distinct values, every distinct
    value is used once and the remaining centers repeat values (from distinct
    indices); repeated initial centers stay tied under EM, which is the
    defined outcome for such data.

    Infinite-sample analog: k independent draws from the true mixture.
    """
    return x[_distinct_indices(x, k, rng)].copy()


def _kmeans_plusplus(
    x: np.ndarray,
    k: int,
    rng: np.random.Generator,
    centers_true: np.ndarray,
    params: dict,
) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii, 2007) by scikit-learn.

    Calls ``sklearn.cluster.kmeans_plusplus`` (greedy, 2 + ln k local trials)
    with an integer seed drawn from rng, on data centered at their mean so
    that squared distances do not lose precision to a large offset; the
    chosen data points themselves are returned. If the data hold fewer than k
    distinct values the D^2 weights all vanish once every value is chosen;
    the result is then Forgy's (every distinct value, then repeats), with the
    generator continued after the seed draw.

    Infinite-sample analog: D^2 sampling from the true mixture (first center
    a draw from it, each next one a draw from the mixture density reweighted
    by the squared distance to the nearest chosen center, best of the local
    trials by the population k-means cost).
    """
    seed = _sklearn_seed(rng)
    if not _has_distinct(x, k):
        return _forgy(x, k, rng, centers_true, params)
    centered = x - x.mean(axis=0)
    _, indices = kmeans_plusplus(centered, n_clusters=k, random_state=seed)
    return x[indices].copy()


def _uniform_box(
    x: np.ndarray,
    k: int,
    rng: np.random.Generator,
    centers_true: np.ndarray,
    params: dict,
) -> np.ndarray:
    """k points uniform in the bounding box of the data.

    Draws one ``rng.random((k, d))`` block U and returns lo * (1 - U) + hi * U
    with lo, hi the coordinate-wise data minimum and maximum (this form cannot
    overflow). A coordinate in which the data are constant gives the box zero
    width there, and every center takes that constant; if all data points are
    equal, all centers equal that point.

    Infinite-sample analog: none in the limit, since the bounding box of an
    unlimited sample grows without bound (like sqrt(2 ln m) per coordinate);
    at m = inf the scheme uses the box of the proxy sample, so its analog
    depends on the proxy sample's size.
    """
    low = x.min(axis=0)
    high = x.max(axis=0)
    u = rng.random((k, x.shape[1]))
    return low * (1.0 - u) + high * u


def _kmeans(
    x: np.ndarray,
    k: int,
    rng: np.random.Generator,
    centers_true: np.ndarray,
    params: dict,
) -> np.ndarray:
    """The centers found by k-means (Lloyd's algorithm) from k-means++ seeding.

    Runs scikit-learn's ``KMeans(n_clusters=k, n_init=1, random_state=seed)``
    with an integer seed drawn from rng (its defaults otherwise: k-means++
    seeding, at most 300 iterations, tolerance 1e-4 relative to the data's
    variance). If the data hold fewer than k distinct values, k-means cannot
    form k clusters; the result is then Forgy's (every distinct value, then
    repeats), with the generator continued after the seed draw.

    Infinite-sample analog: the population k-means (Lloyd) iteration on the
    true mixture, from a population k-means++ start.
    """
    seed = _sklearn_seed(rng)
    if not _has_distinct(x, k):
        return _forgy(x, k, rng, centers_true, params)
    fitted = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(x)
    return np.array(fitted.cluster_centers_, dtype=np.float64)


def _random_partition(
    x: np.ndarray,
    k: int,
    rng: np.random.Generator,
    centers_true: np.ndarray,
    params: dict,
) -> np.ndarray:
    """Random Partition: the means of a uniformly random split into k parts.

    Draws one ``rng.permutation(m)`` and puts the point at position t of the
    permutation into part t mod k: a uniformly random split into parts of
    sizes floor(m / k) or ceil(m / k), never empty since m >= k. Every center
    is the mean of about m / k random points, so all lie within about
    sqrt(k / m) (times the data's spread) of the grand mean.

    Infinite-sample analog: all k centers at the mean of the true mixture,
    exactly coincident. EM keeps coincident centers coincident, so population
    EM from that limit never separates them (for k >= 2). A study at m = inf
    draws from a proxy sample of size n instead, which leaves the centers
    about sqrt(k / n) apart (times the spread); population EM separates them
    from there, so, like uniform-box, the scheme's P_inf depends on the
    proxy size and describes a tiny random break of the symmetric start.
    """
    order = rng.permutation(x.shape[0])
    return np.array([x[order[j::k]].mean(axis=0) for j in range(k)])


def _gaussian(
    x: np.ndarray,
    k: int,
    rng: np.random.Generator,
    centers_true: np.ndarray,
    params: dict,
) -> np.ndarray:
    """k draws from the normal with the data's mean and covariance.

    The covariance is the sample covariance with divisor max(m - 1, 1). It is
    factored by its eigendecomposition, with rounding-level eigenvalues set
    to zero, so a singular covariance (identical points, or
    d > m) is fine: the draws then lie in the affine span of the data, and
    identical points give k copies of that point. Consumes one
    ``rng.standard_normal((k, d))`` block.

    Infinite-sample analog: k independent draws from the normal with the
    true mixture's mean and covariance (its moment-matched Gaussian).
    """
    m, d = x.shape
    mean = x.mean(axis=0)
    centered = x - mean
    covariance = centered.T @ centered / max(m - 1, 1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    # Eigenvalues at rounding level (the rank test of numpy.linalg.matrix_rank)
    # are exact zeros of a singular covariance: their square roots (about 1e-8
    # of the scale) would push the draws out of the data's span.
    rounding = max(m, d) * np.finfo(np.float64).eps * max(eigenvalues[-1], 0.0)
    eigenvalues = np.where(eigenvalues > rounding, eigenvalues, 0.0)
    factor = eigenvectors * np.sqrt(eigenvalues)
    z = rng.standard_normal((k, d))
    return mean + z @ factor.T


def _near_pair(
    x: np.ndarray,
    k: int,
    rng: np.random.Generator,
    centers_true: np.ndarray,
    params: dict,
) -> np.ndarray:
    """Two centers a tiny gap apart; the other k - 2 from the data by Forgy.

    Forgy picks k - 1 distinct data points (one ``rng.permutation(m)``); then
    a uniformly random direction u (one ``rng.standard_normal(d)``, normalized)
    places the second member of the pair at first point + gap * u. The result
    is ordered (first point, its partner, the other k - 2 points). Needs
    k >= 2. The scheme probes whether EM can split two nearly merged centers.

    Infinite-sample analog: a draw from the true mixture and its partner at
    distance gap in a random direction, plus k - 2 independent draws from
    the mixture.
    """
    d = x.shape[1]
    points = x[_distinct_indices(x, k - 1, rng)]
    direction = rng.standard_normal(d)
    norm = np.linalg.norm(direction)
    # A zero draw has probability zero; fall back to the first axis then.
    unit = direction / norm if norm > 0 else np.eye(1, d)[0]
    partner = points[0] + params["gap"] * unit
    return np.vstack([points[:1], partner, points[1:]])


def _check_near_pair(name: str, params: dict, k: int, d: int) -> None:
    if k < 2:
        raise SpecError(f"schemes.{name}", f"k = {k}", "k >= 2 (a pair needs two)")


def _perturbed_truth(
    x: np.ndarray,
    k: int,
    rng: np.random.Generator,
    centers_true: np.ndarray,
    params: dict,
) -> np.ndarray:
    """The true centers plus independent N(0, scale^2 I) noise.

    Reads only ``centers_true`` (not the data) and one
    ``rng.standard_normal((k, d))`` block. scale = 0 gives the truth itself,
    the oracle's start. A reference scheme: it measures how far from the
    truth EM still finds its way back.

    Infinite-sample analog: the same, since it does not use the data.
    """
    return centers_true + params["scale"] * rng.standard_normal(centers_true.shape)


# --------------------------------------------------------------------------
# the projection-based and two-round schemes (algorithms in projection.py)
# --------------------------------------------------------------------------

# Schemes that can start pca-em in the subspace: those that read only the data.
_PCA_EM_BASES: tuple[str, ...] = (
    "forgy",
    "kmeans++",
    "uniform-box",
    "kmeans",
    "random-partition",
    "gaussian",
    "near-pair",
)


def _seed_function(name: str) -> projection.SeedFunction:
    """A registered data-only scheme, with its default parameters, as (z, k, rng)."""

    def seed(z: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        scheme = _REGISTRY[name]
        defaults = check_scheme(name, {}, k=k, d=z.shape[1])
        # Data-only schemes never read the true centers; zeros fill the slot.
        return scheme.init(z, k, rng, np.zeros((k, z.shape[1])), defaults)

    return seed


def _pca_em(
    x: np.ndarray,
    k: int,
    rng: np.random.Generator,
    centers_true: np.ndarray,
    params: dict,
) -> np.ndarray:
    """EM in the top principal subspace, lifted back (``projection.pca_em``).

    Projects the centered data onto its top `dim` principal directions
    (default k - 1), starts there from the `base` scheme with its default
    parameters, runs `iterations` EM steps (default 20) and lifts the centers
    back with the data mean as their orthogonal part (Vempala & Wang, 2004).

    Infinite-sample analog: population EM of the true mixture projected onto
    its principal subspace, from the base's analog there, lifted back.
    """
    return projection.pca_em(
        x,
        k,
        rng,
        dim=params["dim"],
        iterations=params["iterations"],
        base=_seed_function(params["base"]),
    )


def _check_pca_em(name: str, params: dict, k: int, d: int) -> None:
    _check_dim(name, params, d)
    if params["base"] == "near-pair":
        _check_near_pair(f"{name}.base", params, k, d)


def _check_dim(name: str, params: dict, d: int) -> None:
    if params["dim"] > d:
        raise SpecError(
            f"schemes.{name}.dim", params["dim"], f"an integer from 1 to d = {d}"
        )


def _spectral(
    x: np.ndarray,
    k: int,
    rng: np.random.Generator,
    centers_true: np.ndarray,
    params: dict,
) -> np.ndarray:
    """k-means in the top principal subspace (``projection.spectral``).

    Projects the centered data onto its top `dim` principal directions
    (default k), seeds by k-means++ and runs `iterations` Lloyd steps there
    (default 10), then returns each cluster's mean in the full space
    (Kumar & Kannan, 2010).

    Infinite-sample analog: population Lloyd steps in the true mixture's
    principal subspace, then the mixture's mean over each resulting cell.
    """
    return projection.spectral(
        x,
        k,
        rng,
        dim=params["dim"],
        iterations=params["iterations"],
        seed=_seed_function("kmeans++"),
    )


def _two_round(
    x: np.ndarray,
    k: int,
    rng: np.random.Generator,
    centers_true: np.ndarray,
    params: dict,
) -> np.ndarray:
    """Dasgupta & Schulman's (JMLR 2007) two-round EM (``projection.two_round``).

    Forgy picks L = `n_start` data points (default ceil(k ln k) + 1); one EM
    step with L components fits centers and weights; components lighter than
    `threshold` / L are pruned (default threshold 0.25); a farthest-point
    traversal keeps exactly k; one more EM step with equal weights follows.

    Infinite-sample analog: the same steps with L draws from the true mixture
    and population EM steps.
    """
    return projection.two_round(
        x,
        k,
        rng,
        n_start=params["n_start"],
        threshold=params["threshold"],
        pick=_seed_function("forgy"),
    )


def _check_two_round(name: str, params: dict, k: int, d: int) -> None:
    if params["n_start"] < k:
        raise SpecError(
            f"schemes.{name}.n_start", params["n_start"], f"an integer >= k = {k}"
        )


_REGISTRY: dict[str, _Scheme] = {
    "forgy": _Scheme(
        init=_forgy,
        analog="k independent draws from the true mixture.",
    ),
    "kmeans++": _Scheme(
        init=_kmeans_plusplus,
        analog=(
            "D^2 sampling from the true mixture: a first draw from it, each next "
            "center drawn from the mixture density reweighted by the squared "
            "distance to the nearest chosen center."
        ),
    ),
    "uniform-box": _Scheme(
        init=_uniform_box,
        analog=(
            "None in the limit, as an unlimited sample's bounding box grows like "
            "sqrt(2 ln m) per coordinate; at m = inf it is uniform in the box of "
            "the proxy sample, so it depends on the proxy size."
        ),
    ),
    "kmeans": _Scheme(
        init=_kmeans,
        analog=(
            "Population k-means (Lloyd's iteration on the true mixture) from a "
            "population k-means++ start."
        ),
    ),
    "random-partition": _Scheme(
        init=_random_partition,
        analog=(
            "In the limit all k centers at the mean of the true mixture, a "
            "symmetric start population EM never breaks; at m = inf the proxy "
            "sample of size n leaves them about sqrt(k / n) apart, and EM "
            "separates them from there, so the result depends on proxy_size."
        ),
    ),
    "gaussian": _Scheme(
        init=_gaussian,
        analog=(
            "k independent draws from the normal with the true mixture's mean "
            "and covariance."
        ),
    ),
    "near-pair": _Scheme(
        init=_near_pair,
        analog=(
            "A draw from the true mixture and a partner at distance gap in a "
            "random direction, plus k - 2 independent draws from the mixture."
        ),
        params={"gap": _Param(float, 0.01, low=0.0, low_open=True)},
        check_extra=_check_near_pair,
    ),
    "perturbed-truth": _Scheme(
        init=_perturbed_truth,
        analog="The same as for finite m: the truth plus N(0, scale^2 I) noise.",
        params={"scale": _Param(float, 0.5, low=0.0)},
    ),
    "pca-em": _Scheme(
        init=_pca_em,
        analog=(
            "Population EM of the true mixture projected onto its principal "
            "subspace (for dim = k - 1 the span of the centered true centers), "
            "from the base scheme's analog there, lifted back with the "
            "mixture's mean."
        ),
        params={
            "dim": _Param(int, lambda k, d: max(1, min(k - 1, d)), low=1),
            "base": _Param(str, "forgy", choices=_PCA_EM_BASES),
            "iterations": _Param(int, 20, low=0),
        },
        check_extra=_check_pca_em,
    ),
    "spectral": _Scheme(
        init=_spectral,
        analog=(
            "Population Lloyd steps on the true mixture projected onto its top "
            "principal subspace from population k-means++ seeding, then the "
            "mixture's mean over each resulting cell."
        ),
        params={
            "dim": _Param(int, lambda k, d: min(k, d), low=1),
            "iterations": _Param(int, 10, low=0),
        },
        check_extra=lambda name, params, k, d: _check_dim(name, params, d),
    ),
    "two-round": _Scheme(
        init=_two_round,
        analog=(
            "L draws from the true mixture, one population EM step with L "
            "components, pruning of light components, farthest-point reduction "
            "to k, and one population EM step with k components."
        ),
        params={
            "n_start": _Param(int, lambda k, d: projection.default_n_start(k), low=1),
            "threshold": _Param(float, 0.25, low=0.0, high=1.0),
        },
        check_extra=_check_two_round,
    ),
}

SCHEMES: tuple[str, ...] = tuple(_REGISTRY)


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------


def _check_name(name: str) -> _Scheme:
    if name not in _REGISTRY:
        valid = ", ".join(repr(n) for n in SCHEMES)
        raise SpecError("schemes", name, f"one of {valid}")
    return _REGISTRY[name]


def check_scheme(name: str, params: Mapping[str, Any], *, k: int, d: int) -> dict:
    """Validate a scheme and its parameters; return them with defaults filled in.

    Parameters
    ----------
    name : str
        One of ``SCHEMES``.
    params : Mapping
        The scheme's parameters as given in the study spec.
    k, d : int
        Number of centers and dimension of the study.

    Returns
    -------
    dict
        Every parameter of the scheme, given or defaulted, in plain types.

    Raises
    ------
    SpecError
        Field ``"schemes"`` for an unknown name, ``"schemes.<name>.<param>"``
        for an unknown or invalid parameter.
    """
    scheme = _check_name(name)
    if not isinstance(params, Mapping):
        raise SpecError(f"schemes.{name}", params, "a table of scheme parameters")
    for key, value in params.items():
        if key not in scheme.params:
            known = ", ".join(repr(p) for p in scheme.params)
            expected = (
                f"a parameter of {name!r}: one of {known}"
                if known
                else f"absent: scheme {name!r} takes no parameters"
            )
            raise SpecError(f"schemes.{name}.{key}", value, expected)

    normalized = {}
    for key, declared in scheme.params.items():
        if key in params:
            normalized[key] = declared.check(f"schemes.{name}.{key}", params[key])
        else:
            default = declared.default
            normalized[key] = default(k, d) if callable(default) else default
    if scheme.check_extra is not None:
        scheme.check_extra(name, normalized, k, d)
    return normalized


def initial_centers(
    name: str,
    x: np.ndarray,
    k: int,
    rng: np.random.Generator,
    *,
    centers_true: np.ndarray,
    params: Mapping[str, Any],
) -> np.ndarray:
    """Initial centers of one scheme on one data set.

    Parameters
    ----------
    name : str
        One of ``SCHEMES``.
    x : numpy.ndarray
        (m, d) data, m >= k; for m = inf, a proxy sample of the true mixture.
    k : int
        Number of centers, >= 1.
    rng : numpy.random.Generator
        The only source of randomness.
    centers_true : numpy.ndarray
        (k, d) true centers; only schemes built on the truth read them.
    params : Mapping
        The scheme's parameters (validated here by ``check_scheme``).

    Returns
    -------
    numpy.ndarray
        (k, d) finite float64 initial centers.
    """
    scheme = _check_name(name)
    if isinstance(k, bool) or not isinstance(k, Integral) or k < 1:
        raise SpecError("k", k, "an integer >= 1")
    k = int(k)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 1:
        raise SpecError("x", x.shape, "an (m, d) data array with d >= 1")
    m, d = x.shape
    if m < k:
        raise SpecError("m", m, f"at least k = {k} data points")
    if not np.all(np.isfinite(x)):
        raise SpecError("x", "non-finite values", "finite data")
    largest = float(np.max(np.abs(x)))
    if largest > MAX_ABS_COORDINATE:
        raise SpecError(
            "x",
            f"coordinates up to {largest:.3g}",
            f"data with coordinates below {MAX_ABS_COORDINATE:.0e} in absolute value",
        )
    centers_true = np.asarray(centers_true, dtype=np.float64)
    if centers_true.shape != (k, d):
        raise SpecError("centers_true", centers_true.shape, f"shape ({k}, {d})")
    normalized = check_scheme(name, params, k=k, d=d)

    centers = np.asarray(scheme.init(x, k, rng, centers_true, normalized), np.float64)
    if centers.shape != (k, d) or not np.all(np.isfinite(centers)):
        # A scheme that breaks this contract is a bug in pmstudy, not bad input.
        raise RuntimeError(
            f"scheme {name!r} returned bad centers of shape {centers.shape}"
        )
    return centers


def scheme_analog(name: str) -> str:
    """One sentence: what the scheme becomes on an unlimited sample."""
    return _check_name(name).analog
