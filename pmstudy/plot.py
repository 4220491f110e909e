"""Figures of a study store: P_m curves, phase diagrams, failure anatomy, centers.

Every figure is a `matplotlib.figure.Figure` drawn on an Agg canvas, never through
pyplot: the library keeps no global figure state and needs no display, so it
works the same on a laptop, in a notebook and on a headless cluster node.
Numbers come from `pmstudy.analysis`, so a figure shows exactly what the report
prints. Colours are the Okabe-Ito palette (distinguishable with the common
colour-vision deficiencies), and schemes also differ by marker, so that the
figures survive grey-scale printing; continuous values use cividis.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from pmstudy.analysis import cell_rows, failure_structure_counts
from pmstudy.errors import SpecError
from pmstudy.outcome import FAIL
from pmstudy.report import interval_name

logger = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "OKABE_ITO",
    "centers_figure",
    "default_figure_dir",
    "failure_origin_figure",
    "failure_structure_figure",
    "landscape_points",
    "phase_figure",
    "pm_figure",
    "write_figures",
]

FORMATS = ("png", "svg", "pdf")
# Okabe & Ito (2008), in the order schemes take them: the most distinct first.
OKABE_ITO = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",  # black
)
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_UNDECIDED = "#999999"
_COLS = 4  # panels per row before wrapping


def _figure(n_panels: int, *, panel: tuple[float, float]) -> tuple[Figure, list[Any]]:
    """A figure with `n_panels` axes in rows of at most `_COLS`, on an Agg canvas."""
    cols = min(n_panels, _COLS)
    rows = math.ceil(n_panels / cols)
    # Never so narrow that the title is cut; room below for the legend.
    width = max(7.5, panel[0] * cols + 0.5)
    fig = Figure(figsize=(width, panel[1] * rows + 0.9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, list(axes[:n_panels])


def _style(index: int) -> dict[str, Any]:
    return {
        "color": OKABE_ITO[index % len(OKABE_ITO)],
        "marker": _MARKERS[index % len(_MARKERS)],
    }


def _m_label(m: Any) -> str:
    return "\u221e" if m == "inf" else f"{m:g}"


def _title(ds: xr.Dataset, what: str) -> str:
    name = ds.attrs.get("study")
    return f"{name}: {what}" if name else what


def pm_figure(ds: xr.Dataset, *, method: str = "wilson", alpha: float = 0.05) -> Figure:
    """P_m against m (log axis), a panel per separation, a line per scheme.

    Bands are the interval at each m; P_inf, where the store has m = inf, is a
    dashed level in the scheme's colour with its interval as a faint band.

    Parameters
    ----------
    ds : xarray.Dataset
        An opened study store.
    method, alpha
        The interval, as in `pmstudy.analysis.interval`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    rows = cell_rows(ds, method=method, alpha=alpha)
    schemes = list(dict.fromkeys(r["scheme"] for r in rows))
    separations = list(dict.fromkeys(r["separation"] for r in rows))
    fig, axes = _figure(len(separations), panel=(4.2, 3.4))
    finite_ms = sorted({r["m"] for r in rows if r["m"] != "inf"})
    has_inf = any(r["m"] == "inf" for r in rows)
    # m = inf gets its own place at the right, one log-decade-ish past the grid,
    # behind a dotted break; the dashed level carries P_inf back across the plot.
    top = finite_ms[-1] if finite_ms else 1.0
    x_inf = top * 3.0
    for ax, separation in zip(axes, separations, strict=True):
        for index, scheme in enumerate(schemes):
            style = _style(index)
            cells = [
                r
                for r in rows
                if (r["separation"], r["scheme"]) == (separation, scheme)
            ]
            finite = sorted((r for r in cells if r["m"] != "inf"), key=lambda r: r["m"])
            # NaN where a cell has no data: the line breaks rather than lies.
            m = np.array([r["m"] for r in finite], dtype=float)
            p, lo, hi = (
                np.array([np.nan if r[key] is None else r[key] for r in finite])
                for key in ("p", "lo", "hi")
            )
            if m.size:
                ax.fill_between(m, lo, hi, color=style["color"], alpha=0.18, lw=0)
                ax.plot(m, p, label=scheme, lw=1.6, ms=5, **style)
            limit = next((r for r in cells if r["m"] == "inf"), None)
            if limit is not None and limit["n"]:
                ax.axhline(limit["p"], color=style["color"], ls="--", lw=1.1)
                # Schemes side by side at the inf place, so equal values stay visible.
                x = x_inf * 1.12 ** (index - (len(schemes) - 1) / 2)
                ax.errorbar(
                    x,
                    limit["p"],
                    yerr=[[limit["p"] - limit["lo"]], [limit["hi"] - limit["p"]]],
                    capsize=3,
                    ms=5,
                    **style,
                )
        if not any(r["n"] for r in rows if r["separation"] == separation):
            ax.text(0.5, 0.5, "no data yet", transform=ax.transAxes, ha="center")
        ax.set_xscale("log")
        ticks = [*finite_ms, *([x_inf] if has_inf else [])]
        ax.set_xticks(ticks, [f"{m:g}" for m in finite_ms] + ["\u221e"] * has_inf)
        ax.minorticks_off()
        if has_inf:
            ax.axvline(top * 1.7, color="0.5", ls=":", lw=1)
        ax.set_xlim(
            (finite_ms[0] if finite_ms else x_inf) / 1.4,
            (x_inf if has_inf else top) * 1.4,
        )
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"separation {separation:g} \u03c3")
        ax.set_xlabel("sample size m (log scale)")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("P_m: probability EM reaches the global max")
    handles, labels = axes[0].get_legend_handles_labels()
    if any(r["m"] == "inf" and r["n"] for r in rows):
        handles.append(Line2D([], [], color="0.3", ls="--"))
        labels.append("P_\u221e (m = \u221e)")
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=min(4, len(handles)),
        fontsize=8,
    )
    fig.suptitle(_title(ds, f"P_m with {interval_name(method, alpha)} interval bands"))
    return fig


