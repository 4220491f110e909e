"""P_m estimates per cell with binomial confidence intervals, read from a store.

P_m is the fraction of successes among the computed replicates of a cell
(m, separation, scheme); undecided runs count as replicates that did not succeed,
and their fraction is reported beside P_m. Intervals are Wilson score intervals
by default and Clopper-Pearson (exact, conservative) on request; both are exactly
0 and 1 at the extremes 0/n and n/n.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr
from scipy import stats

from pmstudy.outcome import SUCCESS, UNDECIDED

__all__ = ["INTERVALS", "cell_rows", "clopper_pearson", "interval", "wilson"]

INTERVALS = ("wilson", "clopper-pearson")


def wilson(
    successes: np.ndarray, n: np.ndarray, alpha: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a binomial proportion.

    Parameters
    ----------
    successes, n : array_like of int, same shape
        Counts, with ``0 <= successes <= n``; cells with ``n = 0`` give NaN.
    alpha : float
        One minus the confidence level.

    Returns
    -------
    lo, hi : ndarray of float, same shape
        Bounds in [0, 1]; exactly 0 at ``successes = 0`` and 1 at ``successes = n``.
    """
    x = np.asarray(successes, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    z = stats.norm.isf(alpha / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        center = (x + z * z / 2) / (n + z * z)
        half = z / (n + z * z) * np.sqrt(x * (n - x) / n + z * z / 4)
        lo = np.clip(center - half, 0.0, 1.0)
        hi = np.clip(center + half, 0.0, 1.0)
    # The formula gives 0 and 1 there only up to rounding; the exact values are 0, 1.
    lo = np.where(x == 0, 0.0, lo)
    hi = np.where(x == n, 1.0, hi)
    empty = n == 0
    return np.where(empty, np.nan, lo), np.where(empty, np.nan, hi)


def clopper_pearson(
    successes: np.ndarray, n: np.ndarray, alpha: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Clopper-Pearson (exact) interval from beta quantiles; see `wilson`."""
    x = np.asarray(successes, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = stats.beta.ppf(alpha / 2, x, n - x + 1)
        hi = stats.beta.isf(alpha / 2, x + 1, n - x)
    lo = np.where(x == 0, 0.0, lo)
    hi = np.where(x == n, 1.0, hi)
    empty = n == 0
    return np.where(empty, np.nan, lo), np.where(empty, np.nan, hi)


def interval(
    successes: np.ndarray, n: np.ndarray, alpha: float = 0.05, method: str = "wilson"
) -> tuple[np.ndarray, np.ndarray]:
    """Dispatch to `wilson` or `clopper_pearson` by name."""
    if method == "wilson":
        return wilson(successes, n, alpha)
    if method == "clopper-pearson":
        return clopper_pearson(successes, n, alpha)
    raise ValueError(f"interval should be one of {INTERVALS}, but got {method!r}")


def cell_counts(ds: xr.Dataset) -> xr.Dataset:
    """Replicates computed, successes and undecided runs per cell.

    Returns
    -------
    xarray.Dataset
        Variables ``n``, ``successes``, ``undecided`` over (m, separation, scheme).
    """
    outcome = ds["outcome"]
    return xr.Dataset(
        {
            "n": (outcome >= 0).sum("replicate"),
            "successes": (outcome == SUCCESS).sum("replicate"),
            "undecided": (outcome == UNDECIDED).sum("replicate"),
        }
    ).compute()


def _number(value: float) -> float | int | str:
    if math.isinf(value):
        return "inf"
    return int(value) if float(value).is_integer() else float(value)


def cell_rows(
    ds: xr.Dataset, *, method: str = "wilson", alpha: float = 0.05
) -> list[dict[str, Any]]:
    """One row per cell: counts, P_m, its interval and the undecided fraction.

    Parameters
    ----------
    ds : xarray.Dataset
        An opened study store.
    method : {"wilson", "clopper-pearson"}
    alpha : float

    Returns
    -------
    list of dict
        Keys ``m`` (a number, or ``"inf"``), ``separation``, ``scheme``, ``n``,
        ``successes``, ``p``, ``lo``, ``hi``, ``undecided`` (a fraction); ``p``,
        ``lo``, ``hi`` and ``undecided`` are None where ``n = 0``.
    """
    counts = cell_counts(ds)
    n = counts["n"].values
    successes = counts["successes"].values
    undecided = counts["undecided"].values
    lo, hi = interval(successes, n, alpha, method)
    rows = []
    for index in np.ndindex(n.shape):
        i, j, s = index
        total = int(n[index])
        rows.append(
            {
                "m": _number(float(ds["m"].values[i])),
                "separation": _number(float(ds["separation"].values[j])),
                "scheme": str(ds["scheme"].values[s]),
                "n": total,
                "successes": int(successes[index]),
                "p": int(successes[index]) / total if total else None,
                "lo": float(lo[index]) if total else None,
                "hi": float(hi[index]) if total else None,
                "undecided": int(undecided[index]) / total if total else None,
            }
        )
    return rows
