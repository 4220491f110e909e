"""Random streams depend on their key values only."""

from __future__ import annotations

import numpy as np
import pytest

from pmstudy.seeds import stream


def draw(**key):
    return stream(11, "data", **key).standard_normal(4)


def test_same_key_same_stream():
    key = {"m": 100.0, "separation": 2.0, "replicate": 3}
    np.testing.assert_array_equal(draw(**key), draw(**key))


def test_integer_and_float_spellings_agree():
    np.testing.assert_array_equal(
        draw(m=100, separation=2, replicate=0),
        draw(m=100.0, separation=2.0, replicate=0),
    )


@pytest.mark.parametrize(
    "other",
    [
        {"m": 101.0, "separation": 2.0, "replicate": 3},
        {"m": 100.0, "separation": 2.5, "replicate": 3},
        {"m": 100.0, "separation": 2.0, "replicate": 4},
        {"m": float("inf"), "separation": 2.0, "replicate": 3},
        {"m": 100.0, "separation": 2.0, "replicate": 3, "scheme": "forgy"},
    ],
)
def test_every_key_value_matters(other):
    assert not np.array_equal(draw(m=100.0, separation=2.0, replicate=3), draw(**other))


def test_purposes_and_seeds_differ():
    a = stream(1, "data", replicate=0).integers(1 << 30, size=3)
    b = stream(1, "init", replicate=0).integers(1 << 30, size=3)
    c = stream(2, "data", replicate=0).integers(1 << 30, size=3)
    assert not np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(ValueError, match="purpose"):
        stream(1, "nonsense")