def phase_figure(ds: xr.Dataset) -> Figure:
    """P_m over (m, separation) as a coloured grid, a panel per scheme.

    Columns are the m of the grid in order (m = inf last, as "\u221e"), rows the
    separations; each cell is labelled with its value when the grid is small.
    Cells without data are left blank (light grey).

    Returns
    -------
    matplotlib.figure.Figure
    """
    rows = cell_rows(ds)
    schemes = list(dict.fromkeys(r["scheme"] for r in rows))
    separations = sorted(dict.fromkeys(r["separation"] for r in rows))
    ms = sorted(
        dict.fromkeys(r["m"] for r in rows), key=lambda m: math.inf if m == "inf" else m
    )
    by_key = {(r["m"], r["separation"], r["scheme"]): r for r in rows}
    fig, axes = _figure(
        len(schemes), panel=(0.55 * len(ms) + 2.2, 0.45 * len(separations) + 1.8)
    )
    annotate = len(ms) * len(separations) <= 80
    image = None
    for ax, scheme in zip(axes, schemes, strict=True):
        grid = np.full((len(separations), len(ms)), np.nan)
        for j, separation in enumerate(separations):
            for i, m in enumerate(ms):
                p = by_key[(m, separation, scheme)]["p"]
                grid[j, i] = np.nan if p is None else p
        ax.set_facecolor("0.9")
        image = ax.pcolormesh(
            np.ma.masked_invalid(grid),
            cmap="cividis",
            vmin=0,
            vmax=1,
            edgecolors="white",
            lw=0.5,
        )
        if annotate:
            for (j, i), p in np.ndenumerate(grid):
                text = "n/a" if np.isnan(p) else f"{p:.2f}"
                # cividis is dark below ~0.6: write light on dark, dark on light.
                colour = "black" if np.isnan(p) or p > 0.6 else "white"
                ax.text(
                    i + 0.5,
                    j + 0.5,
                    text,
                    ha="center",
                    va="center",
                    fontsize=7,
                    color=colour,
                )
        ax.set_xticks(np.arange(len(ms)) + 0.5, [_m_label(m) for m in ms])
        ax.set_yticks(
            np.arange(len(separations)) + 0.5, [f"{s:g}" for s in separations]
        )
        ax.set_xlabel("sample size m")
        ax.set_ylabel("separation (\u03c3)")
        ax.set_title(scheme)
    assert image is not None
    fig.colorbar(image, ax=axes, label="P_m", shrink=0.9)
    fig.suptitle(_title(ds, "phase diagram of P_m"))
    return fig


def _pattern_label(merged: int, split: int) -> str:
    if merged == 0 and split == 0:
        return "one estimate per true center (wrong fixed point)"
    return f"{merged} merged + {split} split"


