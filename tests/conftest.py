"""Shared fixtures: small, fast study specs written to temporary directories."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_SPEC = """
name = "tiny"
seed = 7
k = 3
d = 1
replicates = 12
block = 4
schemes = ["forgy", "kmeans++", "uniform-box"]

[layout]
name = "points"
centers = [[0.0], [1.0], [4.0]]

[grid]
separation = [1.5, 3.0]
m = [20, 60]

[em]
max_iter = 5000
tol = 1e-8
"""


@pytest.fixture
def tiny_spec(tmp_path: Path) -> Path:
    """A study of 2 x 2 cells x 3 schemes x 12 replicates in blocks of 4."""
    path = tmp_path / "tiny.toml"
    store = tmp_path / "tiny.zarr"
    path.write_text(f'store = "{store}"\n' + TINY_SPEC)
    return path
