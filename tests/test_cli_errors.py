"""Bad command-line input: status 2 and one line naming the option, never a
traceback, and nothing created; Ctrl-C says what is kept only where it is."""

from __future__ import annotations

import pytest

from pmstudy import landscape_cli, study
from pmstudy.cli import main


def _one_line_error(capsys, name: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"pmstudy: error: {name}") or f"argument {name}" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["landscape", "--centers", "0;2;8", "--seed", "-1"], "--seed"),
        (["landscape", "--centers", "0;2;8", "--seed", "x"], "--seed"),
        (["landscape", "--centers", "0;2;8", "--tol", "0"], "--tol"),
        (["landscape", "--centers", "0;2;8", "--tol", "nan"], "--tol"),
        (["landscape", "--centers", "0;2;8", "--max-iter", "0"], "--max-iter"),
        (["landscape", "--centers", "0;1e200;4"], "--centers"),
        (["landscape", "--centers", "0;;4"], "--centers"),
        (["landscape", "--centers", "0;2;8", "--separation", "1e300"], "--separation"),
        # An unbounded repeat count ran for ever.
        (["bench", "--quick", "--repeats", "100000000000000000000"], "--repeats"),
        (["bench", "--quick", "--repeats", "0"], "--repeats"),
        (["bench", "--quick", "--format", "xml"], "--format"),
        (["bench", "--memory", "--population"], "--population"),
    ],
)
def test_option_errors(argv, name, capsys):
    try:
        status = main(argv)
    except SystemExit as done:  # argparse's own errors
        status = done.code
    assert status == 2
    err = _one_line_error(capsys, name)
    if name == "--seed":
        assert ">= 0" in err


def test_an_empty_store_option_is_refused(tiny_spec, tmp_path, capsys):
    assert main(["run", str(tiny_spec), "--store", ""]) == 2
    assert "--store: should be a non-empty path" in _one_line_error(capsys, "--store")
    assert not (tmp_path / "tiny.zarr").exists()


def test_run_into_a_busy_directory_is_one_line(tiny_spec, tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "data.csv").write_text("1,2\n")
    assert main(["run", str(tiny_spec), "--store", str(busy)]) == 2
    err = _one_line_error(capsys, "store")
    assert "not a pmstudy store" in err
    assert [p.name for p in busy.iterdir()] == ["data.csv"]


def test_a_spec_that_would_fail_on_every_worker_creates_nothing(
    tiny_spec, tmp_path, capsys
):
    text = tiny_spec.read_text()
    for old, new, field in [
        ("k = 3", "k = 128", "k"),
        ("m = [20, 60]", "m = [20, 100_000_000_000]", "grid.m"),
        ("separation = [1.5, 3.0]", "separation = [1.5, 1e300]", "grid.separation"),
        ("m = [20, 60]", "m = [60, 20]", "grid.m"),
    ]:
        tiny_spec.write_text(text.replace(old, new))
        assert main(["run", str(tiny_spec)]) == 2
        _one_line_error(capsys, field)
        assert not (tmp_path / "tiny.zarr").exists()


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_interrupt_message_fits_the_command(tiny_spec, monkeypatch, capsys):
    monkeypatch.setattr(landscape_cli, "parse_centers", _interrupt)
    assert main(["landscape", "--centers", "0;2;8"]) == 130
    err = capsys.readouterr().err
    assert err == "pmstudy: interrupted\n"

    monkeypatch.setattr(study, "load_spec", _interrupt)
    assert main(["run", str(tiny_spec)]) == 130
    assert "rerun to resume" in capsys.readouterr().err


def test_landscape_help_shows_every_default(capsys):
    with pytest.raises(SystemExit) as done:
        main(["landscape", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option, default in [
        ("--inits", "20"),
        ("--proxy-size", "10000"),
        ("--max-iter", "20000"),
        ("--tol", "1e-08"),
        ("--format", "table"),
    ]:
        assert option in text
        assert f"(default: {default})" in text, option
