"""The zarr store of a study: its schema, block writes, checks and reading back.

One zarr (format 3) store per study, opened with xarray. Outcome variables are
indexed by (m, separation, scheme, replicate); center arrays add (component,
axis); oracle variables drop the scheme. Every variable has a fill value that means
"not computed yet" (-1 for integers, NaN for floats), written as the zarr array's
own fill value so that chunks never written read back as that marker: a store
describes its own progress.

Chunks are (1, 1, all schemes, block) so that one task writes exactly one chunk of
each variable, and only the client writes. Within a block, ``outcome`` goes last:
a block whose outcome chunk is complete had every other chunk written before it.
Resuming does not rely on that order alone, though. A client killed mid-write, a
copy cut short or a file system that loses a file can leave a chunk truncated or
missing; every chunk carries a zstd checksum, and a block counts as done only when
every one of its chunks decodes and holds no fill value (no run ever writes one).
Any other block is recomputed and rewritten whole, into the same slots, so a
replicate is never counted twice.

The store may live anywhere fsspec reaches (``s3://bucket/study.zarr``, ...), with
storage options taken from the environment and fsspec's configuration.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import re
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from zarr.codecs import ZstdCodec

from pmstudy import __version__, mixture, seeds
from pmstudy.errors import SpecError
from pmstudy.outcome import OUTCOME_MEANINGS
from pmstudy.study import Study, Task

logger = logging.getLogger(__name__)

__all__ = [
    "CELL_VARIABLES",
    "BlockState",
    "StoreMismatch",
    "StoreWriter",
    "block_states",
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
    "end": (_CELL, "i1", -1, "how EM ended: 0 converged, 1 via a merge, 2 budget"),
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
# The attribute written last when a store is created: without it the store's
# creation was cut short, and nothing can have been written into it yet.
_IDENTITY = "spec_sha256"
# zarr's local store writes each file under a temporary name, then renames it;
# a writer killed in between leaves such a file behind.
_TEMPORARY = re.compile(r"\.[0-9a-f]{32}\.partial$")


class StoreMismatch(SpecError):
    """An existing store holds a different study."""


class BlockState(enum.Enum):
    """How much of one block (one task's chunks) the store holds."""

    DONE = "done"  # every chunk decodes and is free of fill values
    PARTIAL = "partial"  # some chunk written, but not all of them whole
    MISSING = "missing"  # nothing written


def _variables(study: Study) -> dict[str, tuple[tuple[str, ...], str, Any, str]]:
    variables = dict(CELL_VARIABLES)
    if study.same_init:
        outcome = variables.pop("outcome")
        variables.update(_POPULATION_VARIABLES)
        variables["outcome"] = outcome
    return variables


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "pmstudy": __version__}
    for name in (
        "numpy",
        "scipy",
        "scikit-learn",
        "dask",
        "distributed",
        "xarray",
        "zarr",
        "numba",
    ):
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


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _check_protocol(path: str) -> None:
    """Refuse a URL whose protocol fsspec does not know, or whose package is
    missing, before anything is opened."""
    import fsspec

    protocol = path.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError) as error:
        raise SpecError(
            "--store",
            path,
            "a local path or a URL whose protocol fsspec can open "
            f"(s3://, gs://, ...): {error}",
        ) from None


