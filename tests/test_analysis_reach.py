"""Transition sample sizes do not depend on the order of the m axis, and never
name an m that has no data."""

from __future__ import annotations

import math

import pytest

from pmstudy.analysis import transition_rows


def _rows(points: list[tuple[int | str, float | None]]) -> list[dict]:
    """Cell rows of one (separation, scheme), in the order given."""
    return [
        {"separation": 2.0, "scheme": "forgy", "m": m, "p": p, "lo": p, "hi": p}
        for m, p in points
    ]


def _reach(points: list[tuple[int | str, float | None]], level: float) -> dict:
    (transition,) = transition_rows(_rows(points), levels=[level])
    (reach,) = transition["reach"]
    return reach


def test_reach_is_the_same_whatever_the_order_of_m():
    points = [(30, 0.2), (100, 0.4), (300, 0.8)]
    shuffled = [points[1], points[0], points[2]]  # m = [100, 30, 300]
    for level in (0.1, 0.5, 0.9):
        assert _reach(shuffled, level) == _reach(points, level)
    # By hand: 0.5 is a quarter of the way from 0.4 at 100 to 0.8 at 300.
    expected = math.exp(math.log(100) + 0.25 * math.log(3))
    assert _reach(shuffled, 0.5)["m"] == pytest.approx(expected, rel=1e-12)
    assert _reach(shuffled, 0.1) == {
        "level": 0.1,
        "m": 30.0,
        "status": "already at smallest m",
        "largest_m": 300.0,
    }


def test_not_reached_names_the_largest_m_with_data():
    # An unfinished store: m = 1000 has no data yet.
    points = [(30, 0.2), (100, 0.4), (300, 0.5), (1000, None), ("inf", None)]
    reach = _reach(points, 0.9)
    assert (reach["status"], reach["m"], reach["largest_m"]) == (
        "not reached",
        None,
        300.0,
    )
    assert _reach([(30, None), (100, None)], 0.5)["largest_m"] is None
