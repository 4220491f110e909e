"""Layouts of the true centers, their scaling to a separation, and sampling.

A layout fixes the shape of the k true centers in R^d; ``layout_centers``
scales that shape so that the minimum pairwise distance between centers equals
the requested separation (in units of sigma = 1). ``sample_mixture`` draws a
data set from the uniform mixture of unit-variance spherical Gaussians around
given centers.

Layouts and their parameters:

- ``simplex``: a regular simplex, all distances equal; needs d >= k - 1.
- ``line``: equally spaced on the first axis.
- ``points``: explicit coordinates, ``centers`` = k lists of d numbers,
  scaled about the origin (0, 1, 4 at separation s gives 0, s, 4s).
- ``random``: random directions (``kind = "sphere"``, the default for
  d >= 2) or standard normal points (``kind = "gaussian"``, the default for
  d = 1); the only layout that reads the generator.
- ``close-pair``: a pair at the separation and a far center ``ratio`` times
  the separation away (default 5), on one axis; further centers continue
  the line.
- ``dataset``: the whitened class means of a scikit-learn data set,
  ``dataset`` = "iris" (k = 3, d = 4), "wine" (3, 13) or "digits" (10, 64).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping
from numbers import Integral, Real
from typing import Any

import numpy as np
from scipy.spatial.distance import pdist

from pmstudy.errors import SpecError

logger = logging.getLogger(__name__)

LAYOUTS: tuple[str, ...] = (
    "simplex",
    "line",
    "points",
    "random",
    "close-pair",
    "dataset",
)

# A shape whose largest pairwise distance exceeds its smallest by more than this
# factor would put centers so far apart at any useful separation that the
# coordinates lose all precision; such explicit points are refused.
_MAX_DISTANCE_RATIO = 1e8

# Draws of the random layout that fail the same ratio are redrawn (in the
# generator's order, so reproducibly); this many failures in a row is refused.
_MAX_RANDOM_ATTEMPTS = 1000

# Eigenvalues of the pooled within-class covariance below this fraction of the
# largest one are treated as exact zeros (constant pixels in digits give
# 1e-17; the smallest genuine ones of iris, wine and digits are above 1e-7).
_NULL_EIGENVALUE = 1e-10

DATASETS: tuple[str, ...] = ("iris", "wine", "digits")


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------


def _check_dims(k: Any, d: Any) -> tuple[int, int]:
    """Check that k and d are integers >= 1 and return them as ints."""
    for field, value in (("k", k), ("d", d)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise SpecError(field, value, "an integer >= 1")
    return int(k), int(d)


def _check_separation(separation: Any) -> float:
    """Check that the separation is a finite number > 0."""
    if (
        isinstance(separation, bool)
        or not isinstance(separation, Real)
        or not math.isfinite(separation)
        or separation <= 0
    ):
        raise SpecError("separation", separation, "a finite number > 0")
    return float(separation)


def _check_no_params(name: str, params: Mapping[str, Any]) -> dict:
    """Refuse any parameter for a layout that takes none."""
    for key, value in params.items():
        raise SpecError(
            f"layout.{key}", value, f"absent: layout {name!r} takes no parameters"
        )
    return {}


def _check_known_params(
    name: str, params: Mapping[str, Any], known: tuple[str, ...]
) -> None:
    """Refuse parameters that the layout does not know."""
    for key, value in params.items():
        if key not in known:
            valid = ", ".join(repr(p) for p in known)
            raise SpecError(
                f"layout.{key}",
                value,
                f"a parameter of layout {name!r}: one of {valid}",
            )


# --------------------------------------------------------------------------
# layouts: each returns an unscaled shape (k, d) with distinct rows
# --------------------------------------------------------------------------


def _check_simplex(k: int, d: int, params: Mapping[str, Any]) -> dict:
    if d < k - 1:
        raise SpecError(
            "layout.name",
            "simplex",
            f"a layout that fits in d = {d}: a regular simplex of k = {k} centers "
            f"needs d >= k - 1 = {k - 1} (use 'line', 'random' or 'points')",
        )
    return _check_no_params("simplex", params)


def _shape_simplex(
    k: int, d: int, params: dict, rng: np.random.Generator
) -> np.ndarray:
    """Vertices of a regular simplex in the first k - 1 coordinates.

    The Helmert basis of the sum-zero subspace of R^k gives the coordinates:
    row j (j = 1..k-1) is (1, ..., 1, -j, 0, ..., 0) / sqrt(j (j + 1)) with j
    ones. Its columns are the standard basis vectors of R^k minus their
    centroid, written in an orthonormal basis, so all pairwise distances are
    sqrt(2) and the centroid is the origin.
    """
    helmert = np.zeros((k - 1, k))
    for j in range(1, k):
        helmert[j - 1, :j] = 1.0
        helmert[j - 1, j] = -float(j)
        helmert[j - 1] /= math.sqrt(j * (j + 1))
    shape = np.zeros((k, d))
    shape[:, : k - 1] = helmert.T
    return shape


def _check_line(k: int, d: int, params: Mapping[str, Any]) -> dict:
    return _check_no_params("line", params)


def _shape_line(k: int, d: int, params: dict, rng: np.random.Generator) -> np.ndarray:
    """k equally spaced centers on the first axis, centered at the origin."""
    shape = np.zeros((k, d))
    shape[:, 0] = np.arange(k) - (k - 1) / 2.0
    return shape


def _check_points(k: int, d: int, params: Mapping[str, Any]) -> dict:
    _check_known_params("points", params, ("centers",))
    if "centers" not in params:
        raise SpecError(
            "layout.centers", None, f"a list of k = {k} lists of d = {d} numbers"
        )
    raw = params["centers"]
    expected = f"a list of k = {k} lists of d = {d} finite numbers"
    try:
        points = np.array(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise SpecError("layout.centers", raw, expected) from None
    if points.shape != (k, d) or _has_non_number(raw):
        raise SpecError("layout.centers", raw, expected)
    if not np.all(np.isfinite(points)):
        raise SpecError("layout.centers", raw, expected)
    if k > 1:
        if len(np.unique(points, axis=0)) < k:
            raise SpecError(
                "layout.centers", raw, f"{k} distinct points (found duplicates)"
            )
        distances = _pairwise_distances(points)
        if not np.all(distances > 0):  # distinct, but not apart in float64
            raise SpecError(
                "layout.centers", raw, f"{k} distinct points (found duplicates)"
            )
        ratio = np.max(distances) / np.min(distances)
        if ratio > _MAX_DISTANCE_RATIO:
            raise SpecError(
                "layout.centers",
                raw,
                f"points whose largest pairwise distance is at most "
                f"{_MAX_DISTANCE_RATIO:.0e} times the smallest (got {ratio:.3g})",
            )
    return {"centers": points.tolist()}


def _pairwise_distances(points: np.ndarray) -> np.ndarray:
    """Distances between all pairs of rows of (k, d) points, up to one common
    factor, (k(k-1)/2,).

    The points are scaled by their largest coordinate, so that no difference
    overflows, and each difference by its own largest coordinate before it is
    squared, so that a tiny one (1e-200) does not underflow: distinct points
    get positive, finite distances, in the right ratios.
    """
    scaled = points / np.max(np.abs(points))
    rows, cols = np.triu_indices(len(points), 1)
    diff = scaled[rows] - scaled[cols]
    big = np.max(np.abs(diff), axis=1)
    with np.errstate(invalid="ignore"):  # 0/0 only for points not apart
        unit = diff / big[:, None]
    return np.where(big > 0, big * np.sqrt(np.sum(unit**2, axis=1)), 0.0)


def _has_non_number(raw: Any) -> bool:
    """True if a nested list holds anything other than real numbers (bools, strings)."""
    if isinstance(raw, (list, tuple, np.ndarray)):
        return any(_has_non_number(item) for item in raw)
    return isinstance(raw, (bool, np.bool_)) or not isinstance(raw, Real)


def _shape_points(k: int, d: int, params: dict, rng: np.random.Generator) -> np.ndarray:
    """The given coordinates; scaling about the origin keeps their shape and ratios."""
    points = np.array(params["centers"], dtype=np.float64)
    return points / np.max(np.abs(points))


def _check_random(k: int, d: int, params: Mapping[str, Any]) -> dict:
    _check_known_params("random", params, ("kind",))
    kind = params.get("kind", "sphere" if d >= 2 else "gaussian")
    if kind not in ("sphere", "gaussian"):
        raise SpecError("layout.kind", kind, "one of 'sphere', 'gaussian'")
    if kind == "sphere" and d < 2 and k > 1:
        raise SpecError(
            "layout.kind",
            kind,
            "'gaussian' when d = 1 (the unit sphere of R^1 has only two points)",
        )
    return {"kind": kind}


def _shape_random(k: int, d: int, params: dict, rng: np.random.Generator) -> np.ndarray:
    """k random points: uniform on the unit sphere, or standard normal in R^d.

    ``kind = "sphere"`` (the default for d >= 2) draws k independent uniformly
    random directions; ``kind = "gaussian"`` (the default for d = 1) draws k
    independent N(0, I_d) points. Each attempt consumes one
    ``rng.standard_normal((k, d))`` block; an attempt whose largest pairwise
    distance exceeds the smallest by more than 1e8 (probability near zero) is
    redrawn, so the shape is a function of the generator's state alone.
    """
    for _ in range(_MAX_RANDOM_ATTEMPTS):
        shape = rng.standard_normal((k, d))
        if params["kind"] == "sphere":
            norms = np.linalg.norm(shape, axis=1, keepdims=True)
            if np.any(norms == 0.0):
                continue
            shape = shape / norms
        distances = pdist(shape)
        if np.min(distances) > 0 and np.max(distances) <= _MAX_DISTANCE_RATIO * np.min(
            distances
        ):
            return shape
    raise SpecError(
        "layout.kind",
        params["kind"],
        f"a random layout that yields distinct centers within "
        f"{_MAX_RANDOM_ATTEMPTS} draws",
    )


def _check_close_pair(k: int, d: int, params: Mapping[str, Any]) -> dict:
    _check_known_params("close-pair", params, ("ratio",))
    ratio = params.get("ratio", 5.0)
    # The farthest center sits about (k - 2) * ratio from the pair.
    upper = _MAX_DISTANCE_RATIO / max(k - 2, 1)
    if (
        isinstance(ratio, bool)
        or not isinstance(ratio, Real)
        or not math.isfinite(ratio)
        or not 1.0 <= ratio <= upper
    ):
        raise SpecError(
            "layout.ratio",
            ratio,
            f"a number from 1 to {upper:.3g} (the far center's distance to the "
            "pair, in units of the separation)",
        )
    return {"ratio": float(ratio)}


def _shape_close_pair(
    k: int, d: int, params: dict, rng: np.random.Generator
) -> np.ndarray:
    """A close pair and far centers, all on the first axis.

    The pair sits at -1/2 and 1/2 (distance 1, the separation after scaling);
    the far center sits at 1/2 + ratio, so its distance to the nearer member
    of the pair is ``ratio`` times the separation (ratio >= 1 keeps the pair
    the closest). This is the configuration (two close true centers and a
    far one) of the NeurIPS 2016 counterexample of Jin, Zhang, Balakrishnan,
    Wainwright and Jordan, in which the population likelihood has a bad local
    maximum. For k > 3 the further k - 3 far centers continue the line at the
    same spacing: 1/2 + j * ratio for j = 1, ..., k - 2. For k = 2 only the
    pair remains. Works in any d >= 1.
    """
    ratio = params["ratio"]
    shape = np.zeros((k, d))
    shape[0, 0] = -0.5
    shape[1, 0] = 0.5
    shape[2:, 0] = 0.5 + ratio * np.arange(1, k - 1)
    return shape


def _check_dataset(k: int, d: int, params: Mapping[str, Any]) -> dict:
    # The data set is named by `dataset`; `name` is accepted as well for
    # callers outside a spec, where `layout.name` is not already the layout's.
    _check_known_params("dataset", params, ("dataset", "name"))
    if "dataset" in params and "name" in params:
        raise SpecError(
            "layout.dataset", params["dataset"], "given once (as `dataset`), not twice"
        )
    field = "layout.name" if "name" in params else "layout.dataset"
    chosen = params.get("dataset", params.get("name"))
    valid = ", ".join(repr(n) for n in DATASETS)
    if chosen not in DATASETS:
        raise SpecError(field, chosen, f"one of {valid} for layout 'dataset'")
    means = _whitened_class_means(chosen)
    n_classes, n_features = means.shape
    if (k, d) != (n_classes, n_features):
        raise SpecError(
            field,
            chosen,
            f"a data set with k = {k} classes and d = {d} features; {chosen!r} "
            f"has k = {n_classes} and d = {n_features}",
        )
    return {"dataset": chosen}


@functools.cache
def _whitened_class_means(name: str) -> np.ndarray:
    """Class means of a scikit-learn data set in whitened coordinates, (k, d).

    Whitening uses the pooled within-class covariance
    S = sum_c sum_{x in c} (x - mean_c)(x - mean_c)^T / (n - k), so that the
    within-class scatter becomes the identity and a unit-variance spherical
    model fits. Where S is singular (digits has pixels that are 0 in every
    image) the symmetric pseudo-inverse square root is used:
    S^{+1/2} = V diag(lambda^{-1/2}) V^T over the eigenvalues lambda above
    1e-10 times the largest. Directions with no within-class variance are
    thereby dropped (mapped to 0) while the coordinates stay in R^d, so d
    remains the data set's number of features (4, 13, 64). The class means
    differ by 1e-14 or less along those dropped directions, so nothing is
    lost. The returned means are centered at their average.
    """
    from sklearn import datasets

    loader = {
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
        "digits": datasets.load_digits,
    }[name]
    features, target = loader(return_X_y=True)
    features = np.asarray(features, dtype=np.float64)
    classes, labels = np.unique(target, return_inverse=True)
    means = np.array([features[labels == c].mean(axis=0) for c in range(classes.size)])
    residuals = features - means[labels]
    pooled = residuals.T @ residuals / (features.shape[0] - classes.size)

    eigenvalues, eigenvectors = np.linalg.eigh(pooled)
    keep = eigenvalues > _NULL_EIGENVALUE * eigenvalues[-1]
    logger.debug(
        "data set %s: dropping %d null directions of the within-class covariance",
        name,
        int(np.sum(~keep)),
    )
    basis = eigenvectors[:, keep]
    whitening = (basis / np.sqrt(eigenvalues[keep])) @ basis.T
    whitened = (means - means.mean(axis=0)) @ whitening
    whitened.setflags(write=False)
    return whitened


def _shape_dataset(
    k: int, d: int, params: dict, rng: np.random.Generator
) -> np.ndarray:
    """The whitened class means of the named data set."""
    return np.array(_whitened_class_means(params["dataset"]))


_Check = Callable[[int, int, Mapping[str, Any]], dict]
_Shape = Callable[[int, int, dict, np.random.Generator], np.ndarray]

_REGISTRY: dict[str, tuple[_Check, _Shape]] = {
    "simplex": (_check_simplex, _shape_simplex),
    "line": (_check_line, _shape_line),
    "points": (_check_points, _shape_points),
    "random": (_check_random, _shape_random),
    "close-pair": (_check_close_pair, _shape_close_pair),
    "dataset": (_check_dataset, _shape_dataset),
}


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------


def check_layout(name: str, k: int, d: int, params: Mapping[str, Any]) -> dict:
    """Validate a layout against k and d and return its normalized parameters.

    Parameters
    ----------
    name : str
        One of ``LAYOUTS``.
    k : int
        Number of centers, >= 1.
    d : int
        Dimension, >= 1.
    params : Mapping
        The layout's parameters, as given in the study spec.

    Returns
    -------
    dict
        The parameters with defaults filled in, in plain Python types.

    Raises
    ------
    SpecError
        With field ``"layout.name"`` for an unknown layout or one that does not
        fit k and d, and ``"layout.<param>"`` for a bad parameter.
    """
    if name not in _REGISTRY:
        valid = ", ".join(repr(n) for n in LAYOUTS)
        raise SpecError("layout.name", name, f"one of {valid}")
    k, d = _check_dims(k, d)
    if not isinstance(params, Mapping):
        raise SpecError("layout", params, "a table of layout parameters")
    check, _ = _REGISTRY[name]
    return check(k, d, params)


def layout_centers(
    name: str,
    k: int,
    d: int,
    separation: float,
    params: Mapping[str, Any],
    rng: np.random.Generator,
) -> np.ndarray:
    """True centers of a layout, scaled so that their minimum distance is `separation`.

    Parameters
    ----------
    name : str
        One of ``LAYOUTS``.
    k, d : int
        Number of centers and dimension.
    separation : float
        The minimum pairwise distance between the returned centers, > 0.
    params : Mapping
        The layout's parameters (validated here by ``check_layout``).
    rng : numpy.random.Generator
        Used only by random layouts. Passing a generator seeded the same way
        for every separation gives the same shape at every separation.

    Returns
    -------
    numpy.ndarray
        (k, d) float64 centers. Their minimum pairwise distance equals
        `separation` up to rounding; k = 1 gives one center at the origin.
    """
    normalized = check_layout(name, k, d, params)
    k, d = int(k), int(d)
    separation = _check_separation(separation)
    if k == 1:
        return np.zeros((1, d))

    _, shape_of = _REGISTRY[name]
    shape = shape_of(k, d, normalized, rng)
    # Rescale by the measured minimum distance rather than a formula, so that
    # every layout meets the separation to rounding whatever its construction.
    minimum = float(np.min(pdist(shape)))
    return np.ascontiguousarray(shape * (separation / minimum), dtype=np.float64)


def sample_mixture(centers: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """Draw m points from the uniform mixture of N(center, I) around `centers`.

    The draws happen in a fixed order so that a seed reproduces the data:
    first the m component labels, ``rng.integers(0, k, size=m)``, uniform on
    the k components; then the noise, ``rng.standard_normal((m, d))``. The
    point t is ``centers[label_t] + noise_t``.

    Parameters
    ----------
    centers : numpy.ndarray
        (k, d) finite true centers.
    m : int
        Number of points, >= 1.
    rng : numpy.random.Generator
        The only source of randomness.

    Returns
    -------
    numpy.ndarray
        (m, d) float64 sample.
    """
    centers = np.asarray(centers, dtype=np.float64)
    if centers.ndim != 2 or centers.shape[0] < 1 or centers.shape[1] < 1:
        raise SpecError("centers", centers.shape, "a (k, d) array with k, d >= 1")
    if not np.all(np.isfinite(centers)):
        raise SpecError("centers", "non-finite values", "finite coordinates")
    if isinstance(m, bool) or not isinstance(m, Integral) or m < 1:
        raise SpecError("m", m, "an integer >= 1")
    k, d = centers.shape

    labels = rng.integers(0, k, size=int(m))
    noise = rng.standard_normal((int(m), d))
    return centers[labels] + noise
