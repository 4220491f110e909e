"""The benchmark runs in quick form and reports the documented fields."""

from __future__ import annotations

import json

import pytest

from pmstudy.bench import format_bench, run_bench
from pmstudy.errors import SpecError

KEYS = {
    "name",
    "k",
    "d",
    "m",
    "batch",
    "iterations",
    "pmstudy_s",
    "sklearn_s",
    "ratio",
    "ns_per_point_iteration",
    "reference_max_abs_diff",
}


@pytest.mark.slow
def test_quick_bench_json_and_table() -> None:
    result = run_bench(quick=True, repeats=1)
    parsed = json.loads(format_bench(result, "json"))
    assert set(parsed) >= {"workloads", "note"}
    assert "scikit-learn" in parsed["note"] and "weights" in parsed["note"]
    shapes = {(row["k"], row["d"]) for row in parsed["workloads"]}
    assert shapes == {(3, 2), (10, 50)}
    for row in parsed["workloads"]:
        assert KEYS <= set(row)
        assert row["pmstudy_s"] > 0 and row["sklearn_s"] > 0
        assert row["ratio"] == pytest.approx(row["sklearn_s"] / row["pmstudy_s"])
        work = row["batch"] * row["m"] * row["iterations"]
        assert row["ns_per_point_iteration"] == pytest.approx(
            row["pmstudy_s"] / work * 1e9
        )
        # Kernel and NumPy reference: same arithmetic up to summation order.
        assert row["reference_max_abs_diff"] < 1e-10
        flops = 4 * row["k"] * row["d"]
        assert row["flops_per_point_iteration"] == flops
        assert row["gflops"] == pytest.approx(flops * work / row["pmstudy_s"] / 1e9)
        peak = parsed["machine"]["matmul_gflops"]
        assert row["peak_fraction"] == pytest.approx(row["gflops"] / peak)
        # scikit-learn also fits weights and variances: a gap, reported only.
        assert row["sklearn_center_gap"] >= 0

    table = format_bench(result, "table")
    for row in result["workloads"]:
        assert row["name"] in table
    assert "ratio" in table and "GFLOP/s" in table


def test_bad_format_and_repeats() -> None:
    with pytest.raises(SpecError, match="format"):
        format_bench({"workloads": [], "note": ""}, "yaml")
    with pytest.raises(SpecError, match="repeats"):
        run_bench(quick=True, repeats=0)


@pytest.mark.slow
def test_memory_bench_quick_measures_a_fresh_process() -> None:
    from pmstudy.memory_bench import format_memory_bench, run_memory_bench

    result = run_memory_bench(quick=True)
    assert [row["k"] for row in result["cases"]] == [3, 10]
    for row in result["cases"]:
        assert row["data_mb"] == pytest.approx(row["m"] * row["d"] * 8 / 2**20)
        # The process holds at least the data and a copy; an interpreter with
        # NumPy and numba alone is well over 50 MB.
        assert row["peak_mb"] > 2 * row["data_mb"] + 50
        assert row["within_limit"] == (row["peak_mb"] <= result["limit_mb"])
        assert row["seconds"] > 0
    assert "peak MB" in format_memory_bench(result, "table")
    assert json.loads(format_memory_bench(result, "json")) == result
