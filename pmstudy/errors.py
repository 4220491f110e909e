"""The one exception type for bad input, so that the CLI can report it cleanly."""

from __future__ import annotations

from typing import Any


class SpecError(ValueError):
    """Bad user input: names the field, the value given and what would be valid.

    Parameters
    ----------
    field : str
        Dotted path of the offending field, e.g. ``"grid.m"``.
    value : Any
        The value that was given.
    expected : str
        What would be valid, phrased so that the user knows what to change.
    """

    def __init__(self, field: str, value: Any, expected: str) -> None:
        self.field = field
        self.value = value
        self.expected = expected
        super().__init__(f"{field}: should be {expected}, but got {value!r}")
