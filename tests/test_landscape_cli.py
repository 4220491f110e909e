"""Parsing of ``pmstudy landscape --centers``: every malformed text is one error
naming --centers, raised before any arithmetic (so no NumPy warning)."""

from __future__ import annotations

import numpy as np
import pytest

from pmstudy.errors import SpecError
from pmstudy.landscape_cli import parse_centers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0;2;8", [[0.0], [2.0], [8.0]]),
        (" -3 ; 3 ; 12 ", [[-3.0], [3.0], [12.0]]),
        ("0,0;1,0.5;-2e3,4", [[0.0, 0.0], [1.0, 0.5], [-2000.0, 4.0]]),
        ("0;1e99", [[0.0], [1e99]]),
    ],
)
def test_well_formed_centers(text, expected):
    centers = parse_centers(text)
    assert centers.dtype == np.float64
    np.testing.assert_array_equal(centers, np.array(expected))


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("", "one center per"),
        ("0;;4", "center 2 is empty"),
        ("0;1;4;;;", "center 4 is empty"),
        ("0,0;1,1;", "center 3 is empty"),
        (";0;1", "center 1 is empty"),
        ("0,;1,;4,", "a coordinate is empty"),
        ("1_0;2", "'1_0' is not a number"),
        ("0;x;4", "'x' is not a number"),
        ("0;nan;4", "finite coordinates"),
        ("0;inf;4", "finite coordinates"),
        ("0;1e200;4", "below 1e+100"),
        ("0;-1e100;4", "below 1e+100"),
        ("0,0;1", "same dimension"),
        ("0;1;0", "distinct centers"),
    ],
)
def test_malformed_centers_name_the_option(text, valid):
    # Warnings are errors in this suite: an overflow warning would fail it too.
    with pytest.raises(SpecError) as info:
        parse_centers(text)
    assert info.value.field == "--centers" and info.value.value == text
    assert valid in str(info.value)
    assert str(info.value).startswith("--centers: should be")
