"""The notebooks: stored without outputs, and they run (on tiny settings).

Each notebook has one cell tagged ``parameters``; the test inserts a cell after it
with small settings and a working directory of its own, as papermill would.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

TINY = {
    "01_tiny_study_local_cluster.ipynb": (
        "REPLICATES = 6\nBLOCK = 3\nMS = [20, 60]\nSEPARATIONS = [1.5, 3.0]\n"
        'WORKERS = 1\nFIGURE_FORMATS = ["png"]\n',
        4,  # figures shown
    ),
    "02_counterexample_close_pair.ipynb": (
        "SEPARATION = 2.0\nN_STARTS = 4\nREPLICATES = 6\nMS = [30, 300]\n",
        3,
    ),
    "03_compare_schemes.ipynb": (
        'SCHEMES = ["forgy", "kmeans++", "uniform-box"]\nREPLICATES = 10\n'
        "MS = [20, 60]\nSEPARATIONS = [1.0, 4.0]\n",
        4,
    ),
}


def test_every_notebook_is_listed_here():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(TINY)


@pytest.mark.parametrize("name", sorted(TINY))
def test_stored_without_outputs_and_with_a_parameters_cell(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    # Every name the test overrides is a parameter of the notebook.
    for line in TINY[name][0].splitlines():
        assert line.split(" = ")[0] in tagged[0].source


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
def test_notebook_runs(name, tmp_path):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    settings, n_figures = TINY[name]
    index = next(
        i
        for i, cell in enumerate(nb.cells)
        if "parameters" in cell.metadata.get("tags", [])
    )
    nb.cells.insert(
        index + 1,
        nbformat.v4.new_code_cell(settings + f"WORKDIR = {str(tmp_path)!r}\n"),
    )
    # Raises CellExecutionError, with the cell and its traceback, on any error.
    NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    outputs = [out for cell in nb.cells for out in cell.get("outputs", [])]
    assert not [out for out in outputs if out.output_type == "error"]
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) == n_figures
    # It worked where it was told to, not in a temporary directory of its own.
    assert any(path.suffix == ".zarr" for path in tmp_path.iterdir())
