"""The main job end to end: run, store, resume, report, and the CLI's errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from pmstudy.cli import main
from pmstudy.run import run_block, run_study
from pmstudy.store import open_store
from pmstudy.study import load_spec


def _open(path):
    return xr.open_zarr(path, consolidated=False, mask_and_scale=False).load()


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The tiny study run on one worker and on two."""
    from tests.conftest import TINY_SPEC

    root = tmp_path_factory.mktemp("runs")
    spec = root / "tiny.toml"
    spec.write_text(TINY_SPEC)
    study = load_spec(spec)
    stores = {}
    for workers in (1, 2):
        stores[workers] = str(root / f"w{workers}.zarr")
        run_study(study, stores[workers], workers=workers)
    return study, stores


@pytest.mark.slow
def test_one_and_two_workers_give_identical_stores(two_runs):
    _, stores = two_runs
    a, b = _open(stores[1]), _open(stores[2])
    assert set(a.data_vars) == set(b.data_vars)
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    assert a.attrs == b.attrs


@pytest.mark.slow
def test_store_is_complete_and_finite(two_runs):
    study, stores = two_runs
    ds = _open(stores[1])
    assert (ds.outcome >= 0).all() and (ds.outcome <= 2).all()
    for name, var in ds.data_vars.items():
        if np.issubdtype(var.dtype, np.floating):
            assert np.isfinite(var.values).all(), name
        else:
            assert (var.values >= 0).all(), name
    assert ds.attrs["spec_sha256"] == study.digest()
    assert "numpy" in json.loads(ds.attrs["versions"])
    # the oracle starts at the truth; its center error is small at these m
    np.testing.assert_array_equal(ds.centers_init.isel(scheme=0).shape[-2:], (3, 1))


@pytest.mark.slow
def test_a_block_recomputed_in_process_equals_the_stored_one(two_runs):
    study, stores = two_runs
    ds = _open(stores[2])
    task = list(study.tasks())[5]
    block = run_block(study, task)
    region = {"m": task.m_index, "separation": task.separation_index}
    reps = slice(task.start, task.stop)
    for name, value in block.items():
        stored = ds[name].isel(region).isel(replicate=reps).values
        np.testing.assert_array_equal(stored, value, err_msg=name)


@pytest.mark.slow
def test_report_json_equals_direct_computation(two_runs, capsys):
    _, stores = two_runs
    assert main(["report", stores[1], "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    ds = _open(stores[1])
    assert len(rows) == ds.sizes["m"] * ds.sizes["separation"] * ds.sizes["scheme"]
    for row in rows:
        outcome = ds.outcome.sel(
            m=row["m"], separation=row["separation"], scheme=row["scheme"]
        )
        assert row["n"] == outcome.size
        assert row["successes"] == int((outcome == 1).sum())
        assert row["p"] == pytest.approx(float((outcome == 1).mean()), abs=0)
        assert row["undecided"] == pytest.approx(float((outcome == 2).mean()), abs=0)
        assert 0 <= row["lo"] <= row["p"] <= row["hi"] <= 1
        assert set(row) >= {
            "m",
            "separation",
            "scheme",
            "n",
            "successes",
            "p",
            "lo",
            "hi",
            "undecided",
        }


@pytest.mark.slow
def test_table_and_csv_reports(two_runs, capsys):
    _, stores = two_runs
    assert main(["report", stores[1]]) == 0
    table = capsys.readouterr().out
    assert "separation 1.5" in table and "kmeans++" in table
    assert main(["report", stores[1], "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("m,separation,scheme,n,successes,p,lo,hi,undecided,")
    assert len(lines) == 1 + 2 * 2 * 3


@pytest.mark.slow
def test_rerun_resumes_and_a_changed_spec_is_refused(two_runs, tmp_path, capsys):
    study, stores = two_runs
    summary = run_study(study, stores[1], workers=1)
    assert summary.tasks_run == 0 and summary.tasks_skipped == len(list(study.tasks()))
    changed = tmp_path / "changed.toml"
    changed.write_text(study.text.replace("seed = 7", "seed = 8"))
    assert main(["run", str(changed), "--store", stores[1]]) == 2
    assert "seed: store has 7, spec has 8" in capsys.readouterr().err


BAD = [
    ("m = [20, 60]", "m = [3, 60]", "grid.m"),
    ('"uniform-box"]', '"bogus"]', "schemes"),
    ('name = "points"\ncenters = [[0.0], [1.0], [4.0]]', 'name = "simplex"', "layout"),
    ("separation = [1.5, 3.0]", "separation = [0]", "grid.separation"),
    ("replicates = 12", "replicates = 0", "replicates"),
    ("k = 3\n", "", "k"),
    ("d = 1", 'd = "one"', "d"),
    ('name = "points"', 'name = "cube"', "layout.name"),
]


@pytest.mark.parametrize(("old", "new", "field"), BAD)
def test_cli_spec_errors_exit_2_and_create_nothing(tmp_path, capsys, old, new, field):
    from tests.conftest import TINY_SPEC

    store = tmp_path / "never.zarr"
    spec = tmp_path / "bad.toml"
    assert old in TINY_SPEC
    spec.write_text(f'store = "{store}"\n' + TINY_SPEC.replace(old, new))
    assert main(["run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pmstudy: error: {field}") and "should be" in err
    assert not store.exists()


def test_report_on_a_missing_store(tmp_path, capsys):
    assert main(["report", str(tmp_path / "absent.zarr")]) == 2
    assert "store" in capsys.readouterr().err
    with pytest.raises(Exception, match="store"):
        open_store(str(tmp_path / "absent.zarr"))


def test_a_store_path_that_is_a_file_is_refused(tiny_spec, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a store")
    for store in (afile, afile / "sub.zarr"):
        assert main(["run", str(tiny_spec), "--store", str(store)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("pmstudy: error: store:") and "file" in err
    assert afile.read_text() == "not a store"


@pytest.mark.parametrize(
    "argv",
    [["run", "x.toml", "--workers", "0"], ["landscape", "--inits", "-3"], ["nope"]],
)
def test_option_errors_are_one_line_with_status_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("pmstudy: error: ") and err.count("\n") == 1
