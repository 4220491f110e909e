"""Binomial intervals against independent root-finding; the store's summary
against plain loops over a synthetic store with crafted edge cases.

`synthetic_store` is also used by tests/test_report.py and tests/test_plot.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr
from scipy import optimize, special, stats

from pmstudy.analysis import (
    REACH_STATUSES,
    cell_rows,
    clopper_pearson,
    failure_structure_counts,
    interval,
    paired_comparison,
    reach_sample_size,
    study_summary,
    wilson,
)
from pmstudy.errors import SpecError
from pmstudy.store import create_store, write_block
from pmstudy.study import parse_spec

# ---------------------------------------------------------------------------
# A synthetic store: fast to build, and every edge case is placed on purpose.

SYNTHETIC_SPEC = """
name = "synthetic"
seed = 11
k = 3
d = {d}
replicates = 10
block = 5
schemes = ["forgy", "kmeans++"]

[layout]
{layout}

[grid]
separation = [1.5, 3.0]
m = {ms}

[population]
same_init = {same_init}
"""
_LAYOUTS = {
    1: 'name = "points"\ncenters = [[0.0], [1.0], [4.0]]',
    2: 'name = "simplex"',
}
# Failure patterns that k = 3 estimates on k = 3 true centers can have.
_PATTERNS = np.array([[0, 0], [1, 1], [2, 1]])


def synthetic_store(
    path: str,
    *,
    d: int = 1,
    ms: str = '[20, 60, 200, "inf"]',
    same_init: bool = True,
    seed: int = 0,
) -> str:
    """Write a store of random but consistent results, with crafted edge cases.

    - (m = 20, separation = 1.5): every run succeeds (n of n);
    - (m = 60, separation = 3.0), scheme kmeans++: every run fails (0 of n);
    - (m = 200, separation = 3.0): never written (n = 0, "no data"), if on the grid;
    - (m = inf, separation = 1.5): only its first block written (n = 5 of 10).
    Elsewhere P(success) grows with m, so that transition sizes are interpolated.
    """
    study = parse_spec(
        SYNTHETIC_SPEC.format(
            d=d,
            layout=_LAYOUTS.get(d, 'name = "simplex"'),
            ms=ms,
            same_init=str(same_init).lower(),
        )
    )
    create_store(study, path)
    with xr.open_zarr(path, consolidated=False, mask_and_scale=False) as ds:
        shapes = {name: var.dims for name, var in ds.data_vars.items()}
    shapes.pop("centers_true")
    rng = np.random.default_rng(seed)
    n_schemes = len(study.schemes)
    for task in study.tasks():
        if task.m == 200 and task.separation == 3.0:
            continue
        if math.isinf(task.m) and task.separation == 1.5 and task.start > 0:
            continue
        size = task.stop - task.start
        p_success = 1.0 if math.isinf(task.m) else 1 - 4 / math.sqrt(task.m)
        outcome = rng.choice(
            [1, 0, 2],
            p=[p_success, 0.9 * (1 - p_success), 0.1 * (1 - p_success)],
            size=(n_schemes, size),
        )
        if math.isinf(task.m):
            outcome = rng.choice([1, 0, 2], p=[0.6, 0.3, 0.1], size=(n_schemes, size))
        if task.m == 20 and task.separation == 1.5:
            outcome[:] = 1
        if task.m == 60 and task.separation == 3.0:
            outcome[1] = 0
        pattern = _PATTERNS[rng.integers(0, 3, size=(n_schemes, size))]
        pattern[outcome == 1] = 0
        block = {}
        for name, dims in shapes.items():
            lead = (n_schemes, size) if "scheme" in dims else (size,)
            tail = (study.k, study.d) if "component" in dims else ()
            if name == "outcome":
                value = outcome
            elif name == "n_merged":
                value = pattern[..., 0]
            elif name == "n_split":
                value = pattern[..., 1]
            elif name == "population_success":
                value = rng.integers(0, 3, size=lead)
            elif name.endswith(("end", "outcome", "starved")):
                value = rng.integers(0, 3, size=lead)
            elif name == "n_iter":
                value = rng.integers(1, 500, size=lead)
            else:
                value = rng.normal(size=lead + tail)
            block[name] = value
        write_block(study, path, task, block)
    return path


_SHARED: dict[tuple, str] = {}


def shared_store(tmp_path_factory, **kwargs) -> str:
    """`synthetic_store` built once per test session for each set of arguments
    (the tests only read it), so that the test modules share the writes."""
    key = tuple(sorted(kwargs.items()))
    if key not in _SHARED:
        path = tmp_path_factory.mktemp("synthetic") / "s.zarr"
        _SHARED[key] = synthetic_store(str(path), **kwargs)
    return _SHARED[key]


def load(path: str) -> xr.Dataset:
    return xr.open_zarr(path, consolidated=False, mask_and_scale=False).load()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> xr.Dataset:
    """The synthetic store, loaded into memory once."""
    return load(shared_store(tmp_path_factory))


# ---------------------------------------------------------------------------
# Intervals.


def wilson_by_root(x, n, alpha):
    """The Wilson bounds solve |x/n - p| = z sqrt(p (1 - p) / n) for p."""
    z = stats.norm.isf(alpha / 2)
    phat = x / n

    def f(p):
        return (phat - p) ** 2 - z * z * p * (1 - p) / n

    # f vanishes at p = phat only when phat is 0 or 1; step off it there.
    inner_lo, inner_hi = min(phat, 1 - 1e-12), max(phat, 1e-12)
    lo = 0.0 if x == 0 else optimize.brentq(f, 0.0, inner_lo, xtol=1e-14)
    hi = 1.0 if x == n else optimize.brentq(f, inner_hi, 1.0, xtol=1e-14)
    return lo, hi


def binomial_log_tail(x, n, p):
    """log P(Binomial(n, p) >= x), summed term by term in log space."""
    if p >= 1:
        return 0.0
    j = np.arange(x, n + 1)
    log_terms = (
        special.gammaln(n + 1)
        - special.gammaln(j + 1)
        - special.gammaln(n - j + 1)
        + j * math.log(p)
        + (n - j) * math.log1p(-p)
    )
    top = log_terms.max()
    return top + math.log(np.exp(log_terms - top).sum())


def clopper_by_root(x, n, alpha):
    """Exact bounds: P(X >= x | lo) = alpha/2 and P(X <= x | hi) = alpha/2.

    Solved on log p, so that it holds for tiny alpha too; the upper bound by the
    symmetry X -> n - X, p -> 1 - p.
    """

    def lower(x):
        if x == 0:
            return 0.0
        target = math.log(alpha / 2)
        t = optimize.brentq(
            lambda t: binomial_log_tail(x, n, math.exp(t)) - target,
            -745.0,
            0.0,
            xtol=1e-15,
            rtol=1e-15,
        )
        return math.exp(t)

    return lower(x), 1 - lower(n - x)


@pytest.mark.parametrize("n", [1, 7, 200])
@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_wilson_and_clopper_pearson_against_roots(n, alpha):
    xs = np.arange(n + 1)
    lo, hi = wilson(xs, np.full_like(xs, n), alpha)
    clo, chi = clopper_pearson(xs, np.full_like(xs, n), alpha)
    for x in xs[:: max(1, n // 25)]:
        # brentq's tolerance is ~1e-12 here; both sides are smooth in p.
        np.testing.assert_allclose(
            (lo[x], hi[x]), wilson_by_root(x, n, alpha), atol=1e-9
        )
        np.testing.assert_allclose(
            (clo[x], chi[x]), clopper_by_root(x, n, alpha), atol=1e-9
        )


@pytest.mark.parametrize("method", ["wilson", "clopper-pearson"])
@pytest.mark.parametrize("n", [1, 2, 50, 1000])
@pytest.mark.parametrize("alpha", [0.05, 1e-6, 1e-12, 1e-100, 1e-200])
def test_bounds_in_unit_interval_exact_at_extremes_and_monotone(method, n, alpha):
    xs = np.arange(n + 1)
    lo, hi = interval(xs, np.full_like(xs, n), alpha, method)
    assert np.isfinite(lo).all() and np.isfinite(hi).all()
    assert lo[0] == 0.0 and hi[-1] == 1.0
    assert np.all((lo >= 0) & (hi <= 1) & (lo <= xs / n) & (xs / n <= hi))
    # Monotone in the count: one more success never lowers either bound.
    assert np.all(np.diff(lo) >= 0) and np.all(np.diff(hi) >= 0)
    # Both intervals treat successes and failures alike: hi(x) = 1 - lo(n - x).
    np.testing.assert_allclose(hi, 1 - lo[::-1], rtol=0, atol=1e-12)
    if n > 1:
        # Strictly inside at an interior count: the interval is not degenerate
        # (its upper end can round to 1 when alpha is tiny; its lower cannot).
        assert lo[1] > 0
    if method == "clopper-pearson" and n <= 50:
        # Exact bounds stay exact at tiny alpha, where scipy's beta quantile
        # fails: against the term-by-term tail, solved on log p.
        for x in range(0, n + 1, max(1, n // 7)):
            ref_lo, ref_hi = clopper_by_root(x, n, alpha)
            assert lo[x] == pytest.approx(ref_lo, rel=1e-9, abs=0)
            assert hi[x] == pytest.approx(ref_hi, rel=1e-9, abs=1e-15)


def test_smaller_alpha_gives_wider_intervals():
    xs = np.arange(21)
    for method in ("wilson", "clopper-pearson"):
        widths = [
            np.subtract(*interval(xs, np.full_like(xs, 20), a, method)[::-1])
            for a in (0.1, 0.05, 1e-3, 1e-9)
        ]
        assert all(np.all(w2 >= w1) for w1, w2 in zip(widths, widths[1:], strict=False))


def test_no_data_is_nan_not_a_crash():
    for method in ("wilson", "clopper-pearson"):
        lo, hi = interval(np.array([0, 3]), np.array([0, 5]), method=method)
        assert np.isnan(lo[0]) and np.isnan(hi[0])
        assert 0 < lo[1] < 0.6 < hi[1] < 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"method": "bayes"}, "interval"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"alpha": 1e-250}, "alpha"),
        ({"successes": [3], "n": [2]}, "successes"),
        ({"successes": [-1], "n": [2]}, "successes"),
    ],
)
def test_bad_interval_input_names_the_field(kwargs, field):
    args = {"successes": [1], "n": [2], **kwargs}
    with pytest.raises(SpecError, match=f"^{field}: should be"):
        interval(
            args["successes"],
            args["n"],
            args.get("alpha", 0.05),
            args.get("method", "wilson"),
        )


# ---------------------------------------------------------------------------
# Transition sample sizes.


def test_reach_interpolates_linearly_in_log_m():
    ms, ps = [10, 100, 1000], [0.2, 0.4, 0.8]
    reach = reach_sample_size(ms, ps, 0.5)
    # 0.5 is a quarter of the way from 0.4 to 0.8: log10 m = 2 + 0.25.
    assert reach.status == "interpolated"
    assert reach.m == pytest.approx(10**2.25, rel=1e-12)
    assert reach_sample_size(ms, ps, 0.8).m == pytest.approx(1000, rel=1e-12)


def test_reach_takes_the_first_crossing_and_says_when_it_cannot():
    # P_m dips back below the level after the first crossing: the first counts.
    ms, ps = [10, 20, 40, 80], [0.3, 0.6, 0.4, 0.95]
    assert reach_sample_size(ms, ps, 0.5).m == pytest.approx(
        math.exp(math.log(10) + (0.2 / 0.3) * math.log(2)), rel=1e-12
    )
    assert reach_sample_size(ms, ps, 0.2).status == "already at smallest m"
    assert reach_sample_size(ms, ps, 0.2).m == 10
    assert reach_sample_size(ms, ps, 0.99).status == "not reached"
    assert reach_sample_size(ms, ps, 0.99).m is None
    assert reach_sample_size(ms, [math.nan] * 4, 0.5).status == "no data"
    # Cells without data are skipped, not read as zero.
    skipped = reach_sample_size(ms, [math.nan, 0.2, math.nan, 0.8], 0.5)
    assert skipped.m == pytest.approx(math.exp(math.log(20) + 0.5 * math.log(4)))
    assert {"interpolated", "already at smallest m", "not reached", "no data"} == set(
        REACH_STATUSES
    )
    with pytest.raises(SpecError, match="^ms"):
        reach_sample_size([20, 10], [0.1, 0.2], 0.5)
    with pytest.raises(SpecError, match="^level"):
        reach_sample_size([10, 20], [0.1, 0.2], 1.5)


# ---------------------------------------------------------------------------
# The summary, number by number, against plain loops over the store.


def _m_of(row):
    return math.inf if row["m"] == "inf" else row["m"]


def test_every_cell_number_equals_a_loop_over_the_store(store):
    ds = store
    outcome, merged, split = (ds[v].values for v in ("outcome", "n_merged", "n_split"))
    population = ds["population_success"].values
    rows = cell_rows(ds, method="clopper-pearson", alpha=0.1)
    assert len(rows) == outcome.shape[0] * outcome.shape[1] * outcome.shape[2]
    seen_patterns = set()
    for row in rows:
        i = list(ds["m"].values).index(_m_of(row))
        j = list(ds["separation"].values).index(row["separation"])
        s = list(ds["scheme"].values).index(row["scheme"])
        n = succ = fail = und = land = fin = pund = 0
        by_pattern: dict[tuple[int, int], int] = {}
        for r in range(outcome.shape[3]):
            value = outcome[i, j, s, r]
            if value < 0:
                continue
            n += 1
            succ += value == 1
            und += value == 2
            if value == 0:
                fail += 1
                key = (int(merged[i, j, s, r]), int(split[i, j, s, r]))
                by_pattern[key] = by_pattern.get(key, 0) + 1
                seen_patterns.add(key)
                land += population[i, j, s, r] == 0
                fin += population[i, j, s, r] == 1
                pund += population[i, j, s, r] == 2
        assert (row["n"], row["successes"], row["fails"]) == (n, succ, fail)
        assert (
            row["fails_landscape"],
            row["fails_finite_sample"],
            row["fails_population_undecided"],
        ) == (land, fin, pund)
        for entry in row["fails_by_structure"]:
            key = (entry["n_merged"], entry["n_split"])
            assert entry["count"] == by_pattern.get(key, 0)
        if n == 0:
            assert row["p"] is row["lo"] is row["hi"] is row["undecided"] is None
            continue
        assert row["p"] == succ / n and row["undecided"] == und / n
        lo, hi = clopper_by_root(succ, n, 0.1)
        assert row["lo"] == pytest.approx(lo, abs=1e-9)
        assert row["hi"] == pytest.approx(hi, abs=1e-9)
    # Every pattern that occurs is listed, in every row.
    listed = {(e["n_merged"], e["n_split"]) for e in rows[0]["fails_by_structure"]}
    assert listed == seen_patterns and len(listed) >= 2


def test_crafted_edge_cells_read_as_intended(store):
    rows = {(r["m"], r["separation"], r["scheme"]): r for r in cell_rows(store)}
    everything = rows[(20, 1.5, "forgy")]
    assert everything["p"] == 1.0 and everything["hi"] == 1.0 and everything["n"] == 10
    nothing = rows[(60, 3, "kmeans++")]
    assert nothing["p"] == 0.0 and nothing["lo"] == 0.0 and nothing["fails"] == 10
    empty = rows[(200, 3, "forgy")]
    assert empty["n"] == 0 and empty["p"] is None and empty["fails"] == 0
    assert rows[("inf", 1.5, "forgy")]["n"] == 5


def test_transitions_equal_a_direct_interpolation(store):
    ds = store
    summary = study_summary(ds, levels=(0.5, 0.75, 0.9))
    assert summary["has_population_reference"] is True
    outcome = ds["outcome"].values
    ms = ds["m"].values
    finite = np.flatnonzero(np.isfinite(ms))
    inf_index = int(np.flatnonzero(np.isinf(ms))[0])
    assert len(summary["transitions"]) == 2 * 2
    for t in summary["transitions"]:
        j = list(ds["separation"].values).index(t["separation"])
        s = list(ds["scheme"].values).index(t["scheme"])
        limit = outcome[inf_index, j, s]
        limit = limit[limit >= 0]
        assert t["p_inf"] == (limit == 1).mean()
        lo, hi = wilson_by_root(int((limit == 1).sum()), limit.size, 0.05)
        assert t["p_inf_lo"] == pytest.approx(lo, abs=1e-9)
        assert t["p_inf_hi"] == pytest.approx(hi, abs=1e-9)
        # P_m along the finite m, skipping cells without data.
        points = []
        for i in finite:
            cell = outcome[i, j, s]
            cell = cell[cell >= 0]
            if cell.size:
                points.append((ms[i], (cell == 1).mean()))
        for reach in t["reach"]:
            level = reach["level"]
            crossing = next((q for q, (_, p) in enumerate(points) if p >= level), None)
            if crossing is None:
                assert (reach["status"], reach["m"]) == ("not reached", None)
            elif crossing == 0:
                assert reach["status"] == "already at smallest m"
                assert reach["m"] == points[0][0]
            else:
                (m0, p0), (m1, p1) = points[crossing - 1], points[crossing]
                # Solve p0 + (p1 - p0) * (log m - log m0) / (log m1 - log m0) = level.
                expected = m0 * (m1 / m0) ** ((level - p0) / (p1 - p0))
                assert reach["status"] == "interpolated"
                assert reach["m"] == pytest.approx(expected, rel=1e-12)
                assert m0 < reach["m"] <= m1


def test_statuses_cover_every_case(store):
    summary = study_summary(store, levels=(0.5, 0.9, 1.0))
    statuses = {r["status"] for t in summary["transitions"] for r in t["reach"]}
    # separation 1.5 starts at P = 1 (already); kmeans++ at separation 3 fails
    # everything at m = 60; P = 1 is not reached where a cell has a failure.
    assert {"already at smallest m", "not reached"} <= statuses
    assert "interpolated" in statuses or "not reached" in statuses


def test_store_without_population_or_inf(tmp_path_factory):
    path = shared_store(tmp_path_factory, ms="[20, 60]", same_init=False)
    summary = study_summary(load(path))
    assert summary["has_population_reference"] is False
    for row in summary["cells"]:
        assert row["fails_landscape"] is None and row["fails_finite_sample"] is None
    for t in summary["transitions"]:
        assert t["p_inf"] is None and t["p_inf_lo"] is None


def test_no_failures_gives_an_empty_structure_axis(tmp_path):
    path = synthetic_store(str(tmp_path / "s.zarr"), ms="[20]", same_init=False)
    ds = load(path)
    ds["outcome"][:] = 1
    counts = failure_structure_counts(ds)
    assert counts.sizes["structure"] == 0
    assert all(row["fails_by_structure"] == [] for row in cell_rows(ds))


def test_summary_rejects_bad_levels(store):
    with pytest.raises(SpecError, match="^levels"):
        study_summary(store, levels=(0.0,))


def test_paired_comparison_against_a_loop_and_an_exact_sum(store):
    ds = store
    rows = paired_comparison(ds, "forgy", "kmeans++")
    assert len(rows) == ds.sizes["m"] * ds.sizes["separation"]
    a = ds["outcome"].sel(scheme="forgy").values
    b = ds["outcome"].sel(scheme="kmeans++").values
    for row in rows:
        i = list(ds["m"].values).index(_m_of(row))
        j = list(ds["separation"].values).index(row["separation"])
        pairs = [(x, y) for x, y in zip(a[i, j], b[i, j], strict=True) if x >= 0 <= y]
        a_only = sum(x == 1 and y != 1 for x, y in pairs)
        b_only = sum(y == 1 and x != 1 for x, y in pairs)
        assert (row["n"], row["a_only"], row["b_only"]) == (len(pairs), a_only, b_only)
        if not pairs:
            assert row["difference"] is None and row["p_value"] is None
            continue
        succ_a = sum(x == 1 for x, _ in pairs)
        succ_b = sum(y == 1 for _, y in pairs)
        assert row["difference"] == pytest.approx((succ_a - succ_b) / len(pairs))
        # Two-sided exact McNemar: twice the smaller binomial(t, 1/2) tail, capped.
        t = a_only + b_only
        tail = sum(math.comb(t, q) for q in range(min(a_only, b_only) + 1)) / 2**t
        assert row["p_value"] == pytest.approx(min(1.0, 2 * tail), rel=1e-12)
    # The edge cells: m = 60, separation 3 has forgy vs an all-failing kmeans++.
    edge = next(r for r in rows if (r["m"], r["separation"]) == (60, 3))
    assert edge["b_only"] == 0 and edge["a_only"] == (a[1, 1] == 1).sum()
    with pytest.raises(SpecError, match="^scheme_b"):
        paired_comparison(ds, "forgy", "bogus")
