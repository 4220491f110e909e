"""The report in its three formats, number by number against the store."""

from __future__ import annotations

import csv
import io
import json
import math
import re

import numpy as np
import pytest

from pmstudy.analysis import study_summary
from pmstudy.cli import main
from pmstudy.errors import SpecError
from pmstudy.report import CELL_COLUMNS, csv_columns, format_report
from tests.test_analysis import load, shared_store


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> str:
    return shared_store(tmp_path_factory)


@pytest.fixture(scope="module")
def ds(store_path):
    return load(store_path)


def direct(ds):
    """Counts per cell by a plain loop over replicates: (m, sep, scheme) -> dict."""
    outcome = ds["outcome"].values
    merged, split = ds["n_merged"].values, ds["n_split"].values
    population = ds["population_success"].values
    out = {}
    for i, m in enumerate(ds["m"].values):
        for j, sep in enumerate(ds["separation"].values):
            for s, scheme in enumerate(ds["scheme"].values):
                c = {"n": 0, "succ": 0, "fail": 0, "und": 0, "origin": [0, 0, 0]}
                c["patterns"] = {}
                for r in range(outcome.shape[3]):
                    v = outcome[i, j, s, r]
                    if v < 0:
                        continue
                    c["n"] += 1
                    c["succ"] += v == 1
                    c["und"] += v == 2
                    if v == 0:
                        c["fail"] += 1
                        key = f"{merged[i, j, s, r]}m{split[i, j, s, r]}s"
                        c["patterns"][key] = c["patterns"].get(key, 0) + 1
                        c["origin"][population[i, j, s, r]] += 1
                key_m = "inf" if math.isinf(m) else str(int(m))
                out[(key_m, f"{sep:g}", str(scheme))] = c
    return out


