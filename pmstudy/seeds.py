"""Random streams keyed by stable values, never by grid position or task order.

Every stream is a NumPy Generator seeded from a SeedSequence whose entropy is built
from the study seed, the stream's purpose, and the values that identify what the
stream is for (m, separation, scheme label, replicate index). Floats enter through
their IEEE-754 bit patterns and scheme labels through a SHA-256 digest, so the key
does not depend on how a value is spelled in the spec, on Python's hash
randomization, or on where the value sits on the grid. Hence a result does not
depend on how many workers ran it, on the block size, or on which other cells the
study holds: enlarging the grid leaves existing cells unchanged.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

__all__ = ["PURPOSES", "stream"]

# Purpose codes are part of the key; never renumber them, or old stores stop
# reproducing.
PURPOSES: dict[str, int] = {"layout": 1, "data": 2, "init": 3, "proxy": 4}

# A marker for "this key is absent", distinct from every encoded value: encoded
# floats and digests are below 2**64, the marker is not.
_ABSENT = 2**64


def _float_key(value: float) -> int:
    """The float64 bit pattern of ``value`` as a non-negative integer."""
    return struct.unpack("<Q", struct.pack("<d", float(value)))[0]


def _label_key(label: str) -> int:
    """A stable 64-bit integer from a scheme label."""
    return int.from_bytes(hashlib.sha256(label.encode("utf-8")).digest()[:8], "little")


def stream(
    seed: int,
    purpose: str,
    *,
    m: float | None = None,
    separation: float | None = None,
    scheme: str | None = None,
    replicate: int | None = None,
) -> np.random.Generator:
    """Return the Generator for one purpose and one set of key values.

    Parameters
    ----------
    seed : int
        The study seed (non-negative).
    purpose : str
        One of ``PURPOSES``: ``"layout"``, ``"data"``, ``"init"`` or ``"proxy"``.
    m : float, optional
        Sample size (``inf`` for the population limit).
    separation : float, optional
        Minimum distance between true centers.
    scheme : str, optional
        The scheme's label on the study's scheme axis.
    replicate : int, optional
        Replicate index within its cell.

    Returns
    -------
    numpy.random.Generator
        A PCG64 generator; the same arguments always give the same stream.
    """
    if purpose not in PURPOSES:
        raise ValueError(
            f"purpose should be one of {sorted(PURPOSES)}, got {purpose!r}"
        )
    entropy = [
        int(seed),
        PURPOSES[purpose],
        _ABSENT if m is None else _float_key(m),
        _ABSENT if separation is None else _float_key(separation),
        _ABSENT if scheme is None else _label_key(scheme),
        _ABSENT if replicate is None else int(replicate),
    ]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))
