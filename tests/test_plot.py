"""Figures: written headless, real images, and drawing the store's own numbers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image
from matplotlib.collections import QuadMesh

from pmstudy import plot
from pmstudy.cli import main
from pmstudy.errors import SpecError
from tests.test_analysis import load, shared_store, synthetic_store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> str:
    return shared_store(tmp_path_factory)


@pytest.fixture(scope="module")
def ds(store_path):
    return load(store_path)


def _p_direct(ds):
    """P_m per cell by a plain count: array (m, separation, scheme), NaN if empty."""
    outcome = ds["outcome"].values
    n = (outcome >= 0).sum(axis=-1)
    with np.errstate(invalid="ignore"):
        return np.where(n > 0, (outcome == 1).sum(axis=-1) / n, np.nan)


def assert_real_png(path: Path) -> None:
    """A PNG that decodes, is of a useful size and is not blank."""
    pixels = image.imread(path)
    height, width = pixels.shape[:2]
    assert height >= 300 and width >= 400, (path, pixels.shape)
    rgb = pixels[..., :3].reshape(-1, 3)
    assert rgb.std() > 0.05, path  # not a flat image
    # Text, lines, bands and bars make many distinct colours.
    assert len(np.unique((rgb * 255).astype(np.uint8), axis=0)) > 30, path


def assert_real_svg(path: Path) -> None:
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg") and path.stat().st_size > 10_000
    assert len(root.findall(".//{http://www.w3.org/2000/svg}path")) > 20


_SCRIPT = textwrap.dedent(
    """
    import sys
    from pmstudy.cli import main
    argv = ["-q", "plot", *sys.argv[1:4], "--census", "0", "--formats", *sys.argv[4:]]
    status = main(argv)
    # The library draws on Agg canvases: pyplot (and its backend choice) is
    # never imported, so no display is ever looked for.
    print("pyplot" if "matplotlib.pyplot" in sys.modules else "no pyplot")
    sys.exit(status)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("display", [None, ":99"])
def test_figures_are_written_headless(store_path, tmp_path, display):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND")}
    if display is not None:
        # A display that does not exist, and an interactive backend that would
        # need it: neither may matter.
        env["DISPLAY"] = display
        env["MPLBACKEND"] = "TkAgg"
    out = tmp_path / "figures"
    # Every figure in both formats once; with the bogus display PNG suffices.
    formats = ("png", "svg") if display is None else ("png",)
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, store_path, "-o", str(out), *formats],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "no pyplot"
    names = ["pm", "phase", "failure_structure", "failure_origin", "centers"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n}.{s}" for n in names for s in formats
    )
    for name in names:
        assert_real_png(out / f"{name}.png")
        if "svg" in formats:
            assert_real_svg(out / f"{name}.svg")


def test_pm_figure_draws_the_store_numbers(ds):
    fig = plot.pm_figure(ds)
    p = _p_direct(ds)
    ms = ds["m"].values
    finite = np.isfinite(ms)
    schemes = [str(s) for s in ds["scheme"].values]
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in axes] == [
        "separation 1.5 \u03c3",
        "separation 3 \u03c3",
    ]
    assert axes[0].get_xscale() == "log"
    assert "\u221e" in [t.get_text() for t in axes[0].get_xticklabels()]
    for j, ax in enumerate(axes):
        lines = {line.get_label(): line for line in ax.get_lines()}
        for s, scheme in enumerate(schemes):
            line = lines[scheme]
            np.testing.assert_array_equal(line.get_xdata(), ms[finite])
            # Exactly the counted fractions; NaN (a gap) where a cell has no data.
            np.testing.assert_array_equal(line.get_ydata(), p[finite, j, s])
        # P_inf: one dashed level per scheme at the counted value.
        levels = sorted(
            line.get_ydata()[0]
            for line in ax.get_lines()
            if line.get_linestyle() == "--" and len(line.get_ydata())
        )
        np.testing.assert_allclose(levels, sorted(p[~finite, j, :].ravel()), rtol=0)


def test_phase_figure_colours_are_the_store_numbers(ds):
    fig = plot.phase_figure(ds)
    p = _p_direct(ds)
    schemes = [str(s) for s in ds["scheme"].values]
    panels = [ax for ax in fig.axes if ax.get_title() in schemes]  # not the colorbar
    assert [ax.get_title() for ax in panels] == schemes
    meshes = [c for ax in panels for c in ax.collections if isinstance(c, QuadMesh)]
    assert len(meshes) == ds.sizes["scheme"]
    order = np.argsort(ds["separation"].values)
    for s, mesh in enumerate(meshes):
        # Rows are separations (ascending), columns m in grid order (inf last).
        expected = p[:, order, s].T
        drawn = np.ma.filled(mesh.get_array().reshape(expected.shape), np.nan)
        np.testing.assert_array_equal(drawn, expected)


def test_failure_bars_are_the_counted_fractions(ds):
    fig = plot.failure_structure_figure(ds)
    outcome, merged = ds["outcome"].values, ds["n_merged"].values
    n = (outcome >= 0).sum(axis=-1)
    axes = np.array(fig.axes[: ds.sizes["separation"] * ds.sizes["scheme"]]).reshape(
        ds.sizes["separation"], ds.sizes["scheme"]
    )
    for j in range(ds.sizes["separation"]):
        for s in range(ds.sizes["scheme"]):
            bars = axes[j, s].patches
            heights = np.array([b.get_height() for b in bars]).reshape(
                -1, ds.sizes["m"]
            )
            # The stack's total is fails + undecided over n, by a direct count.
            with np.errstate(invalid="ignore"):
                expected = np.where(
                    n[:, j, s] > 0,
                    ((outcome[:, j, s] == 0) | (outcome[:, j, s] == 2)).sum(-1)
                    / n[:, j, s],
                    0.0,
                )
            np.testing.assert_allclose(heights.sum(axis=0), expected, atol=1e-15)
            # The first layer is the (0 merged, 0 split) pattern.
            first = ((outcome[:, j, s] == 0) & (merged[:, j, s] == 0)).sum(-1)
            with np.errstate(invalid="ignore"):
                np.testing.assert_allclose(
                    heights[0], np.where(n[:, j, s] > 0, first / n[:, j, s], 0.0)
                )