def test_json_is_strict_and_equals_the_summary(ds, store_path, capsys):
    assert main(["report", store_path, "--format", "json", "--alpha", "0.1"]) == 0
    text = capsys.readouterr().out

    def refuse(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    parsed = json.loads(text, parse_constant=refuse)
    summary = study_summary(ds, alpha=0.1)
    assert isinstance(parsed, list) and len(parsed) == len(summary["cells"])
    transitions = {(t["separation"], t["scheme"]): t for t in summary["transitions"]}
    counts = direct(ds)
    for row, cell in zip(parsed, summary["cells"], strict=True):
        # The cell's own keys, then its (separation, scheme)'s, nothing else.
        t = transitions[(row["separation"], row["scheme"])]
        assert row == {
            **cell,
            **{
                k: t[k]
                for k in ("p_inf", "p_inf_lo", "p_inf_hi", "p_inf_undecided", "reach")
            },
        }
    for row in parsed:
        c = counts[(str(row["m"]), f"{row['separation']:g}", row["scheme"])]
        assert (row["n"], row["successes"], row["fails"]) == (
            c["n"],
            c["succ"],
            c["fail"],
        )
        origin = (
            row["fails_landscape"],
            row["fails_finite_sample"],
            row["fails_population_undecided"],
        )
        assert origin == (c["origin"][0], c["origin"][1], c["origin"][2])


def test_csv_columns_and_values(ds, store_path, capsys):
    assert main(["report", store_path, "--format", "csv"]) == 0
    text = capsys.readouterr().out
    reader = csv.DictReader(io.StringIO(text))
    summary = study_summary(ds)
    assert reader.fieldnames == csv_columns(summary)
    assert tuple(reader.fieldnames[: len(CELL_COLUMNS)]) == CELL_COLUMNS
    lines = list(reader)
    assert len(lines) == len(summary["cells"])
    counts = direct(ds)
    transitions = {(t["separation"], t["scheme"]): t for t in summary["transitions"]}
    for line, row in zip(lines, summary["cells"], strict=True):
        c = counts[(line["m"], line["separation"], line["scheme"])]
        assert int(line["n"]) == c["n"] and int(line["successes"]) == c["succ"]
        assert int(line["fails"]) == c["fail"]
        for key, value in line.items():
            if key.startswith("fails_merged"):
                a, b = re.fullmatch(r"fails_merged(\d+)_split(\d+)", key).groups()
                assert int(value) == c["patterns"].get(f"{a}m{b}s", 0)
        if c["n"]:
            # repr round trip: the CSV holds the very floats of the summary.
            assert float(line["p"]) == c["succ"] / c["n"] == row["p"]
            assert float(line["lo"]) == row["lo"] and float(line["hi"]) == row["hi"]
        else:
            assert line["p"] == line["lo"] == line["hi"] == line["undecided"] == ""
        t = transitions[(row["separation"], row["scheme"])]
        assert line["p_inf"] == ("" if t["p_inf"] is None else repr(t["p_inf"]))
        for reach in t["reach"]:
            key = f"m_reach_{reach['level']:g}"
            assert line[f"{key}_status"] == reach["status"]
            assert line[key] == ("" if reach["m"] is None else repr(reach["m"]))


def _table_sections(text):
    first, second, third = re.split(r"\n(?=Sample size|Failures by)", text)
    return first, second, third


def test_table_numbers_equal_a_direct_computation(ds, store_path, capsys):
    assert main(["report", store_path, "--interval", "clopper-pearson"]) == 0
    text = capsys.readouterr().out
    assert "Clopper-Pearson 95%" in text
    pm, transitions, failures = _table_sections(text)
    counts = direct(ds)
    schemes = [str(s) for s in ds["scheme"].values]

    # P_m blocks: one per separation, a line per m, a cell per scheme.
    separation = None
    seen = 0
    for line in pm.splitlines():
        if line.startswith("separation "):
            separation = line.split()[1]
            continue
        fields = re.findall(r"no data|(\d\.\d{3}) \[(\d\.\d{3}), (\d\.\d{3})\]", line)
        label = line.split()[0] if line.strip() else ""
        if separation is None or label in ("", "m"):
            continue
        m = "inf" if label == "P_inf" else label
        cells = re.findall(r"no data|\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", line)
        assert len(cells) == len(schemes) == len(fields)
        for scheme, cell in zip(schemes, cells, strict=True):
            c = counts[(m, separation, scheme)]
            seen += 1
            if c["n"] == 0:
                assert cell == "no data"
                continue
            assert float(cell[:5]) == pytest.approx(c["succ"] / c["n"], abs=5e-4)
    assert seen == len(counts)

    # Transition lines: P_inf beside the levels.
    summary = study_summary(ds, method="clopper-pearson")
    lines = transitions.splitlines()[2:]
    assert len(lines) == len(summary["transitions"])
    for line, t in zip(lines, summary["transitions"], strict=True):
        c = counts[("inf", f"{t['separation']:g}", t["scheme"])]
        assert line.split()[:2] == [f"{t['separation']:g}", t["scheme"]]
        assert f"{c['succ'] / c['n']:.3f} [" in line
        # Where P_inf's runs ran out of budget, the line says how many.
        undecided = c["und"] / c["n"]
        assert (f"u={undecided:.2f}" in line) == (undecided > 0)
        for reach in t["reach"]:
            if reach["status"] == "interpolated":
                assert re.search(r"m = [\d,.]+", line)
            elif reach["status"] == "already at smallest m":
                assert f"already at m = {reach['m']:g}" in line
            else:
                # By the largest m with data in this cell, which in the
                # half-written synthetic store need not be the grid's 200.
                assert f"not reached by m = {reach['largest_m']:g}" in line

    # Failure anatomy: a line per cell; counts equal the loop's.
    header, *body = failures.splitlines()[2:]
    columns = header.split()
    assert columns[:5] == ["separation", "m", "scheme", "n", "fails"]
    assert columns[-4:] == ["landscape", "finite-sample", "pop-undecided", "undecided"]
    assert len(body) == len(counts)
    for line in body:
        values = dict(zip(columns, line.split(), strict=True))
        c = counts[(values["m"], values["separation"], values["scheme"])]
        assert int(values["n"]) == c["n"]
        if c["n"] == 0:
            assert values["fails"] == "-"
            continue
        assert (
            int(values["fails"]) == c["fail"] and int(values["undecided"]) == c["und"]
        )
        for key in columns[5:-4]:
            assert int(values[key]) == c["patterns"].get(key, 0)
        assert [int(values[k]) for k in columns[-4:-1]] == c["origin"]


def test_table_says_no_data_not_reached_and_already(store_path, capsys):
    assert main(["report", store_path, "--levels", "0.5", "0.999"]) == 0
    text = capsys.readouterr().out
    assert "no data" in text and "already at m = 20" in text
    assert re.search(r"not reached by m = (60|200)\b", text)
    assert "P_m >= 0.999" in text


def test_store_without_inf_says_so(tmp_path_factory, capsys):
    path = shared_store(tmp_path_factory, ms="[20, 60]", same_init=False)
    assert main(["report", path]) == 0
    text = capsys.readouterr().out
    assert "not in grid" in text and "landscape" not in text and "P_inf" in text


def test_empty_store_reports_no_data(tmp_path, capsys):
    from pmstudy.store import create_store
    from pmstudy.study import parse_spec
    from tests.conftest import TINY_SPEC

    path = str(tmp_path / "empty.zarr")
    create_store(parse_spec(TINY_SPEC), path)
    for fmt in ("table", "csv", "json"):
        assert main(["report", path, "--format", fmt]) == 0
        out = capsys.readouterr().out
        if fmt == "json":
            cells = json.loads(out)
            assert all(row["n"] == 0 and row["p"] is None for row in cells)
        elif fmt == "table":
            pm, transitions, _ = _table_sections(out)
            assert pm.count("no data") == 2 * 2 * 3  # every cell
            assert transitions.count("no data") == 2 * 3 * 2  # every level


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--alpha", "0"], "--alpha: should be a number in [1e-200, 1)"),
        (["--alpha", "1.5"], "--alpha"),
        (["--levels", "0"], "--levels: should be numbers in (0, 1]"),
        (["--levels", "1.2"], "--levels"),
    ],
)
def test_bad_report_options_exit_2(store_path, capsys, argv, message):
    assert main(["report", store_path, *argv]) == 2
    assert message in capsys.readouterr().err


def test_format_report_rejects_an_unknown_format(ds):
    with pytest.raises(SpecError, match="^--format"):
        format_report(study_summary(ds), "xml")


def test_summary_has_no_nan_even_without_data(ds):
    summary = study_summary(ds)

    def walk(value):
        if isinstance(value, float):
            assert np.isfinite(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(summary)


def test_interval_name_never_claims_100_percent() -> None:
    from pmstudy.report import interval_name

    assert interval_name("wilson", 0.05) == "Wilson 95%"
    assert interval_name("clopper-pearson", 0.001) == "Clopper-Pearson 99.9%"
    assert interval_name("wilson", 1e-12) == "Wilson (alpha = 1e-12)"
