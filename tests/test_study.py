"""The study spec: parsing, defaults, the grid, and an error for every bad field."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pmstudy import mixture, schemes
from pmstudy.errors import SpecError
from pmstudy.study import MAX_K, MAX_TASK_BYTES, load_spec, parse_spec
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
    # The store counts merged and split centers in int8.
    ("k = 3", "k = 128", "k", "from 1 to 100"),
    ("k = 3", "k = 101", "k", "from 1 to 100"),
    # A decreasing grid made the report's transition sample sizes wrong.
    ("m = [20, 60]", "m = [60, 20]", "grid.m", "strictly increasing"),
    ("m = [20, 60]", 'm = ["inf", 20]', "grid.m", '"inf" (if any) last'),
    ("m = [20, 60]", "m = [20, 20]", "grid.m", "without repeats"),
    # Distinct points whose squared distances underflow or overflow were
    # called duplicates.
    (
        "centers = [[0.0], [1.0], [4.0]]",
        "centers = [[0.0], [1e-200], [1.0]]",
        "layout.centers",
        "times the smallest (got 1e+200)",
    ),
    (
        "centers = [[0.0], [1.0], [4.0]]",
        "centers = [[0.0], [1.0], [1e200]]",
        "layout.centers",
        "times the smallest (got 1e+200)",
    ),
    (
        "centers = [[0.0], [1.0], [4.0]]",
        "centers = [[0.0], [0.0], [1.0]]",
        "layout.centers",
        "distinct points (found duplicates)",
    ),
    # One task would need terabytes: a MemoryError on every worker before.
    ("m = [20, 60]", "m = [20, 100_000_000_000]", "grid.m", "smaller `block`"),
    # The data would exceed what the schemes accept, on every worker before.
    (
        "separation = [1.5, 3.0]",
        "separation = [1.5, 1e300]",
        "grid.separation",
        "1e+100",
    ),
]


@pytest.mark.parametrize(("old", "new", "field", "valid"), BAD_FIELDS)
def test_each_bad_field_is_named(old, new, field, valid):
    with pytest.raises(SpecError) as info:
        parse_spec(_edit(old, new))
    assert info.value.field == field
    message = str(info.value)
    assert message.startswith(field + ":") and valid in message


def test_points_far_apart_in_float64_are_accepted():
    study = parse_spec(
        _edit("centers = [[0.0], [1.0], [4.0]]", "centers = [[1e308], [-1e308], [0.0]]")
    )
    assert study.k == 3


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


def test_k_up_to_the_bound_is_accepted():
    text = _edit(
        'name = "points"\ncenters = [[0.0], [1.0], [4.0]]', 'name = "line"'
    ).replace("k = 3", "k = 100")
    study = parse_spec(text.replace("m = [20, 60]", "m = [200, 600]"))
    assert study.k == 100 == MAX_K


def test_m_inf_last_after_increasing_finite_sizes():
    study = parse_spec(_edit("m = [20, 60]", 'm = [20, 60, "inf"]'))
    assert study.ms == (20.0, 60.0, math.inf)


def test_task_memory_bound_is_exact_and_block_is_the_knob():
    # block = 4, d = 1: a task holds 4 x m x 1 float64 about 4 times.
    allowed = MAX_TASK_BYTES // (4 * 4 * 1 * 8)
    ok = parse_spec(_edit("m = [20, 60]", f"m = [20, {allowed}]"))
    assert ok.ms[-1] == allowed
    with pytest.raises(SpecError) as info:
        parse_spec(_edit("m = [20, 60]", f"m = [20, {allowed + 1}]"))
    assert info.value.field == "grid.m" and info.value.value == allowed + 1
    assert f"at most {allowed:,} with block = 4" in str(info.value)
    # Halving the block doubles what fits.
    smaller = parse_spec(
        _edit("m = [20, 60]", f"m = [20, {2 * allowed}]").replace(
            "block = 4", "block = 2"
        )
    )
    assert smaller.block == 2


def _wide(d: int, block: int = 4) -> str:
    """The tiny spec in d dimensions (centers on a line), m = 4, 5, given block."""
    text = _edit('name = "points"\ncenters = [[0.0], [1.0], [4.0]]', 'name = "line"')
    text = text.replace("d = 1\n", f"d = {d}\n").replace("m = [20, 60]", "m = [4, 5]")
    return text.replace("block = 4", f"block = {block}")


def test_task_memory_counts_the_centers_of_every_run_in_large_d():
    # block x (1 + 3 schemes) runs, each holding k x d centers about 16 times:
    # d = 10^7 passed the data check and filled a worker before.
    per_run = 16 * 3 * 8
    allowed_block = MAX_TASK_BYTES // (per_run * 2_000_000 * 4)
    assert allowed_block >= 1
    with pytest.raises(SpecError) as info:
        parse_spec(_wide(2_000_000, block=allowed_block + 1))
    assert info.value.field == "block"
    assert f"at most {allowed_block:,} with k = 3, d = 2000000" in str(info.value)
    assert parse_spec(_wide(2_000_000, block=allowed_block)).d == 2_000_000
    # When not even one data set's runs fit, d itself is named.
    largest = MAX_TASK_BYTES // (per_run * 4)
    with pytest.raises(SpecError) as info:
        parse_spec(_wide(largest + 1, block=1))
    assert info.value.field == "d" and f"at most {largest:,}" in str(info.value)


def test_proxy_size_is_bounded_like_m_when_m_is_infinite():
    allowed = MAX_TASK_BYTES // (4 * 4 * 1 * 8)
    text = _edit("m = [20, 60]", 'm = [20, "inf"]')
    big = f"\n[population]\nproxy_size = {allowed + 1}\n"
    with pytest.raises(SpecError) as info:
        parse_spec(text + big)
    assert info.value.field == "population.proxy_size"
    # Without m = inf no proxy sample is drawn, so the size does not matter.
    assert parse_spec(TINY_SPEC + big).proxy_size == allowed + 1


def test_separation_bound_matches_what_the_schemes_refuse():
    from pmstudy.store import true_centers

    with pytest.raises(SpecError) as info:
        parse_spec(_edit("separation = [1.5, 3.0]", "separation = [1.5, 1e300]"))
    # The largest separation allowed, from the message, is accepted and gives
    # centers just inside the schemes' limit.
    allowed = float(str(info.value).split("at most ")[1].split(" ")[0])
    study = parse_spec(
        _edit("separation = [1.5, 3.0]", f"separation = [1.5, {allowed * 0.99}]")
    )
    centers = true_centers(study, study.separations[-1])
    assert 1e99 < np.abs(centers).max() < 1e100
    # Data around centers past the limit are what the schemes refuse on workers.
    rng = np.random.default_rng(0)
    far = true_centers(study, 1e300)
    x = mixture.sample_mixture(far, 20, rng)
    with pytest.raises(SpecError, match="1e\\+100"):
        schemes.initial_centers("forgy", x, 3, rng, centers_true=far, params={})
