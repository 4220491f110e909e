"""`pmstudy status`: the fraction done per cell and overall, against bookkeeping of
which blocks were written, and with a damaged block counted as not done."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pmstudy.cli import main
from pmstudy.status import format_status, study_status
from pmstudy.store import StoreWriter, create_store
from pmstudy.study import load_spec
from tests.test_store import chunk_file, fake_block

SPEC = """
seed = 9
k = 3
d = 2
replicates = 7
block = 3
schemes = ["forgy", {name = "forgy", label = "forgy-b"}, "uniform-box"]

[layout]
name = "simplex"

[grid]
separation = [1.5, 3.0]
m = [30, "inf"]
"""


@pytest.fixture(scope="module")
def partial_store(tmp_path_factory):
    """Some blocks written, one of them then damaged; the spec has no `name`."""
    root = tmp_path_factory.mktemp("status")
    spec = root / "unnamed.toml"
    spec.write_text(SPEC)
    study = load_spec(spec)
    path = str(root / "partial.zarr")
    create_store(study, path)
    tasks = list(study.tasks())
    # Blocks are replicates 0-2, 3-5 and 6 (a short last block).
    written = [tasks[0], tasks[1], tasks[2], tasks[5], tasks[8], tasks[9]]
    with StoreWriter(study, path) as writer:
        for task in written:
            writer.write(task, fake_block(study, task))
    damaged = tasks[9]
    chunk_file(path, "centers_init", study, damaged).write_bytes(b"\0" * 7)
    whole = [task for task in written if task != damaged]
    return study, path, whole, damaged


def _expected(study, whole):
    """Replicates done per (m, separation), from the list of whole blocks."""
    done = {}
    for task in whole:
        key = (task.m, task.separation)
        done[key] = done.get(key, 0) + len(task.replicates)
    return done


def test_status_counts_whole_blocks_only(partial_store):
    study, path, whole, _ = partial_store
    status = study_status(path)
    done = _expected(study, whole)

    assert status.study == "unnamed"
    assert len(status.cells) == len(study.ms) * len(study.separations) * 3
    for cell in status.cells:
        assert cell.total == study.replicates
        assert cell.done == done.get((cell.m, cell.separation), 0)
    assert status.total == len(status.cells) * study.replicates
    assert status.done == 3 * sum(done.values())
    assert status.fraction == pytest.approx(status.done / status.total, abs=0)
    assert (status.blocks_done, status.blocks_partial) == (len(whole), 1)
    assert status.blocks_total == len(list(study.tasks()))
    assert status.blocks_missing == status.blocks_total - len(whole) - 1


def test_status_json_from_the_command_line(partial_store, capsys):
    study, path, whole, _ = partial_store
    assert main(["status", path, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    status = study_status(path)
    assert report["done"] == status.done and report["total"] == status.total
    assert report["fraction"] == pytest.approx(status.fraction, abs=0)
    assert report["blocks"] == {
        "done": status.blocks_done,
        "partial": status.blocks_partial,
        "missing": status.blocks_missing,
        "total": status.blocks_total,
    }
    done = _expected(study, whole)
    for row in report["cells"]:
        m = math.inf if row["m"] == "inf" else row["m"]
        assert row["done"] == done.get((m, row["separation"]), 0)
        assert row["fraction"] == pytest.approx(row["done"] / row["total"], abs=0)
    assert {row["scheme"] for row in report["cells"]} == set(study.scheme_labels)
    assert "inf" in {row["m"] for row in report["cells"]}


def test_status_table(partial_store, capsys):
    _, path, _, _ = partial_store
    assert main(["status", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    status = study_status(path)
    assert lines[1].split() == ["m", "separation", "scheme", "done", "of", "percent"]
    assert len(lines) == 2 + len(status.cells) + 1
    first = status.cells[0]
    assert lines[2].split() == [
        "30",
        "1.5",
        "forgy",
        str(first.done),
        "7",
        f"{100 * first.fraction:.1f}",
    ]
    assert lines[-1].startswith(f"overall: {status.done} of {status.total} runs")
    assert "1 partly written" in lines[-1]
    assert format_status(status) == "\n".join(lines) + "\n"


def test_status_of_a_missing_store(tmp_path, capsys):
    assert main(["status", str(tmp_path / "absent.zarr")]) == 2
    assert capsys.readouterr().err.startswith("pmstudy: error: store")


def test_status_of_an_empty_and_a_finished_store(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text('name = "s"\n' + SPEC.replace("replicates = 7", "replicates = 3"))
    study = load_spec(spec)
    path = str(Path(tmp_path) / "s.zarr")
    create_store(study, path)
    status = study_status(path)
    assert status.done == 0 and status.fraction == 0
    assert status.blocks_missing == status.blocks_total
    with StoreWriter(study, path) as writer:
        for task in study.tasks():
            writer.write(task, fake_block(study, task))
    status = study_status(path)
    assert status.fraction == 1 and status.blocks_done == status.blocks_total
