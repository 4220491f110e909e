"""Formatting of per-cell P_m rows as a table, CSV or JSON.

The table puts schemes side by side, one block per separation and one line per m,
so that how P_m moves with m, and how the schemes differ, shows at a glance.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

__all__ = ["FORMATS", "format_rows"]

FORMATS = ("table", "csv", "json")
_COLUMNS = ("m", "separation", "scheme", "n", "successes", "p", "lo", "hi", "undecided")


def format_rows(
    rows: Sequence[dict[str, Any]], fmt: str, *, interval_name: str = "Wilson 95%"
) -> str:
    """Render report rows (see `pmstudy.analysis.cell_rows`).

    Parameters
    ----------
    rows : sequence of dict
    fmt : {"table", "csv", "json"}
    interval_name : str
        How the table's header names the interval.

    Returns
    -------
    str
    """
    if fmt == "json":
        return json.dumps(list(rows), indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {key: "" if row[key] is None else row[key] for key in _COLUMNS}
            )
        return buffer.getvalue()
    if fmt == "table":
        return _table(rows, interval_name)
    raise ValueError(f"format should be one of {FORMATS}, but got {fmt!r}")


def _cell(row: dict[str, Any]) -> str:
    if not row["n"]:
        return "no data"
    text = f"{row['p']:.3f} [{row['lo']:.3f}, {row['hi']:.3f}]"
    if row["undecided"]:
        text += f" u={row['undecided']:.2f}"
    return text


def _table(rows: Sequence[dict[str, Any]], interval_name: str) -> str:
    schemes = list(dict.fromkeys(row["scheme"] for row in rows))
    separations = list(dict.fromkeys(row["separation"] for row in rows))
    ms = list(dict.fromkeys(row["m"] for row in rows))
    by_key = {(row["separation"], row["m"], row["scheme"]): row for row in rows}
    width = max(30, *(len(s) + 2 for s in schemes))
    lines = [
        f"P_m with {interval_name} interval; u = fraction undecided "
        "(budget ran out; counted as not success)"
    ]
    for separation in separations:
        ns = {by_key[(separation, m, s)]["n"] for m in ms for s in schemes}
        n_text = f"n = {ns.pop()} per cell" if len(ns) == 1 else "n varies by cell"
        lines.append("")
        lines.append(f"separation {separation}  ({n_text})")
        lines.append(f"{'m':>8}  " + "".join(f"{s:<{width}}" for s in schemes).rstrip())
        for m in ms:
            cells = "".join(
                f"{_cell(by_key[(separation, m, s)]):<{width}}" for s in schemes
            )
            lines.append(f"{m!s:>8}  " + cells.rstrip())
    return "\n".join(lines) + "\n"
