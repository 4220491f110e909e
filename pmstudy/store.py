"""The zarr store of a study: its schema, region writes and reading back.

One zarr (format 3) store per study, opened with xarray. Outcome variables are
indexed by (m, separation, scheme, replicate); center arrays add (component,
axis); oracle variables drop the scheme. Every variable has a fill value that means
"not computed yet" (-1 for integers, NaN for floats), written as the zarr array's
own fill value so that chunks never written read back as that marker: a store
describes its own progress.

Chunks are (1, 1, all schemes, block) so that one task writes exactly one chunk of
each variable, and only the client writes. Within a task's write, ``outcome`` goes
last: a block whose outcome chunk is complete has all its other variables too,
which is what resuming relies on.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from pmstudy import __version__, mixture, seeds
from pmstudy.errors import SpecError
from pmstudy.outcome import OUTCOME_MEANINGS
from pmstudy.study import Study, Task

logger = logging.getLogger(__name__)

__all__ = [
    "CELL_VARIABLES",
    "StoreMismatch",
    "completed_blocks",
    "create_store",
    "open_store",
    "prepare_store",
    "true_centers",
    "write_block",
]

_CELL = ("m", "separation", "scheme", "replicate")
_CENTERS = (*_CELL, "component", "axis")
_ORACLE = ("m", "separation", "replicate")

# name -> (dims, dtype, fill, description)
CELL_VARIABLES: dict[str, tuple[tuple[str, ...], str, Any, str]] = {
    "end": (_CELL, "i1", -1, "how EM ended: 0 converged, 1 slow merge, 2 budget"),
    "n_iter": (_CELL, "i4", -1, "EM steps taken"),
    "loglik": (_CELL, "f8", math.nan, "average log-likelihood at the end"),
    "loglik_gap": (_CELL, "f8", math.nan, "best-known maximum minus loglik"),
    "center_error": (
        _CELL,
        "f8",
        math.nan,
        "largest distance to a true center after the best permutation",
    ),
    "n_merged": (_CELL, "i1", -1, "true centers with no estimate nearest"),
    "n_split": (_CELL, "i1", -1, "true centers with two or more estimates nearest"),
    "starved": (_CELL, "i1", -1, "1 if some center's responsibilities underflowed"),
    "centers_init": (_CENTERS, "f8", math.nan, "initial centers"),
    "centers_final": (_CENTERS, "f8", math.nan, "final centers"),
    "oracle_end": (_ORACLE, "i1", -1, "how EM from the true centers ended"),
    "oracle_loglik": (_ORACLE, "f8", math.nan, "loglik of EM from the true centers"),
    "oracle_center_error": (
        _ORACLE,
        "f8",
        math.nan,
        "oracle's largest distance to a true center",
    ),
    "oracle_outcome": (_ORACLE, "i1", -1, f"oracle's outcome: {OUTCOME_MEANINGS}"),
    "best_loglik": (_ORACLE, "f8", math.nan, "best-known maximum of the data set"),
    # Written last: its chunk being complete marks the whole block as done.
    "outcome": (_CELL, "i1", -1, f"0 fail, 1 success, 2 undecided: {OUTCOME_MEANINGS}"),
}
_POPULATION_VARIABLES = {
    "population_success": (
        _CELL,
        "i1",
        -1,
        "1 if population EM from the same initial centers reached the truth",
    ),
}


class StoreMismatch(SpecError):
    """An existing store holds a different study."""


def _variables(study: Study) -> dict[str, tuple[tuple[str, ...], str, Any, str]]:
    variables = dict(CELL_VARIABLES)
    if study.same_init:
        outcome = variables.pop("outcome")
        variables.update(_POPULATION_VARIABLES)
        variables["outcome"] = outcome
    return variables


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "pmstudy": __version__}
    for name in ("numpy", "scipy", "scikit-learn", "dask", "distributed", "xarray"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    for name in ("zarr", "numba"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def true_centers(study: Study, separation: float) -> np.ndarray:
    """The true centers of the study at one separation.

    Returns
    -------
    ndarray of shape (k, d)
    """
    rng = seeds.stream(study.seed, "layout")
    return mixture.layout_centers(
        study.layout, study.k, study.d, separation, study.layout_params, rng
    )


def _shape(study: Study, dims: tuple[str, ...]) -> tuple[int, ...]:
    sizes = {
        "m": len(study.ms),
        "separation": len(study.separations),
        "scheme": len(study.schemes),
        "replicate": study.replicates,
        "component": study.k,
        "axis": study.d,
    }
    return tuple(sizes[dim] for dim in dims)


def _chunks(study: Study, dims: tuple[str, ...]) -> tuple[int, ...]:
    sizes = {"m": 1, "separation": 1, "replicate": study.block}
    return tuple(
        sizes.get(dim, n) for dim, n in zip(dims, _shape(study, dims), strict=True)
    )


def create_store(study: Study, path: str) -> None:
    """Create an empty store for `study` at `path` (metadata and coordinates only).

    Parameters
    ----------
    study : Study
    path : str
        A local path or an fsspec URL.
    """
    coords = {
        "m": ("m", np.array(study.ms, dtype=np.float64)),
        "separation": ("separation", np.array(study.separations, dtype=np.float64)),
        # Variable-length strings: fixed-width unicode has no zarr v3 spec.
        "scheme": ("scheme", np.array(study.scheme_labels, dtype=object)),
        "replicate": ("replicate", np.arange(study.replicates, dtype=np.int64)),
        "component": ("component", np.arange(study.k, dtype=np.int64)),
        "axis": ("axis", np.arange(study.d, dtype=np.int64)),
    }
    data_vars: dict[str, Any] = {}
    encoding: dict[str, dict[str, Any]] = {}
    for name, (dims, dtype, fill, description) in _variables(study).items():
        chunks = _chunks(study, dims)
        lazy = da.full(_shape(study, dims), fill, dtype=dtype, chunks=chunks)
        data_vars[name] = (dims, lazy, {"description": description})
        # `fill_value` (not `_FillValue`) sets the zarr array's own fill value, so
        # unwritten chunks read back as the "not computed" marker, unmasked.
        encoding[name] = {"fill_value": fill, "chunks": chunks}
    centers = np.stack([true_centers(study, s) for s in study.separations])
    data_vars["centers_true"] = (
        ("separation", "component", "axis"),
        centers,
        {"description": "true centers at each separation"},
    )
    attrs = {
        "study": study.name,
        "spec": study.text,
        "spec_normalized": json.dumps(study.normalized(), sort_keys=True),
        "spec_sha256": study.digest(),
        "proxy_size": study.proxy_size,
        "pmstudy_version": __version__,
        "versions": json.dumps(_versions(), sort_keys=True),
        "outcome_meanings": OUTCOME_MEANINGS,
    }
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    ds.to_zarr(
        path,
        mode="w-",
        compute=False,
        zarr_format=3,
        consolidated=False,
        encoding=encoding,
    )
    logger.info("created store %s", path)


def open_store(path: str) -> xr.Dataset:
    """Open a study store lazily with xarray.

    Raises
    ------
    SpecError
        If there is no pmstudy store at `path`.
    """
    try:
        ds = xr.open_zarr(path, consolidated=False, mask_and_scale=False)
    except (FileNotFoundError, KeyError, ValueError) as error:
        raise SpecError("store", path, f"an existing pmstudy store ({error})") from None
    if "spec_sha256" not in ds.attrs:
        raise SpecError("store", path, "a store written by pmstudy run")
    return ds


def _differences(
    old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = ""
) -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: store has {a!r}, spec has {b!r}")
    return out


def prepare_store(study: Study, path: str) -> None:
    """Create the store, or check that an existing one holds the same study.

    Raises
    ------
    StoreMismatch
        If `path` holds a store of a different study; the message lists the fields
        that differ.
    """
    try:
        ds = xr.open_zarr(path, consolidated=False, mask_and_scale=False)
    except (FileNotFoundError, KeyError):
        create_store(study, path)
        return
    with ds:
        digest = ds.attrs.get("spec_sha256")
        normalized = ds.attrs.get("spec_normalized")
    if digest == study.digest():
        logger.info("resuming into existing store %s", path)
        return
    old = json.loads(normalized) if normalized else {}
    diffs = _differences(old, study.normalized()) or ["(unreadable spec in store)"]
    raise StoreMismatch(
        "store",
        path,
        "a new path, or the store of this same spec; it holds a different study: "
        + "; ".join(diffs),
    )


def completed_blocks(study: Study, path: str) -> set[tuple[int, int, int]]:
    """The tasks already written, as (m_index, separation_index, start) triples."""
    with open_store(path) as ds:
        outcome = ds["outcome"].values
    done = set()
    for task in study.tasks():
        block = outcome[task.m_index, task.separation_index, :, task.start : task.stop]
        if (block >= 0).all():
            done.add((task.m_index, task.separation_index, task.start))
    return done


def write_block(
    study: Study, path: str, task: Task, block: Mapping[str, np.ndarray]
) -> None:
    """Write one task's results into its chunk-aligned region of the store.

    Parameters
    ----------
    study : Study
    path : str
    task : Task
    block : mapping of str to ndarray
        Every variable of the store without its m and separation axes: cell
        variables of shape (S, B), center variables (S, B, k, d), oracle variables
        (B,), where B is the number of replicates in the task.
    """
    variables = _variables(study)
    missing = set(variables) - set(block)
    if missing:
        raise ValueError(f"block lacks variables {sorted(missing)}")
    for name, value in block.items():
        if (
            np.issubdtype(np.asarray(value).dtype, np.floating)
            and not np.isfinite(value).all()
        ):
            # A NaN in the store would read as "not computed"; refuse it loudly.
            raise ValueError(f"refusing to write non-finite values into {name!r}")
    region = {
        "m": slice(task.m_index, task.m_index + 1),
        "separation": slice(task.separation_index, task.separation_index + 1),
        "replicate": slice(task.start, task.stop),
    }

    def dataset(names: list[str]) -> xr.Dataset:
        data = {}
        for name in names:
            dims, dtype, _, _ = variables[name]
            data[name] = (dims, np.asarray(block[name], dtype=dtype)[None, None])
        return xr.Dataset(data)

    names = [name for name in variables if name != "outcome"]
    for group in (names, ["outcome"]):
        ds = dataset(group)
        # The scheme, component and axis dims are whole in every chunk.
        ds.to_zarr(path, region={**region, **_full(ds, region)}, consolidated=False)


def _full(ds: xr.Dataset, region: Mapping[str, slice]) -> dict[str, slice]:
    return {dim: slice(None) for dim in ds.dims if dim not in region}