def create_store(study: Study, path: str, *, overwrite: bool = False) -> None:
    """Create an empty store for `study` at `path` (metadata and coordinates only).

    Parameters
    ----------
    study : Study
    path : str
        A local path or an fsspec URL.
    overwrite : bool
        Replace whatever is at `path`; by default an existing store is an error.
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
        # unwritten chunks read back as the "not computed" marker, unmasked. The
        # checksum makes a truncated or damaged chunk fail to decode instead of
        # reading back as plausible numbers.
        encoding[name] = {
            "fill_value": fill,
            "chunks": chunks,
            "compressors": [ZstdCodec(level=0, checksum=True)],
        }
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
        "proxy_size": study.proxy_size,
        "pmstudy_version": __version__,
        "versions": json.dumps(_versions(), sort_keys=True),
        "outcome_meanings": OUTCOME_MEANINGS,
    }
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    ds.to_zarr(
        path,
        mode="w" if overwrite else "w-",
        compute=False,
        zarr_format=3,
        consolidated=False,
        encoding=encoding,
    )
    # Last: a store whose creation was cut short has no identity and is re-created.
    group = zarr.open_group(path, mode="r+", zarr_format=3)
    group.attrs.update({_IDENTITY: study.digest()})
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
    if _IDENTITY not in ds.attrs:
        raise SpecError("store", path, "a store written by pmstudy run")
    return ds


def _open_group(path: str, mode: str) -> zarr.Group | None:
    """The store's root group, or None if nothing is there."""
    try:
        return zarr.open_group(path, mode=mode, zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return None


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


def _check_local_path(path: str) -> None:
    """Refuse a local store path that is a file or lies below a file."""
    target = Path(path.removeprefix("file://"))
    for parent in (target, *target.parents):
        if parent.exists():
            if not parent.is_dir():
                where = "is" if parent == target else f"lies below {parent}, which is"
                raise SpecError(
                    "store", path, f"a directory path (it {where} a file, not a store)"
                )
            return


def _check_new_local_store(path: str) -> None:
    """Refuse to create a store in a local directory that already holds files.

    zarr would refuse it too, with a bare FileExistsError; whatever is there is
    not a pmstudy store (there is no zarr group) and must not be mixed with one.
    """
    target = Path(path.removeprefix("file://"))
    if target.is_dir() and any(target.iterdir()):
        raise SpecError(
            "store",
            path,
            "a new or empty directory, or an existing pmstudy store (this "
            "directory exists, holds files and is not a pmstudy store)",
        )


def prepare_store(study: Study, path: str) -> None:
    """Create the store, or check that an existing one holds the same study.

    A store whose creation was cut short (it names this very spec but lacks the
    identity written last) holds no results yet and is created again. In a local
    store, temporary files left by a writer that was killed mid-write are removed.

    Raises
    ------
    StoreMismatch
        If `path` holds a store of a different study; the message lists the fields
        that differ.
    """
    if _is_local(path):
        _check_local_path(path)
    else:
        _check_protocol(path)
    group = _open_group(path, mode="r")
    if group is None:
        if _is_local(path):
            _check_new_local_store(path)
        try:
            create_store(study, path)
        except FileExistsError as error:  # e.g. a remote prefix holding objects
            raise SpecError(
                "store", path, f"a new location or an existing pmstudy store ({error})"
            ) from None
        return
    attrs = dict(group.attrs)
    normalized = attrs.get("spec_normalized")
    old = json.loads(normalized) if isinstance(normalized, str) else {}
    if attrs.get(_IDENTITY) == study.digest():
        logger.info("resuming into existing store %s", path)
        if _is_local(path):
            _remove_temporary_files(path)
        return
    if _IDENTITY not in attrs and "pmstudy_version" in attrs and old:
        if not _differences(old, study.normalized()):
            logger.warning("store %s was not fully created; creating it again", path)
            create_store(study, path, overwrite=True)
            return
    if old:
        diffs = _differences(old, study.normalized()) or ["(unreadable spec)"]
    else:
        diffs = ["no pmstudy spec in the store"]
    raise StoreMismatch(
        "store",
        path,
        "a new path, or the store of this same spec; it holds a different study: "
        + "; ".join(diffs),
    )


def _remove_temporary_files(path: str) -> None:
    root = Path(path.removeprefix("file://"))
    leftovers = [p for p in root.rglob("*.partial") if _TEMPORARY.search(p.name)]
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    if leftovers:
        logger.info(
            "removed %d temporary file(s) of an interrupted write", len(leftovers)
        )


def _block_selection(dims: tuple[str, ...], task: Task) -> tuple[Any, ...]:
    """The zarr selection of one task's chunk of a variable with dims `dims`."""
    where = {
        "m": task.m_index,
        "separation": task.separation_index,
        "replicate": slice(task.start, task.stop),
    }
    return tuple(where.get(dim, slice(None)) for dim in dims)


def _whole(values: np.ndarray, fill: Any) -> bool:
    """Whether a chunk's values hold no fill value anywhere."""
    if isinstance(fill, float) and math.isnan(fill):
        return bool(np.isfinite(values).all())
    return bool((values != fill).all())


def _untouched(values: np.ndarray, fill: Any) -> bool:
    """Whether a chunk's values are all the fill value (never written)."""
    if isinstance(fill, float) and math.isnan(fill):
        return bool(np.isnan(values).all())
    return bool((values == fill).all())


def block_states(study: Study, path: str) -> dict[Task, BlockState]:
    """The state of every task's block in the store at `path`.

    Every chunk of every variable is read and checked. A chunk that fails to
    decode (truncated, damaged) makes its block partial; an error of the file
    system or the network (OSError) is raised, since it says nothing about the
    block.

    Returns
    -------
    dict of Task to BlockState
        In the order of `study.tasks()`.
    """
    group = _open_group(path, mode="r")
    if group is None:
        raise SpecError("store", path, "an existing pmstudy store")
    tasks = list(study.tasks())
    whole = dict.fromkeys(tasks, True)
    untouched = dict.fromkeys(tasks, True)
    by_pair: dict[tuple[int, int], list[Task]] = {}
    for task in tasks:
        by_pair.setdefault((task.m_index, task.separation_index), []).append(task)

    for name, (dims, _, fill, _) in _variables(study).items():
        array = group[name]
        replicate_axis = dims.index("replicate") - 2
        for (i, j), pair_tasks in by_pair.items():
            # One read per (m, separation) pair; per-block reads only if it fails.
            try:
                slab = array[i, j]
            except OSError:
                raise
            except Exception:  # a chunk that does not decode; find which one
                slab = None
            for task in pair_tasks:
                if slab is not None:
                    cut = [slice(None)] * slab.ndim
                    cut[replicate_axis] = slice(task.start, task.stop)
                    values = slab[tuple(cut)]
                else:
                    try:
                        values = array[_block_selection(dims, task)]
                    except OSError:
                        raise
                    except Exception as error:
                        logger.warning(
                            "%s: chunk of %r for m=%g, separation=%g, replicates "
                            "%d-%d does not decode (%s); it will be recomputed",
                            path,
                            name,
                            task.m,
                            task.separation,
                            task.start,
                            task.stop - 1,
                            error,
                        )
                        whole[task] = False
                        untouched[task] = False
                        continue
                whole[task] = whole[task] and _whole(values, fill)
                untouched[task] = untouched[task] and _untouched(values, fill)

    def state(task: Task) -> BlockState:
        if whole[task]:
            return BlockState.DONE
        return BlockState.MISSING if untouched[task] else BlockState.PARTIAL

    return {task: state(task) for task in tasks}


def completed_blocks(study: Study, path: str) -> set[tuple[int, int, int]]:
    """The tasks whose blocks are whole in the store.

    Returns
    -------
    set of (m_index, separation_index, start)
    """
    return {
        (task.m_index, task.separation_index, task.start)
        for task, state in block_states(study, path).items()
        if state is BlockState.DONE
    }


class StoreWriter:
    """Writes task blocks into an existing store, keeping its arrays open.

    Parameters
    ----------
    study : Study
    path : str
        A local path or an fsspec URL of a store made by `create_store`.
    """

    def __init__(self, study: Study, path: str) -> None:
        self.study = study
        self.path = path
        self._variables = _variables(study)
        group = zarr.open_group(path, mode="r+", zarr_format=3)
        self._arrays = {name: group[name] for name in self._variables}
        # Chunks of different variables go out concurrently: on an object store
        # each write is a round trip, and a block has a dozen and more of them.
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="store")

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the writer's threads."""
        self._pool.shutdown(wait=True)

    def write(self, task: Task, block: Mapping[str, np.ndarray]) -> None:
        """Write one task's results into its chunk of every variable.

        Parameters
        ----------
        task : Task
        block : mapping of str to ndarray
            Every variable of the store without its m and separation axes: cell
            variables of shape (S, B), center variables (S, B, k, d), oracle
            variables (B,), where B is the number of replicates in the task.

        Raises
        ------
        ValueError
            If a variable is missing, has the wrong shape, or holds a value that
            would read back as "not computed" (a NaN, or an integer's fill).
        """
        missing = set(self._variables) - set(block)
        if missing:
            raise ValueError(f"block lacks variables {sorted(missing)}")
        values = {}
        for name, (dims, dtype, fill, _) in self._variables.items():
            value = np.asarray(block[name], dtype=dtype)
            shape = _shape(self.study, dims)[2:]
            shape = tuple(
                task.stop - task.start if dim == "replicate" else n
                for dim, n in zip(dims[2:], shape, strict=True)
            )
            if value.shape != shape:
                raise ValueError(f"{name!r} has shape {value.shape}, not {shape}")
            if not _whole(value, fill):
                # It would read as "not computed": refuse it loudly.
                raise ValueError(f"refusing to write fill values into {name!r}")
            values[name] = value
        # Every other chunk is written, and has landed, before `outcome`'s.
        outcome = values.pop("outcome")
        for future in [
            self._pool.submit(self._put, name, task, value)
            for name, value in values.items()
        ]:
            future.result()
        self._put("outcome", task, outcome)

    def _put(self, name: str, task: Task, value: np.ndarray) -> None:
        dims = self._variables[name][0]
        self._arrays[name][_block_selection(dims, task)] = value


def write_block(
    study: Study, path: str, task: Task, block: Mapping[str, np.ndarray]
) -> None:
    """Write one task's results into its chunk-aligned region of the store.

    Opens the store on every call; `StoreWriter` keeps it open across blocks.

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
    with StoreWriter(study, path) as writer:
        writer.write(task, block)
