"""P_m estimates from a store: intervals, transition sample sizes, failure anatomy.

P_m is the fraction of successes among the computed replicates of a cell
(m, separation, scheme); undecided runs count as replicates that did not succeed,
and their fraction is reported beside P_m. Intervals are Wilson score intervals
by default and Clopper-Pearson (exact, conservative) on request; both are exactly
0 and 1 at the extremes 0/n and n/n, and a cell with no data has none.

Beyond P_m itself this module answers three questions a reader of a study asks:

- *How large must m be?* The sample size at which P_m first reaches a level
  (0.5, 0.9), interpolated linearly in log m between the grid points that
  bracket the first crossing, with P_inf (the cell at m = inf) beside it.
- *What do failures look like?* Each failure is classed by its structure: how
  many true centers were merged away and how many were split. Merged and split
  centers come together (k estimates on k true centers: one left empty means
  another holds two), so the pattern (n_merged, n_split) is the useful unit.
- *Is one scheme better?* Every scheme runs on the very same data sets, so two
  schemes compare pairwise, replicate by replicate; only the discordant pairs
  (one succeeds, the other does not) carry information, and McNemar's exact
  test on them is far more powerful than comparing two separate intervals.
- *Whose fault is a failure?* Where the store has ``population_success``
  (population EM from the run's own initial centers), a failure is
  *landscape-caused* if population EM fails too, and *finite-sample-caused* if
  population EM succeeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
from scipy import special, stats

from pmstudy.errors import SpecError
from pmstudy.outcome import FAIL, SUCCESS, UNDECIDED

__all__ = [
    "ALPHA_MIN",
    "INTERVALS",
    "LEVELS",
    "REACH_STATUSES",
    "Reach",
    "cell_counts",
    "cell_rows",
    "clopper_pearson",
    "failure_structure_counts",
    "interval",
    "paired_comparison",
    "reach_sample_size",
    "study_summary",
    "transition_rows",
    "wilson",
]

INTERVALS = ("wilson", "clopper-pearson")
ALPHA_MIN = 1e-200
LEVELS = (0.5, 0.9)
REACH_STATUSES = ("interpolated", "already at smallest m", "not reached", "no data")


def _counts(successes: Any, n: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(successes, dtype=np.float64)
    total = np.asarray(n, dtype=np.float64)
    if x.shape != total.shape:
        raise SpecError(
            "successes", x.shape, f"an array of the same shape as n {total.shape}"
        )
    if not (np.all(total >= 0) and np.all(x >= 0) and np.all(x <= total)):
        raise SpecError("successes", successes, "counts with 0 <= successes <= n")
    return x, total


def _check_alpha(alpha: float) -> float:
    # The binomial tails behind the exact interval are accurate to ~1e-13 down to
    # alpha ~ 1e-250 and lose digits below ~1e-280, near float64's underflow.
    if not (isinstance(alpha, int | float) and ALPHA_MIN <= alpha < 1):
        raise SpecError("alpha", alpha, f"a number in [{ALPHA_MIN:g}, 1)")
    return float(alpha)


def _finish(
    lo: np.ndarray, hi: np.ndarray, x: np.ndarray, n: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    # The formulas give 0 and 1 at the extremes only up to rounding; the exact
    # values are 0 and 1. A cell without data has no interval at all.
    lo = np.where(x == 0, 0.0, np.clip(lo, 0.0, 1.0))
    hi = np.where(x == n, 1.0, np.clip(hi, 0.0, 1.0))
    empty = n == 0
    return np.where(empty, np.nan, lo), np.where(empty, np.nan, hi)


def wilson(
    successes: Any, n: Any, alpha: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a binomial proportion.

    Parameters
    ----------
    successes, n : array_like of int, same shape (...)
        Counts, with ``0 <= successes <= n``; cells with ``n = 0`` give NaN.
    alpha : float
        One minus the confidence level, in [`ALPHA_MIN`, 1).

    Returns
    -------
    lo, hi : ndarray of float, shape (...)
        Bounds in [0, 1]; exactly 0 at ``successes = 0`` and 1 at ``successes = n``.

    Raises
    ------
    SpecError
        If the counts are inconsistent or `alpha` is out of range.
    """
    x, n = _counts(successes, n)
    z = stats.norm.isf(_check_alpha(alpha) / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        center = (x + z * z / 2) / (n + z * z)
        half = z / (n + z * z) * np.sqrt(x * (n - x) / n + z * z / 4)
    return _finish(center - half, center + half, x, n)


def clopper_pearson(
    successes: Any, n: Any, alpha: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Clopper-Pearson (exact) interval from beta quantiles.

    Parameters, returns and errors as in `wilson`.
    """
    x, n = _counts(successes, n)
    alpha = _check_alpha(alpha)
    # The upper bound mirrors the lower one: swap successes and failures.
    return _finish(_exact_lower(x, n, alpha), 1 - _exact_lower(n - x, n, alpha), x, n)


def _exact_lower(x: np.ndarray, n: np.ndarray, alpha: float) -> np.ndarray:
    """The p with P(Binomial(n, p) >= x) = alpha / 2, for 1 <= x <= n; shape of x.

    That tail is the regularized incomplete beta I_p(x, n - x + 1), increasing
    in p. Bisection on log p finds it to ~1e-13 relative for any alpha down to
    `ALPHA_MIN`, where scipy's beta quantile (a Newton-type inverse) warns and
    returns wrong values from alpha ~ 1e-100 on.
    """
    valid = (x >= 1) & (x <= n)
    a = np.where(valid, x, 1.0)
    b = np.where(valid, n - x + 1, 1.0)
    target = math.log(alpha / 2)
    # p = e^-745 is the smallest positive float; I_p there is below any target.
    left = np.full(a.shape, -745.0)
    right = np.zeros(a.shape)
    with np.errstate(divide="ignore", under="ignore"):
        for _ in range(100):  # halves 745 to below the spacing of floats near it
            middle = (left + right) / 2
            low = np.log(special.betainc(a, b, np.exp(middle))) < target
            left = np.where(low, middle, left)
            right = np.where(low, right, middle)
    return np.where(valid, np.exp((left + right) / 2), 0.0)


def interval(
    successes: Any, n: Any, alpha: float = 0.05, method: str = "wilson"
) -> tuple[np.ndarray, np.ndarray]:
    """Dispatch to `wilson` or `clopper_pearson` by name.

    Raises
    ------
    SpecError
        If `method` is not one of `INTERVALS`.
    """
    if method == "wilson":
        return wilson(successes, n, alpha)
    if method == "clopper-pearson":
        return clopper_pearson(successes, n, alpha)
    raise SpecError("interval", method, f"one of {', '.join(INTERVALS)}")


def cell_counts(ds: xr.Dataset) -> xr.Dataset:
    """Replicates computed, successes, failures and undecided runs per cell.

    Parameters
    ----------
    ds : xarray.Dataset
        An opened study store.

    Returns
    -------
    xarray.Dataset
        Integer variables over (m, separation, scheme): ``n``, ``successes``,
        ``fails``, ``undecided``; and, where the store has ``population_success``,
        ``fails_landscape`` (population EM from the same start fails too),
        ``fails_finite_sample`` (population EM succeeds) and
        ``fails_population_undecided`` (its budget ran out).
    """
    outcome = ds["outcome"]
    fails = outcome == FAIL
    counts = {
        "n": (outcome >= 0).sum("replicate"),
        "successes": (outcome == SUCCESS).sum("replicate"),
        "fails": fails.sum("replicate"),
        "undecided": (outcome == UNDECIDED).sum("replicate"),
    }
    if "population_success" in ds:
        population = ds["population_success"]
        counts["fails_landscape"] = (fails & (population == FAIL)).sum("replicate")
        counts["fails_finite_sample"] = (fails & (population == SUCCESS)).sum(
            "replicate"
        )
        counts["fails_population_undecided"] = (fails & (population == UNDECIDED)).sum(
            "replicate"
        )
    return xr.Dataset(counts).compute()


def failure_structure_counts(ds: xr.Dataset) -> xr.DataArray:
    """Failures per cell by structure (true centers merged away, split).

    Parameters
    ----------
    ds : xarray.Dataset
        An opened study store.

    Returns
    -------
    xarray.DataArray of int, dims (m, separation, scheme, structure)
        The count of failures with each (n_merged, n_split) pattern seen anywhere
        in the store, sorted; the ``structure`` dimension carries the coordinates
        ``n_merged`` and ``n_split``. It has length 0 when nothing failed.
    """
    outcome = ds["outcome"].values
    merged = ds["n_merged"].values
    split = ds["n_split"].values
    fails = outcome == FAIL
    patterns = sorted(
        set(zip(merged[fails].tolist(), split[fails].tolist(), strict=True))
    )
    counts = np.zeros((*outcome.shape[:3], len(patterns)), dtype=np.int64)
    for index, (a, b) in enumerate(patterns):
        counts[..., index] = (fails & (merged == a) & (split == b)).sum(axis=-1)
    return xr.DataArray(
        counts,
        dims=("m", "separation", "scheme", "structure"),
        coords={
            "m": ds["m"].values,
            "separation": ds["separation"].values,
            "scheme": ds["scheme"].values,
            "n_merged": ("structure", np.array([a for a, _ in patterns], dtype=int)),
            "n_split": ("structure", np.array([b for _, b in patterns], dtype=int)),
        },
        name="fails_by_structure",
    )


def _number(value: float) -> float | int | str:
    if math.isinf(value):
        return "inf"
    return int(value) if float(value).is_integer() else float(value)


def cell_rows(
    ds: xr.Dataset, *, method: str = "wilson", alpha: float = 0.05
) -> list[dict[str, Any]]:
    """One row per cell: counts, P_m, its interval, undecided and failure anatomy.

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
        ``successes``, ``p``, ``lo``, ``hi``, ``undecided`` (a fraction): ``p``,
        ``lo``, ``hi`` and ``undecided`` are None where ``n = 0``. Then ``fails``
        (a count), ``fails_by_structure`` (a list of ``{"n_merged", "n_split",
        "count"}``, the same patterns in every row), and ``fails_landscape``,
        ``fails_finite_sample``, ``fails_population_undecided`` (counts, or None
        when the store has no population reference).
    """
    counts = cell_counts(ds)
    structure = failure_structure_counts(ds)
    patterns = list(
        zip(
            structure["n_merged"].values.tolist(),
            structure["n_split"].values.tolist(),
            strict=True,
        )
    )
    n = counts["n"].values
    successes = counts["successes"].values
    lo, hi = interval(successes, n, alpha, method)
    has_population = "fails_landscape" in counts
    rows = []
    for index in np.ndindex(n.shape):
        i, j, s = index
        total = int(n[index])
        row: dict[str, Any] = {
            "m": _number(float(ds["m"].values[i])),
            "separation": _number(float(ds["separation"].values[j])),
            "scheme": str(ds["scheme"].values[s]),
            "n": total,
            "successes": int(successes[index]),
            "p": int(successes[index]) / total if total else None,
            "lo": float(lo[index]) if total else None,
            "hi": float(hi[index]) if total else None,
            "undecided": int(counts["undecided"].values[index]) / total
            if total
            else None,
            "fails": int(counts["fails"].values[index]),
            "fails_by_structure": [
                {"n_merged": a, "n_split": b, "count": int(structure.values[index][q])}
                for q, (a, b) in enumerate(patterns)
            ],
        }
        for key in (
            "fails_landscape",
            "fails_finite_sample",
            "fails_population_undecided",
        ):
            row[key] = int(counts[key].values[index]) if has_population else None
        rows.append(row)
    return rows


@dataclass(frozen=True)
class Reach:
    """Where P_m first reaches a level along the m axis.

    Attributes
    ----------
    level : float
    m : float or None
        The interpolated sample size; the smallest m with data when P_m is already
        at the level there; None when the level is not reached or there is no data.
    status : str
        One of `REACH_STATUSES`.
    largest_m : float or None
        The largest m with data: "not reached" means not reached by this m (an m
        of the grid with no data yet says nothing). None when there is no data.
    """

    level: float
    m: float | None
    status: str
    largest_m: float | None = None


def reach_sample_size(ms: Sequence[float], ps: Sequence[float], level: float) -> Reach:
    """The sample size at which P_m first reaches `level`, interpolated in log m.

    Between the last grid point below the level and the first at or above it,
    P_m is taken as linear in log m, which is how P_m curves look on the usual
    log-spaced grids.

    Parameters
    ----------
    ms : sequence of float, shape (M,)
        Finite sample sizes, strictly increasing (`transition_rows` sorts them).
    ps : sequence of float, shape (M,)
        P_m at each; NaN where a cell has no data (such points are skipped).
    level : float
        In (0, 1].

    Returns
    -------
    Reach
    """
    m = np.asarray(ms, dtype=np.float64)
    p = np.asarray(ps, dtype=np.float64)
    if m.shape != p.shape or np.any(np.diff(m) <= 0) or not np.isfinite(m).all():
        raise SpecError("ms", ms, "finite, strictly increasing sample sizes")
    if not 0 < level <= 1:
        raise SpecError("level", level, "a number in (0, 1]")

    known = ~np.isnan(p)
    m, p = m[known], p[known]
    if m.size == 0:
        return Reach(level, None, "no data")
    largest = float(m[-1])
    above = np.flatnonzero(p >= level)
    if above.size == 0:
        return Reach(level, None, "not reached", largest)
    first = int(above[0])
    if first == 0:
        return Reach(level, float(m[0]), "already at smallest m", largest)
    # p[first - 1] < level <= p[first], so the slope is positive.
    x0, x1 = math.log(m[first - 1]), math.log(m[first])
    t = (level - p[first - 1]) / (p[first] - p[first - 1])
    return Reach(level, float(math.exp(x0 + t * (x1 - x0))), "interpolated", largest)


def transition_rows(
    rows: Sequence[dict[str, Any]], levels: Sequence[float] = LEVELS
) -> list[dict[str, Any]]:
    """P_inf and the transition sample sizes per (separation, scheme).

    Parameters
    ----------
    rows : sequence of dict
        Cell rows from `cell_rows`.
    levels : sequence of float
        The levels P_m must reach.

    Returns
    -------
    list of dict
        Keys ``separation``, ``scheme``, ``p_inf``, ``p_inf_lo``, ``p_inf_hi``
        and ``p_inf_undecided`` (the fraction of m = inf runs whose budget ran
        out; all None where the store has no m = inf or its cell has no data),
        and
        ``reach``: a list of ``{"level", "m", "status", "largest_m"}``, one per
        level (see `Reach`).
    """
    groups: dict[tuple[Any, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["separation"], row["scheme"]), []).append(row)
    out = []
    for (separation, scheme), group in groups.items():
        finite = sorted((r for r in group if r["m"] != "inf"), key=lambda r: r["m"])
        limit = next((r for r in group if r["m"] == "inf"), None)
        ms = [float(r["m"]) for r in finite]
        ps = [math.nan if r["p"] is None else r["p"] for r in finite]
        reaches = [reach_sample_size(ms, ps, level) for level in levels]
        out.append(
            {
                "separation": separation,
                "scheme": scheme,
                "p_inf": limit["p"] if limit else None,
                "p_inf_lo": limit["lo"] if limit else None,
                "p_inf_hi": limit["hi"] if limit else None,
                "p_inf_undecided": limit.get("undecided") if limit else None,
                "reach": [
                    {
                        "level": r.level,
                        "m": r.m,
                        "status": r.status,
                        "largest_m": r.largest_m,
                    }
                    for r in reaches
                ],
            }
        )
    return out


def study_summary(
    ds: xr.Dataset,
    *,
    method: str = "wilson",
    alpha: float = 0.05,
    levels: Sequence[float] = LEVELS,
) -> dict[str, Any]:
    """Everything the report shows, as plain data (JSON-ready, no NaN).

    Parameters
    ----------
    ds : xarray.Dataset
        An opened study store.
    method, alpha
        The interval, as in `interval`.
    levels : sequence of float
        Levels for the transition sample sizes.

    Returns
    -------
    dict
        ``study`` (its name), ``interval``, ``alpha``, ``levels``,
        ``has_population_reference`` (whether failures can be split into
        landscape- and finite-sample-caused), ``cells`` (`cell_rows`) and
        ``transitions`` (`transition_rows`).
    """
    for level in levels:
        if not 0 < level <= 1:
            raise SpecError("levels", level, "numbers in (0, 1]")
    rows = cell_rows(ds, method=method, alpha=alpha)
    return {
        "study": str(ds.attrs.get("study", "")),
        "interval": method,
        "alpha": alpha,
        "levels": list(levels),
        "has_population_reference": "population_success" in ds,
        "cells": rows,
        "transitions": transition_rows(rows, levels),
    }


def paired_comparison(
    ds: xr.Dataset, scheme_a: str, scheme_b: str
) -> list[dict[str, Any]]:
    """Compare two schemes run on the same data sets, one row per (m, separation).

    Parameters
    ----------
    ds : xarray.Dataset
        An opened study store.
    scheme_a, scheme_b : str
        Labels on the store's scheme axis.

    Returns
    -------
    list of dict
        Keys ``m``, ``separation``, ``n`` (replicates computed for both),
        ``a_only`` (A succeeded, B did not), ``b_only``, ``difference``
        (P_m of A minus P_m of B on those replicates; None if ``n = 0``) and
        ``p_value``: McNemar's exact two-sided test, a binomial test of
        ``a_only`` out of ``a_only + b_only`` against 1/2 (1.0 when no pair is
        discordant, None if ``n = 0``).
    """
    labels = [str(s) for s in ds["scheme"].values]
    for name, label in (("scheme_a", scheme_a), ("scheme_b", scheme_b)):
        if label not in labels:
            raise SpecError(name, label, f"one of the store's schemes {labels}")
    a = ds["outcome"].sel(scheme=scheme_a).values
    b = ds["outcome"].sel(scheme=scheme_b).values
    both = (a >= 0) & (b >= 0)
    win_a = both & (a == SUCCESS) & (b != SUCCESS)
    win_b = both & (b == SUCCESS) & (a != SUCCESS)
    rows = []
    for i, j in np.ndindex(a.shape[:2]):
        n = int(both[i, j].sum())
        a_only, b_only = int(win_a[i, j].sum()), int(win_b[i, j].sum())
        discordant = a_only + b_only
        if n == 0:
            p_value = None
        elif discordant == 0:
            p_value = 1.0
        else:
            p_value = float(stats.binomtest(a_only, discordant, 0.5).pvalue)
        rows.append(
            {
                "m": _number(float(ds["m"].values[i])),
                "separation": _number(float(ds["separation"].values[j])),
                "n": n,
                "a_only": a_only,
                "b_only": b_only,
                "difference": (a_only - b_only) / n if n else None,
                "p_value": p_value,
            }
        )
    return rows
