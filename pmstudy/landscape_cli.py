"""The ``pmstudy landscape`` command: a census of population critical points.

From N initial points of each scheme, drawn (as at m = inf in a study) on proxy
samples of the true mixture, population EM runs to its end and each end point is
polished and classified; the census lists the distinct critical points reached,
up to permutation of the centers, and the fraction of each scheme's starts that
reach each one.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from pmstudy import mixture, schemes, seeds
from pmstudy.errors import SpecError

__all__ = ["census_inits", "format_census", "parse_centers"]


def parse_centers(text: str) -> np.ndarray:
    """Parse ``"x,y;x,y;..."`` (one center per ``;``) into an array.

    Spaces around entries are allowed; a trailing ``;`` is not (it is an empty
    center). Coordinates are plain decimal numbers: no underscores (Python's
    ``float("1_0")`` is 10, which a user would not expect).

    Returns
    -------
    ndarray of shape (k, d)

    Raises
    ------
    SpecError
        With field ``--centers``, if the text is empty, a center or coordinate is
        empty or not a finite number, a coordinate is beyond the data limit the
        schemes apply (see `pmstudy.schemes`), the centers do not all have the
        same dimension, or two centers coincide.
    """
    expected = 'centers as "x,y;x,y;..." (one center per ";", coordinates by ",")'
    limit = schemes.MAX_ABS_COORDINATE
    rows = [part.strip() for part in text.split(";")]
    if not text.strip():
        raise SpecError("--centers", text, expected)
    centers = []
    for n, row in enumerate(rows, start=1):
        if not row:
            raise SpecError("--centers", text, f"{expected}; center {n} is empty")
        values = []
        for entry in row.split(","):
            entry = entry.strip()
            try:
                if not entry or "_" in entry:
                    raise ValueError(entry)
                value = float(entry)
            except ValueError:
                problem = (
                    f"{entry!r} is not a number" if entry else "a coordinate is empty"
                )
                raise SpecError("--centers", text, f"{expected}; {problem}") from None
            if not math.isfinite(value):
                raise SpecError("--centers", text, "finite coordinates")
            # Before any arithmetic: squared distances of larger values overflow.
            if abs(value) >= limit:
                raise SpecError(
                    "--centers",
                    text,
                    f"coordinates below {limit:.0e} in absolute value",
                )
            values.append(value)
        centers.append(values)
    if len({len(c) for c in centers}) != 1:
        raise SpecError("--centers", text, "centers that all have the same dimension")
    array = np.array(centers, dtype=np.float64)
    if len(array) > 1:
        gaps = np.linalg.norm(array[:, None] - array[None], axis=-1)
        if gaps[np.triu_indices(len(array), 1)].min() == 0:
            raise SpecError("--centers", text, "distinct centers")
    return array


def census_inits(
    centers_true: np.ndarray,
    scheme_specs: list[tuple[str, str, dict[str, Any]]],
    *,
    n_inits: int,
    seed: int,
    separation: float,
    proxy_size: int,
) -> dict[str, np.ndarray]:
    """Initial centers of every scheme, each drawn on its own proxy sample.

    Parameters
    ----------
    centers_true : ndarray of shape (k, d)
    scheme_specs : list of (label, name, params)
    n_inits : int
        Starts per scheme.
    seed, separation : keys of the random streams (as in a study at m = inf).
    proxy_size : int
        Size of each proxy sample of the true mixture.

    Returns
    -------
    dict of str to ndarray of shape (n_inits, k, d)
    """
    k, d = centers_true.shape
    inits = {label: np.empty((n_inits, k, d)) for label, _, _ in scheme_specs}
    for i in range(n_inits):
        proxy_rng = seeds.stream(
            seed, "proxy", m=math.inf, separation=separation, replicate=i
        )
        proxy = mixture.sample_mixture(centers_true, proxy_size, proxy_rng)
        for label, name, params in scheme_specs:
            rng = seeds.stream(
                seed,
                "init",
                m=math.inf,
                separation=separation,
                scheme=label,
                replicate=i,
            )
            inits[label][i] = schemes.initial_centers(
                name, proxy, k, rng, centers_true=centers_true, params=params
            )
    return inits


def _fmt_centers(centers: Any) -> str:
    return "; ".join(",".join(f"{v:.4g}" for v in c) for c in centers)


def format_census(result: dict[str, Any], fmt: str) -> str:
    """Render a census (see `pmstudy.landscape.census`) as a table or JSON."""
    if fmt == "json":
        return json.dumps(result, indent=2) + "\n"
    lines = [
        f"true centers: {_fmt_centers(result['centers_true'])}",
        f"method: {result['method']}",
        "",
    ]
    for n, point in enumerate(result["critical_points"], start=1):
        eigen = point["hessian_eigenvalues"]
        top = max(eigen) if eigen else float("nan")
        basin = ", ".join(f"{s} {f:.2f}" for s, f in point["basin"].items())
        lines.append(
            f"{n}. {point['kind']}: gap {point['loglik_gap']:.3g}, "
            f"largest Hessian eigenvalue {top:.3g}"
        )
        lines.append(f"   centers: {_fmt_centers(point['centers'])}")
        lines.append(f"   basin:   {basin}")
    undecided = ", ".join(f"{s} {f:.2f}" for s, f in result["undecided"].items())
    lines.append(f"undecided: {undecided}")
    return "\n".join(lines) + "\n"
