"""How much of a study its store holds: per cell, per block and overall.

The store carries its own spec, so the status needs nothing but the store. A
block counts as done by the same rule that resuming uses
(`pmstudy.store.block_states`): every chunk decodes and is free of fill values. A
block partly written (by a client killed mid-write, or a chunk lost since) counts
as not done; a rerun recomputes it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from pmstudy.errors import SpecError
from pmstudy.store import BlockState, block_states, open_store
from pmstudy.study import Study, parse_spec

__all__ = ["CellStatus", "StudyStatus", "format_status", "study_status"]


@dataclass(frozen=True)
class CellStatus:
    """Replicates done in one cell (m, separation, scheme)."""

    m: float
    separation: float
    scheme: str
    done: int
    total: int

    @property
    def fraction(self) -> float:
        """Fraction of the cell's replicates done."""
        return self.done / self.total


@dataclass(frozen=True)
class StudyStatus:
    """Progress of one study's store.

    Attributes
    ----------
    store, study, spec_sha256 : str
    cells : tuple of CellStatus
        In grid order: m, then separation, then scheme.
    blocks_done, blocks_partial, blocks_missing : int
        Blocks whole; partly written (to be recomputed); not started.
    """

    store: str
    study: str
    spec_sha256: str
    cells: tuple[CellStatus, ...]
    blocks_done: int
    blocks_partial: int
    blocks_missing: int

    @property
    def done(self) -> int:
        """EM runs of the schemes done, over all cells."""
        return sum(cell.done for cell in self.cells)

    @property
    def total(self) -> int:
        """EM runs of the schemes in the study (the oracle's not counted)."""
        return sum(cell.total for cell in self.cells)

    @property
    def fraction(self) -> float:
        """Fraction of the study done."""
        return self.done / self.total

    @property
    def blocks_total(self) -> int:
        """Blocks (tasks) in the study."""
        return self.blocks_done + self.blocks_partial + self.blocks_missing


def _stored_study(path: str) -> tuple[Study, str]:
    with open_store(path) as ds:
        text = ds.attrs.get("spec")
        name = ds.attrs.get("study", "study")
        digest = ds.attrs["spec_sha256"]
    if not isinstance(text, str):
        raise SpecError("store", path, "a store whose attributes hold its spec")
    # A spec without a `name` took its file's name; the store kept that name.
    study = parse_spec(text, default_name=name)
    if study.digest() != digest:
        # The spec no longer normalizes as it did when the store was made (a newer
        # pmstudy with other defaults): its grid may not be the store's.
        raise SpecError(
            "store",
            path,
            f"a store made by a pmstudy that reads its spec the same way (hash "
            f"{digest[:12]} in the store, {study.digest()[:12]} now)",
        )
    return study, digest


def study_status(path: str) -> StudyStatus:
    """Read the progress of the study stored at `path`.

    Parameters
    ----------
    path : str
        A local path or an fsspec URL.

    Returns
    -------
    StudyStatus

    Raises
    ------
    SpecError
        If `path` holds no pmstudy store.
    """
    study, digest = _stored_study(path)
    states = block_states(study, path)
    done_per_pair: dict[tuple[int, int], int] = {}
    for task, state in states.items():
        pair = (task.m_index, task.separation_index)
        done = len(task.replicates) if state is BlockState.DONE else 0
        done_per_pair[pair] = done_per_pair.get(pair, 0) + done
    # One task runs every scheme on the same data sets, so a block is done for all
    # of its cells at once.
    cells = tuple(
        CellStatus(m, separation, label, done_per_pair[(i, j)], study.replicates)
        for i, m in enumerate(study.ms)
        for j, separation in enumerate(study.separations)
        for label in study.scheme_labels
    )
    counts = {state: 0 for state in BlockState}
    for state in states.values():
        counts[state] += 1
    return StudyStatus(
        store=path,
        study=study.name,
        spec_sha256=digest,
        cells=cells,
        blocks_done=counts[BlockState.DONE],
        blocks_partial=counts[BlockState.PARTIAL],
        blocks_missing=counts[BlockState.MISSING],
    )


def _m_label(m: float) -> str:
    return "inf" if math.isinf(m) else f"{m:g}"


def format_status(status: StudyStatus, fmt: str = "table") -> str:
    """Render a status as a text table or JSON.

    Parameters
    ----------
    status : StudyStatus
    fmt : {"table", "json"}
        JSON is one object with the keys ``store``, ``study``, ``spec_sha256``,
        ``done``, ``total``, ``fraction``, ``blocks`` (``done``, ``partial``,
        ``missing``, ``total``) and ``cells``, a list of objects with ``m`` (the
        string ``"inf"`` for the population limit), ``separation``, ``scheme``,
        ``done``, ``total``, ``fraction``.

    Returns
    -------
    str
        Ending with a newline.
    """
    if fmt == "json":
        out = {
            "store": status.store,
            "study": status.study,
            "spec_sha256": status.spec_sha256,
            "done": status.done,
            "total": status.total,
            "fraction": status.fraction,
            "blocks": {
                "done": status.blocks_done,
                "partial": status.blocks_partial,
                "missing": status.blocks_missing,
                "total": status.blocks_total,
            },
            "cells": [
                {
                    "m": "inf" if math.isinf(cell.m) else cell.m,
                    "separation": cell.separation,
                    "scheme": cell.scheme,
                    "done": cell.done,
                    "total": cell.total,
                    "fraction": cell.fraction,
                }
                for cell in status.cells
            ],
        }
        return json.dumps(out, indent=2) + "\n"
    if fmt != "table":
        raise SpecError("--format", fmt, "one of ['table', 'json']")

    header = ("m", "separation", "scheme", "done", "of", "percent")
    rows = [
        (
            _m_label(cell.m),
            f"{cell.separation:g}",
            cell.scheme,
            str(cell.done),
            str(cell.total),
            f"{100 * cell.fraction:.1f}",
        )
        for cell in status.cells
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"study {status.study} in {status.store}"]
    for row in [header, *rows]:
        cols = [
            text.ljust(width) if i == 2 else text.rjust(width)
            for i, (text, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cols).rstrip())
    lines.append(
        f"overall: {status.done} of {status.total} runs ({100 * status.fraction:.1f}%)"
        f"; blocks: {status.blocks_done} done, {status.blocks_partial} partly "
        f"written, {status.blocks_missing} not started, of {status.blocks_total}"
    )
    return "\n".join(lines) + "\n"