def _bar_grid(
    ds: xr.Dataset,
    layers: list[tuple[str, str, np.ndarray, str | None]],
    title: str,
) -> Figure:
    """Stacked bars of `layers` (label, colour, counts (m, sep, scheme), hatch),
    as fractions of each cell's replicates: rows separations, columns schemes."""
    n = ((ds["outcome"] >= 0).sum("replicate")).values
    ms = [_m_label("inf" if math.isinf(m) else m) for m in ds["m"].values]
    separations = ds["separation"].values
    schemes = [str(s) for s in ds["scheme"].values]
    order = np.argsort(ds["m"].values, kind="stable")
    with np.errstate(invalid="ignore", divide="ignore"):
        fractions = [np.where(n > 0, counts / n, 0.0) for _, _, counts, _ in layers]
    top = max(0.05, float(np.sum(fractions, axis=0).max()) * 1.1) if fractions else 1.0
    fig = Figure(
        figsize=(max(7.5, 2.6 * len(schemes) + 1.2), 2.2 * len(separations) + 1.2),
        layout="constrained",
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(separations), len(schemes), squeeze=False, sharey=True)
    x = np.arange(len(ms))
    for j, separation in enumerate(separations):
        for s, scheme in enumerate(schemes):
            ax = axes[j, s]
            bottom = np.zeros(len(ms))
            for (label, colour, _, hatch), fraction in zip(
                layers, fractions, strict=True
            ):
                height = fraction[order, j, s]
                ax.bar(
                    x,
                    height,
                    bottom=bottom,
                    color=colour,
                    hatch=hatch,
                    label=label,
                    edgecolor="white",
                    lw=0.4,
                )
                bottom += height
            for i, count in enumerate(n[order, j, s]):
                if count == 0:
                    ax.text(
                        i,
                        top * 0.02,
                        "no data",
                        rotation=90,
                        ha="center",
                        va="bottom",
                        fontsize=7,
                        color="0.4",
                    )
            ax.set_xticks(x, [ms[i] for i in order])
            ax.set_ylim(0, top)
            ax.grid(True, axis="y", alpha=0.3)
            if j == 0:
                ax.set_title(scheme)
            if j == len(separations) - 1:
                ax.set_xlabel("sample size m")
            if s == 0:
                ax.set_ylabel(f"sep. {separation:g} \u03c3\nfraction of replicates")
    handles = [
        Patch(facecolor=colour, hatch=hatch, edgecolor="white", label=label)
        for label, colour, _, hatch in layers
    ]
    if handles:
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncols=min(2, len(handles)),
            fontsize=8,
        )
    fig.suptitle(title)
    return fig


def failure_structure_figure(ds: xr.Dataset) -> Figure:
    """Failures by structure as stacked bars, with undecided runs on top.

    Each bar is one cell; its segments are the fractions of the cell's replicates
    that failed with each (merged, split) pattern, then the undecided fraction.
    What is left up to 1 is P_m.

    Returns
    -------
    matplotlib.figure.Figure
    """
    structure = failure_structure_counts(ds)
    layers = []
    for q in range(structure.sizes["structure"]):
        merged = int(structure["n_merged"].values[q])
        split = int(structure["n_split"].values[q])
        layers.append(
            (
                _pattern_label(merged, split),
                OKABE_ITO[q % len(OKABE_ITO)],
                structure.values[..., q],
                None,
            )
        )
    undecided = (ds["outcome"] == 2).sum("replicate").values
    layers.append(("undecided (budget ran out)", _UNDECIDED, undecided, "//"))
    return _bar_grid(
        ds, layers, _title(ds, "failures by structure (true centers merged / split)")
    )


def failure_origin_figure(ds: xr.Dataset) -> Figure | None:
    """Failures split by origin, where the store has ``population_success``.

    *Landscape*: population EM from the same initial centers fails too, so the
    start lies in the basin of a bad population fixed point. *Finite sample*:
    population EM from that start succeeds, so the finite sample made it fail.

    Returns
    -------
    matplotlib.figure.Figure or None
        None when the store has no population reference.
    """
    if "population_success" not in ds:
        return None
    fails = ds["outcome"] == FAIL
    population = ds["population_success"]
    layers = [
        (
            "landscape (population EM fails too)",
            OKABE_ITO[3],
            (fails & (population == 0)).sum("replicate").values,
            None,
        ),
        (
            "finite sample (population EM succeeds)",
            OKABE_ITO[5],
            (fails & (population == 1)).sum("replicate").values,
            None,
        ),
        (
            "population EM undecided",
            _UNDECIDED,
            (fails & (population == 2)).sum("replicate").values,
            "//",
        ),
    ]
    return _bar_grid(ds, layers, _title(ds, "origin of failures"))


