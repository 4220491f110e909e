"""Formatting of a study summary (see `pmstudy.analysis.study_summary`).

Three renderings of the same numbers:

- ``table``, for people: P_m with its interval, schemes side by side, one block
  per separation and one line per m, P_inf last; then, per separation and
  scheme, P_inf beside the sample sizes at which P_m first reaches each level;
  then the anatomy of the failures of every cell.
- ``csv``, for spreadsheets: one line per cell, the per-cell columns first, then
  the per-(separation, scheme) values repeated on each of its cells.
- ``json``, for programs: a list with one object per cell, its own keys first,
  then those of its (separation, scheme), as in the CSV.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

from pmstudy.errors import SpecError

__all__ = [
    "CELL_COLUMNS",
    "FORMATS",
    "csv_columns",
    "format_report",
    "interval_name",
    "json_rows",
]

FORMATS = ("table", "csv", "json")
CELL_COLUMNS = (
    "m",
    "separation",
    "scheme",
    "n",
    "successes",
    "p",
    "lo",
    "hi",
    "undecided",
)
_ORIGIN = ("fails_landscape", "fails_finite_sample", "fails_population_undecided")


def interval_name(method: str, alpha: float) -> str:
    """How a header names the interval, e.g. ``"Wilson 95%"``."""
    name = {"wilson": "Wilson", "clopper-pearson": "Clopper-Pearson"}.get(
        method, method
    )
    # "95%" for the usual levels; levels that round to 100% in six digits
    # are named by alpha instead, so no header claims certainty.
    level = f"{100 * (1 - alpha):g}"
    if level == "100":
        return f"{name} (alpha = {alpha:g})"
    return f"{name} {level}%"


def format_report(summary: Mapping[str, Any], fmt: str) -> str:
    """Render a study summary.

    Parameters
    ----------
    summary : mapping
        As returned by `pmstudy.analysis.study_summary`.
    fmt : {"table", "csv", "json"}

    Returns
    -------
    str
    """
    if fmt == "json":
        # allow_nan=False: the summary holds None, never NaN, and JSON has no NaN.
        return json.dumps(json_rows(summary), indent=2, allow_nan=False) + "\n"
    if fmt == "csv":
        return _csv(summary)
    if fmt == "table":
        return _table(summary)
    raise SpecError("--format", fmt, f"one of {', '.join(FORMATS)}")


def json_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The JSON report: one object per cell, as `pmstudy report --format json` prints.

    Each cell's object holds its own keys (see `pmstudy.analysis.cell_rows`),
    then those of its (separation, scheme): ``p_inf``, ``p_inf_lo``,
    ``p_inf_hi``, ``p_inf_undecided`` and ``reach`` (see
    `pmstudy.analysis.transition_rows`). A list, as the report has always been,
    so that readers of the first nine keys keep working.
    """
    transitions = {(t["separation"], t["scheme"]): t for t in summary["transitions"]}
    rows = []
    for cell in summary["cells"]:
        transition = transitions[(cell["separation"], cell["scheme"])]
        keys = ("p_inf", "p_inf_lo", "p_inf_hi", "p_inf_undecided", "reach")
        extra = {k: transition[k] for k in keys}
        rows.append({**cell, **extra})
    return rows


def _structure_key(pattern: Mapping[str, Any]) -> str:
    return f"fails_merged{pattern['n_merged']}_split{pattern['n_split']}"


def _level_key(level: float) -> str:
    return f"m_reach_{level:g}"


def csv_columns(summary: Mapping[str, Any]) -> list[str]:
    """The CSV header: `CELL_COLUMNS` first, then the added columns."""
    cells = summary["cells"]
    structure = (
        [_structure_key(p) for p in cells[0]["fails_by_structure"]] if cells else []
    )
    levels = [_level_key(level) for level in summary["levels"]]
    return [
        *CELL_COLUMNS,
        "fails",
        *structure,
        *_ORIGIN,
        "p_inf",
        "p_inf_lo",
        "p_inf_hi",
        "p_inf_undecided",
        *(key for level in levels for key in (level, f"{level}_status")),
    ]


def _csv(summary: Mapping[str, Any]) -> str:
    columns = csv_columns(summary)
    transitions = {(t["separation"], t["scheme"]): t for t in summary["transitions"]}
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in summary["cells"]:
        flat = {key: row[key] for key in (*CELL_COLUMNS, "fails", *_ORIGIN)}
        for pattern in row["fails_by_structure"]:
            flat[_structure_key(pattern)] = pattern["count"]
        transition = transitions[(row["separation"], row["scheme"])]
        for key in ("p_inf", "p_inf_lo", "p_inf_hi", "p_inf_undecided"):
            flat[key] = transition[key]
        for reach in transition["reach"]:
            flat[_level_key(reach["level"])] = reach["m"]
            flat[f"{_level_key(reach['level'])}_status"] = reach["status"]
        writer.writerow({k: "" if v is None else v for k, v in flat.items()})
    return buffer.getvalue()


def _p_text(p: float | None, lo: float | None, hi: float | None) -> str:
    if p is None or lo is None or hi is None:
        return "no data"
    return f"{p:.3f} [{lo:.3f}, {hi:.3f}]"


