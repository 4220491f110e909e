"""The README's set-up commands: their shape, and the install as a new user does it."""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def first_block_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```[a-z]*\n(.*?)```", text, re.S)
    assert block, "README.md has no fenced code block"
    return [
        line.strip()
        for line in block.group(1).splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def test_readme_starts_with_the_two_setup_commands():
    install_run, install_test = first_block_commands()
    assert install_run.startswith("pip install . && pmstudy run ")
    spec = install_run.split("pmstudy run ")[1].split()[0]
    assert (ROOT / spec).is_file()
    assert "pytest" in install_test
    # CI runs exactly the README's test command.
    assert install_test in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_install_in_a_new_venv_and_run_a_study(tmp_path):
    """Install from a clean copy into a new environment, then run the command.

    The new environment borrows the already installed dependencies, so that only
    pmstudy's build backend comes from the package index; pmstudy itself is built
    and installed from the copy, as the README's first command does, and run on a
    small study through its console script.
    """
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".git", "data/runs", "*.zarr", "__pycache__"),
    )
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    # Borrow the suite's dependencies: a .pth file appends its site-packages.
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            ".",
        ],
        cwd=source,
        check=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    spec = (source / "data" / "studies" / "quickstart.toml").read_text()
    small = (
        spec.replace("replicates = 200", "replicates = 4")
        .replace("block = 50", "block = 4")
        .replace("separation = [1, 2, 3, 4]", "separation = [3]")
        .replace("m = [30, 100, 300, 1000, 3000]", "m = [30]")
    )
    (source / "small.toml").write_text(small)
    result = subprocess.run(
        [
            env_dir / "bin" / "pmstudy",
            "run",
            "small.toml",
            "--workers",
            "1",
            "--report",
        ],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "separation 3" in result.stdout and "forgy" in result.stdout
    assert (source / "data" / "runs" / "quickstart.zarr").is_dir()