def centers_figure(
    ds: xr.Dataset,
    *,
    critical_points: Sequence[np.ndarray] | None = None,
    max_runs: int = 60,
) -> Figure | None:
    """True centers and where failed runs ended, a panel per separation (d <= 2).

    The final centers of failed runs show the bad fixed points that EM reaches;
    at large m they approach the bad critical points of the population
    likelihood. In d = 1 each failed run is a row of k dots (runs grouped by m);
    in d = 2 all final centers are scattered. Schemes keep their colours.

    Parameters
    ----------
    ds : xarray.Dataset
        An opened study store.
    critical_points : sequence of ndarray of shape (n_points, k, d), optional
        Bad population critical points per separation (in the store's order),
        e.g. from a landscape census; drawn as open diamonds when given.
    max_runs : int
        At most this many failed runs per (m, separation, scheme) are drawn, the
        first by replicate index, so that large studies stay legible.

    Returns
    -------
    matplotlib.figure.Figure or None
        None when d > 2.
    """
    d = ds.sizes["axis"]
    if d > 2:
        return None
    separations = ds["separation"].values
    schemes = [str(s) for s in ds["scheme"].values]
    outcome = ds["outcome"].values
    final = ds["centers_final"]
    truth = ds["centers_true"].values
    order = np.argsort(ds["m"].values, kind="stable")
    fig, axes = _figure(len(separations), panel=(4.2, 4.0 if d == 2 else 3.6))
    for j, ax in enumerate(axes):
        ax.set_title(f"separation {separations[j]:g} \u03c3")
        row = 0
        ticks, tick_labels = [], []
        for i in order:
            start = row
            for s in range(len(schemes)):
                failed = np.flatnonzero(outcome[i, j, s] == FAIL)[:max_runs]
                if failed.size == 0:
                    continue
                points = final.isel(
                    m=i, separation=j, scheme=s, replicate=failed
                ).values
                style = _style(s)
                if d == 1:
                    ys = row + np.arange(failed.size)
                    ax.plot(
                        points[..., 0],
                        np.repeat(ys[:, None], points.shape[1], 1),
                        ls="none",
                        ms=3,
                        color=style["color"],
                        marker=style["marker"],
                    )
                    row += failed.size
                else:
                    ax.plot(
                        points[..., 0].ravel(),
                        points[..., 1].ravel(),
                        ls="none",
                        ms=3,
                        alpha=0.5,
                        color=style["color"],
                        marker=style["marker"],
                    )
            if d == 1 and row > start:
                ticks.append((start + row - 1) / 2)
                m = float(ds["m"].values[i])
                tick_labels.append(f"m={_m_label('inf' if math.isinf(m) else m)}")
                ax.axhline(row - 0.5, color="0.8", lw=0.6)
        if critical_points is not None and len(critical_points[j]):
            cp = np.asarray(critical_points[j])
            ys = np.full(cp.shape[:2], -1.5) if d == 1 else cp[..., 1]
            ax.plot(
                cp[..., 0].ravel(),
                ys.ravel(),
                ls="none",
                marker="D",
                mfc="none",
                mec="black",
                ms=8,
                label="bad critical points",
            )
        if d == 1:
            for x in truth[j, :, 0]:
                ax.axvline(x, color="black", lw=1.2)
            ax.set_yticks(ticks, tick_labels, fontsize=7)
            ax.set_ylabel("failed runs")
            ax.set_xlabel("center position (\u03c3 units)")
            if row == 0:
                ax.text(0.5, 0.5, "no failed runs", transform=ax.transAxes, ha="center")
            ax.invert_yaxis()
        else:
            ax.plot(
                truth[j, :, 0],
                truth[j, :, 1],
                ls="none",
                marker="*",
                ms=14,
                color="black",
                label="true centers",
            )
            ax.set_aspect("equal", adjustable="datalim")
            ax.set_xlabel("x\u2081 (\u03c3 units)")
            ax.set_ylabel("x\u2082 (\u03c3 units)")
    handles = [
        Line2D([], [], ls="none", ms=5, label=scheme, **_style(s))
        for s, scheme in enumerate(schemes)
    ]
    if d == 1:
        handles.append(Line2D([], [], color="black", lw=1.2, label="true centers"))
    else:
        handles.append(
            Line2D([], [], ls="none", marker="*", ms=10, color="black", label="truth")
        )
    what = "final centers of failed runs"
    if critical_points is not None:
        what += " and the landscape's bad critical points"
        handles.append(
            Line2D(
                [],
                [],
                ls="none",
                marker="D",
                mfc="none",
                mec="black",
                ms=7,
                label="bad critical point\n(population census)",
            )
        )
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncols=min(4, len(handles)),
        fontsize=8,
    )
    fig.suptitle(_title(ds, what))
    return fig