def _cell_text(row: Mapping[str, Any]) -> str:
    text = _p_text(row["p"], row["lo"], row["hi"])
    if row["undecided"]:
        text += f" u={row['undecided']:.2f}"
    return text


def _m_text(m: float) -> str:
    return f"{m:,.0f}" if m >= 100 else f"{m:.3g}"


def _reach_text(reach: Mapping[str, Any]) -> str:
    status = reach["status"]
    if status == "interpolated":
        return f"m = {_m_text(reach['m'])}"
    if status == "already at smallest m":
        return f"already at m = {_m_text(reach['m'])}"
    if status == "not reached":
        # The largest m with data: in an unfinished store not the grid's last.
        return f"not reached by m = {_m_text(reach['largest_m'])}"
    return status


def _columns(
    lines: list[str], header: Sequence[str], body: list[list[str]], n_left: int
) -> None:
    """Append an aligned table: the first `n_left` columns flush left, the rest
    (counts) flush right."""
    widths = [max(len(r[c]) for r in [list(header), *body]) for c in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            f"{c:<{w}}" if i < n_left else f"{c:>{w}}"
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    lines.append(line(header))
    lines.extend(line(r) for r in body)


def _table(summary: Mapping[str, Any]) -> str:
    rows = summary["cells"]
    name = interval_name(summary["interval"], summary["alpha"])
    schemes = list(dict.fromkeys(row["scheme"] for row in rows))
    separations = list(dict.fromkeys(row["separation"] for row in rows))
    ms = list(dict.fromkeys(row["m"] for row in rows))
    by_key = {(row["separation"], row["m"], row["scheme"]): row for row in rows}
    width = max(30, *(len(s) + 2 for s in schemes))
    title = f"Study {summary['study']}: " if summary.get("study") else ""
    lines = [
        f"{title}P_m with {name} interval; u = fraction undecided "
        "(budget ran out; counted as not success)"
        + ("; P_inf is the population limit, m = inf" if "inf" in ms else "")
    ]
    for separation in separations:
        ns = {by_key[(separation, m, s)]["n"] for m in ms for s in schemes}
        n_text = f"n = {ns.pop()} per cell" if len(ns) == 1 else "n varies by cell"
        lines += ["", f"separation {separation}  ({n_text})"]
        lines.append(f"{'m':>8}  " + "".join(f"{s:<{width}}" for s in schemes).rstrip())
        for m in ms:
            cells = "".join(
                f"{_cell_text(by_key[(separation, m, s)]):<{width}}" for s in schemes
            )
            label = "P_inf" if m == "inf" else str(m)
            lines.append(f"{label:>8}  " + cells.rstrip())

    levels = summary["levels"]
    lines += [
        "",
        "Sample size at which P_m first reaches "
        + " and ".join(f"{level:g}" for level in levels)
        + " (linear in log m between the grid points around the first crossing)",
    ]
    header = ["separation", "scheme", "P_inf", *(f"P_m >= {lv:g}" for lv in levels)]
    body = [
        [
            str(t["separation"]),
            t["scheme"],
            "not in grid"
            if "inf" not in ms
            else _p_text(t["p_inf"], t["p_inf_lo"], t["p_inf_hi"])
            + (f" u={t['p_inf_undecided']:.2f}" if t["p_inf_undecided"] else ""),
            *(_reach_text(r) for r in t["reach"]),
        ]
        for t in summary["transitions"]
    ]
    _columns(lines, header, body, n_left=len(header))

    lines += ["", *_failure_section(summary)]
    return "\n".join(lines) + "\n"


def _failure_section(summary: Mapping[str, Any]) -> list[str]:
    rows = summary["cells"]
    patterns = rows[0]["fails_by_structure"] if rows else []
    lines = [
        "Failures by structure: NmKs = N true centers merged away (no estimate "
        "nearest), K split (two or more estimates nearest)"
    ]
    header = ["separation", "m", "scheme", "n", "fails"]
    header += [f"{p['n_merged']}m{p['n_split']}s" for p in patterns]
    if summary["has_population_reference"]:
        lines.append(
            "origin: landscape = population EM from the same initial centers fails "
            "too; finite-sample = population EM succeeds; pop-undecided = its "
            "budget ran out"
        )
        header += ["landscape", "finite-sample", "pop-undecided"]
    header += ["undecided"]
    body = []
    order = {s: i for i, s in enumerate(dict.fromkeys(r["scheme"] for r in rows))}
    for row in sorted(
        rows,
        key=lambda r: (r["separation"], _m_order(r["m"]), order[r["scheme"]]),
    ):
        cells = [str(row["separation"]), str(row["m"]), row["scheme"], str(row["n"])]
        if not row["n"]:
            body.append([*cells, *["-"] * (len(header) - 4)])
            continue
        cells.append(str(row["fails"]))
        cells += [str(p["count"]) for p in row["fails_by_structure"]]
        if summary["has_population_reference"]:
            cells += [str(row[key]) for key in _ORIGIN]
        cells.append(str(round(row["undecided"] * row["n"])))
        body.append(cells)
    _columns(lines, header, body, n_left=3)
    return lines


def _m_order(m: Any) -> float:
    return float("inf") if m == "inf" else float(m)