def test_failure_origin_only_with_a_population_reference(tmp_path_factory, ds):
    fig = plot.failure_origin_figure(ds)
    assert fig is not None and "origin" in fig.get_suptitle()
    plain = load(shared_store(tmp_path_factory, ms="[20, 60]", same_init=False))
    assert plot.failure_origin_figure(plain) is None


def test_centers_figure_in_two_dimensions_and_none_above(tmp_path):
    two = load(synthetic_store(str(tmp_path / "d2.zarr"), d=2, ms="[20, 60]"))
    fig = plot.centers_figure(two)
    assert fig is not None
    ax = fig.axes[0]
    stars = [line for line in ax.get_lines() if line.get_marker() == "*"]
    np.testing.assert_array_equal(stars[0].get_xdata(), two["centers_true"][0, :, 0])
    fails = int((two["outcome"].isel(separation=0) == 0).sum())
    drawn = sum(len(line.get_xdata()) for line in ax.get_lines() if line not in stars)
    assert drawn == 3 * fails  # k centers per failed run
    three = load(synthetic_store(str(tmp_path / "d3.zarr"), d=3, ms="[20]"))
    assert plot.centers_figure(three) is None
    paths = plot.write_figures(three, tmp_path / "f3", formats=("png",))
    assert {p.stem for p in paths} == {
        "pm",
        "phase",
        "failure_structure",
        "failure_origin",
    }


def test_centers_figure_draws_given_critical_points(ds):
    points = [np.array([[[0.5], [6.0], [6.0]]]), np.zeros((0, 3, 1))]
    fig = plot.centers_figure(ds, critical_points=points)
    diamonds = [line for line in fig.axes[0].get_lines() if line.get_marker() == "D"]
    np.testing.assert_array_equal(diamonds[0].get_xdata(), [0.5, 6.0, 6.0])
    assert "critical points" in fig.get_suptitle()


def test_empty_store_draws_without_crashing(tmp_path):
    from pmstudy.store import create_store
    from pmstudy.study import parse_spec
    from tests.conftest import TINY_SPEC

    path = str(tmp_path / "empty.zarr")
    create_store(parse_spec(TINY_SPEC), path)
    empty = load(path)
    figures = [
        plot.pm_figure(empty),
        plot.phase_figure(empty),
        plot.failure_structure_figure(empty),
        plot.centers_figure(empty),
    ]
    assert plot.failure_origin_figure(empty) is None
    texts = [t.get_text() for t in figures[0].axes[0].texts]
    assert "no data yet" in texts
    figures[0].savefig(tmp_path / "pm.png")
    assert_real_png(tmp_path / "pm.png")


def test_bad_options(store_path, tmp_path, capsys, ds):
    with pytest.raises(SpecError, match="^--formats"):
        plot.write_figures(ds, tmp_path, formats=("gif",))
    with pytest.raises(SpecError, match="^--census"):
        plot.write_figures(ds, tmp_path, census_starts=-1)
    assert main(["plot", store_path, "--alpha", "2", "-o", str(tmp_path)]) == 2
    assert "--alpha: should be" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_default_figure_dir():
    assert plot.default_figure_dir("data/runs/q.zarr") == "data/runs/q-figures"
    assert plot.default_figure_dir("data/runs/q.zarr/") == "data/runs/q-figures"
    assert plot.default_figure_dir("s3://bucket/x/q.zarr") == "q-figures"
    assert plot.default_figure_dir("store") == "store-figures"


def test_landscape_points_are_bad_critical_points(ds):
    from pmstudy.population import population_gradient, population_loglik

    points = plot.landscape_points(ds, 2)
    assert len(points) == ds.sizes["separation"]
    assert sum(len(p) for p in points) >= 1
    for j, found in enumerate(points):
        truth = ds["centers_true"].values[j]
        assert found.shape[1:] == truth.shape
        if not len(found):
            continue
        # Checked independently of the census: the gradient of the population
        # log-likelihood vanishes there (Newton-polished to ~1e-10), and the
        # point is worse than the truth.
        gradient, _ = population_gradient(truth, found)
        assert np.abs(gradient).max() < 1e-6
        gap = (
            population_loglik(truth, truth[None])[0]
            - population_loglik(truth, found)[0]
        )
        assert np.all(gap > 1e-6)
    fig = plot.centers_figure(ds, critical_points=points)
    assert "critical points" in fig.get_suptitle()


def test_an_output_path_that_is_a_file_is_one_line(store_path, tmp_path, capsys):
    taken = tmp_path / "figures.png"
    taken.write_text("not a directory")
    assert main(["plot", store_path, "-o", str(taken)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pmstudy: error: -o: should be a directory path")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert taken.read_text() == "not a directory"
    # A file above the directory is caught the same way.
    assert main(["plot", store_path, "-o", str(taken / "sub")]) == 2
    assert "-o: should be a directory path" in capsys.readouterr().err
