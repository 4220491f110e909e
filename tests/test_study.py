"""The study spec: parsing, defaults, the grid, and an error for every bad field."""

from __future__ import annotations

import math

import pytest

from pmstudy.errors import SpecError
from pmstudy.study import load_spec, parse_spec
from tests.conftest import TINY_SPEC


def _edit(old: str, new: str) -> str:
    assert old in TINY_SPEC, old
    return TINY_SPEC.replace(old, new)


def test_tiny_spec_parses_with_defaults(tiny_spec):
    study = load_spec(tiny_spec)
    assert (study.k, study.d, study.replicates, study.block) == (3, 1, 12, 4)
    assert study.separations == (1.5, 3.0)
    assert study.ms == (20.0, 60.0)
    assert study.scheme_labels == ("forgy", "kmeans++", "uniform-box")
    assert study.center_tol == 1e-3 and study.loglik_tol == 1e-6
    assert study.store.endswith("tiny.zarr")


def test_tasks_cover_every_replicate_once():
    study = parse_spec(_edit("replicates = 12", "replicates = 10"))
    covered = {}
    for task in study.tasks():
        for r in task.replicates:
            key = (task.m_index, task.separation_index, r)
            assert key not in covered
            covered[key] = task
    assert len(covered) == 2 * 2 * 10
    assert max(t.stop - t.start for t in study.tasks()) == 4


def test_m_inf_is_a_point_on_the_axis():
    study = parse_spec(_edit("m = [20, 60]", 'm = [20, "inf"]'))
    assert math.isinf(study.ms[1]) and study.has_population


def test_scheme_tables_with_labels():
    study = parse_spec(
        _edit(
            'schemes = ["forgy", "kmeans++", "uniform-box"]',
            'schemes = ["forgy", {name = "forgy", label = "forgy-2"}]',
        )
    )
    assert study.scheme_labels == ("forgy", "forgy-2")


def test_digest_ignores_store_but_not_science():
    a = parse_spec('store = "a.zarr"\n' + TINY_SPEC)
    b = parse_spec('store = "b.zarr"\n' + TINY_SPEC)
    c = parse_spec(_edit("seed = 7", "seed = 8"))
    assert a.digest() == b.digest() != c.digest()


BAD_FIELDS = [
    # (old text, new text, field named in the error, a word of what is valid)
    ("m = [20, 60]", "m = [3, 60]", "grid.m", "> k = 3"),
    ("m = [20, 60]", "m = [2.5, 60]", "grid.m", "integer"),
    ("m = [20, 60]", "m = []", "grid.m", "non-empty"),
    ("m = [20, 60]", 'm = [20, "infinity"]', "grid.m", '"inf"'),
    (
        'schemes = ["forgy", "kmeans++", "uniform-box"]',
        'schemes = ["forgy", "bogus"]',
        "schemes",
        "one of",
    ),
    ('name = "points"', 'name = "spiral"', "layout.name", "one of"),
    ("separation = [1.5, 3.0]", "separation = [1.5, 0]", "grid.separation", "> 0"),
    ("separation = [1.5, 3.0]", "separation = [-1]", "grid.separation", "> 0"),
    ("replicates = 12", "replicates = 0", "replicates", ">= 1"),
    ("k = 3", 'k = "three"', "k", "integer"),
    ("k = 3", "k = true", "k", "integer"),
    ("seed = 7", "seed = -1", "seed", ">= 0"),
    ("tol = 1e-8", "tol = 0", "em.tol", "> 0"),
    ("max_iter = 5000", "max_iter = 0", "em.max_iter", ">= 1"),
    ("max_iter = 5000", "max_iters = 5000", "em.max_iters", "one of"),
    ("seed = 7", "seed = 7\nsede = 3", "sede", "one of"),
]


@pytest.mark.parametrize(("old", "new", "field", "valid"), BAD_FIELDS)
def test_each_bad_field_is_named(old, new, field, valid):
    with pytest.raises(SpecError) as info:
        parse_spec(_edit(old, new))
    assert info.value.field == field
    message = str(info.value)
    assert message.startswith(field + ":") and valid in message


def test_simplex_needs_room():
    text = _edit('name = "points"\ncenters = [[0.0], [1.0], [4.0]]', 'name = "simplex"')
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert info.value.field.startswith("layout")


@pytest.mark.parametrize("missing", ["seed", "k", "d", "replicates", "schemes"])
def test_missing_required_field(missing):
    lines = [
        line for line in TINY_SPEC.splitlines() if not line.startswith(missing + " ")
    ]
    with pytest.raises(SpecError) as info:
        parse_spec("\n".join(lines))
    assert info.value.field == missing and "required" in str(info.value)


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(SpecError, match="spec"):
        load_spec(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("k = = 3")
    with pytest.raises(SpecError, match="valid TOML"):
        load_spec(bad)