def landscape_points(ds: xr.Dataset, n_starts: int) -> list[np.ndarray]:
    """Bad critical points of the population likelihood, by a census per separation.

    From `n_starts` starts of each of the study's schemes, drawn as at m = inf
    (each on its own proxy sample, with the study's seeds, so they are the
    study's own m = inf starts where it has them), population EM runs to its
    end, and `pmstudy.landscape.census` polishes and classifies the end points.
    Every distinct point except the global maximum (and runs left undecided) is
    returned: the bad local maxima, and any saddle or degenerate point reached.

    Parameters
    ----------
    ds : xarray.Dataset
        An opened study store (its spec is read from the attributes).
    n_starts : int
        Starts per scheme and separation.

    Returns
    -------
    list of ndarray of shape (n_points, k, d)
        One array per separation, in the store's order.
    """
    from pmstudy import landscape
    from pmstudy.landscape_cli import census_inits
    from pmstudy.study import parse_spec

    study = parse_spec(ds.attrs["spec"])
    specs = [(s.label, s.name, s.params) for s in study.schemes]
    out = []
    for j, separation in enumerate(ds["separation"].values):
        centers_true = ds["centers_true"].values[j]
        inits = census_inits(
            centers_true,
            specs,
            n_inits=n_starts,
            seed=study.seed,
            separation=float(separation),
            proxy_size=study.proxy_size,
        )
        result = landscape.census(
            centers_true,
            inits,
            max_iter=study.population_max_iter,
            tol=study.population_tol,
        )
        bad = [
            point["centers"]
            for point in result["critical_points"]
            if point["kind"] != "global maximum"
        ]
        out.append(np.array(bad, dtype=np.float64).reshape(-1, study.k, study.d))
        logger.info(
            "census at separation %g: %d bad critical point(s) from %d starts",
            separation,
            len(bad),
            n_starts * len(specs),
        )
    return out


def default_figure_dir(store: str) -> str:
    """Where `pmstudy plot` writes by default: ``<store minus .zarr>-figures``."""
    base = store.rstrip("/")
    if base.endswith(".zarr"):
        base = base[: -len(".zarr")]
    if "://" in base:  # a remote store: write locally, in the working directory
        base = base.rsplit("/", 1)[-1]
    return f"{base}-figures"


def write_figures(
    ds: xr.Dataset,
    out_dir: str | os.PathLike[str],
    *,
    method: str = "wilson",
    alpha: float = 0.05,
    formats: Sequence[str] = ("png", "svg"),
    dpi: int = 150,
    census_starts: int | None = None,
) -> list[Path]:
    """Write every figure that applies to the store, in every format.

    Files are ``pm``, ``phase``, ``failure_structure``, ``failure_origin`` (with a
    population reference) and ``centers`` (d <= 2), each with each suffix.

    Parameters
    ----------
    census_starts : int, optional
        Starts per scheme of the landscape census whose bad critical points the
        centers figure shows (see `landscape_points`); 0 for none. By default 16
        when d = 1 (seconds) and 0 when d = 2, where a census takes minutes.

    Returns
    -------
    list of Path
        The files written.
    """
    for fmt in formats:
        if fmt not in FORMATS:
            raise SpecError("--formats", fmt, f"one of {', '.join(FORMATS)}")
    if census_starts is not None and census_starts < 0:
        raise SpecError("--census", census_starts, "an integer >= 0")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        # mkdir says the same for a file at `out` and for a file above it.
        raise SpecError(
            "-o", str(out_dir), "a directory path (a file is in the way)"
        ) from None
    ds = ds.load()
    d = ds.sizes["axis"]
    if census_starts is None:
        census_starts = 16 if d == 1 else 0
        if d == 2:
            logger.info("no landscape census in d = 2 unless asked (--census N)")
    critical = landscape_points(ds, census_starts) if census_starts and d <= 2 else None
    figures = {
        "pm": pm_figure(ds, method=method, alpha=alpha),
        "phase": phase_figure(ds),
        "failure_structure": failure_structure_figure(ds),
        "failure_origin": failure_origin_figure(ds),
        "centers": centers_figure(ds, critical_points=critical),
    }
    paths = []
    for name, fig in figures.items():
        if fig is None:
            continue
        for fmt in formats:
            path = out / f"{name}.{fmt}"
            # No date in the metadata, so that the same store gives the same file.
            metadata = {"Date": None} if fmt == "svg" else {}
            fig.savefig(path, format=fmt, dpi=dpi, metadata=metadata)
            paths.append(path)
            # The layout is settled by the first draw; keeping it saves the
            # constrained-layout solve (about 40% of a draw) for the next format.
            fig.set_layout_engine("none")
        logger.info("wrote %s.{%s} in %s", name, ",".join(formats), out)
    return paths
