"""The study spec: a TOML file, validated once at load, and the grid it defines.

A spec names the mixture (k, d, layout), the grid (separations and sample sizes m),
the initialization schemes, the number of replicates and how many one task handles
(the block), the EM budget and tolerances, the outcome tolerances, and where the
store goes. Every field is checked here, before anything runs or is written; an
error names the field, the value and what would be valid.

Example::

    name = "quickstart"
    seed = 20261204
    k = 3
    d = 1
    replicates = 200
    block = 50
    schemes = ["forgy", "kmeans++", "uniform-box"]

    [layout]
    name = "points"
    centers = [[0.0], [1.0], [4.0]]

    [grid]
    separation = [1, 2, 3, 4]
    m = [30, 100, 300, 1000, 3000]      # "inf" adds the population limit

    [em]
    max_iter = 20000
    tol = 1e-8
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pmstudy import mixture, schemes, seeds
from pmstudy.errors import SpecError

__all__ = [
    "MAX_K",
    "MAX_TASK_BYTES",
    "SchemeSpec",
    "Study",
    "Task",
    "load_spec",
    "parse_spec",
]

_TOP_KEYS = {
    "name",
    "seed",
    "k",
    "d",
    "replicates",
    "block",
    "store",
    "schemes",
    "layout",
    "grid",
    "em",
    "outcome",
    "population",
}
_REQUIRED_TOP = ("seed", "k", "d", "replicates", "schemes", "layout", "grid")
_EM_DEFAULTS = {"max_iter": 20000, "tol": 1e-8}
_OUTCOME_DEFAULTS = {"center_tol": 1e-3, "loglik_tol": 1e-6}
_POPULATION_DEFAULTS = {
    "proxy_size": 10000,
    "same_init": False,
    "max_iter": 20000,
    "tol": 1e-8,
}
_DEFAULT_BLOCK = 50

# The store counts merged and split true centers per run in int8, and outcome
# matching is a Hungarian assignment, cubic in k, per run; 100 keeps both well
# inside their range and is already far beyond what a Monte Carlo study of P_m
# can afford.
MAX_K = 100

# One task holds its block's data sets, (block, m, d) float64, about four times
# over: the samples, the EM kernel's centered copy, the temporary it is made
# from and the kernel's points-last layout. A task that needs more than this
# would fail on its worker, after the store was created, so such a spec is
# refused at load.
MAX_TASK_BYTES = 8 * 2**30
_TASK_DATA_COPIES = 4
# Each of the block x (1 + schemes) runs of a task holds its k x d centers
# many times over: start and end, the EM path of a chunk of steps (at least
# nine points), the merge carry's trial copy, the outcome's work arrays. In
# large d this, not the data, is what fills a worker.
_TASK_CENTER_COPIES = 16


@dataclass(frozen=True)
class SchemeSpec:
    """One entry on the study's scheme axis.

    Attributes
    ----------
    label : str
        The name on the scheme axis (and in the seeds); defaults to ``name``.
    name : str
        The registered scheme.
    params : dict
        Its normalized parameters.
    """

    label: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """One unit of work: a replicate block of one (m, separation) pair.

    Every scheme of the study runs on the same data sets in one task, since the
    best-known maximum of a data set is judged over all of its runs.
    """

    m_index: int
    separation_index: int
    m: float
    separation: float
    start: int
    stop: int

    @property
    def replicates(self) -> range:
        """The replicate indices this task handles."""
        return range(self.start, self.stop)


@dataclass(frozen=True)
class Study:
    """A validated study spec. Build it with `load_spec` or `parse_spec`."""

    name: str
    seed: int
    k: int
    d: int
    layout: str
    layout_params: dict[str, Any]
    separations: tuple[float, ...]
    ms: tuple[float, ...]
    schemes: tuple[SchemeSpec, ...]
    replicates: int
    block: int
    max_iter: int
    tol: float
    center_tol: float
    loglik_tol: float
    proxy_size: int
    same_init: bool
    population_max_iter: int
    population_tol: float
    store: str
    text: str

    @property
    def scheme_labels(self) -> tuple[str, ...]:
        """Labels on the scheme axis, in spec order."""
        return tuple(s.label for s in self.schemes)

    @property
    def has_population(self) -> bool:
        """Whether any population (infinite-sample) EM runs are needed."""
        return any(math.isinf(m) for m in self.ms) or self.same_init

    def normalized(self) -> dict[str, Any]:
        """The spec as plain data, defaults filled in; equal specs compare equal.

        The store location is left out: moving a store does not change its study.
        """
        return {
            "name": self.name,
            "seed": self.seed,
            "k": self.k,
            "d": self.d,
            "layout": {"name": self.layout, **self.layout_params},
            "separation": list(self.separations),
            "m": ["inf" if math.isinf(m) else int(m) for m in self.ms],
            "schemes": [
                {"label": s.label, "name": s.name, **s.params} for s in self.schemes
            ],
            "replicates": self.replicates,
            "block": self.block,
            "em": {"max_iter": self.max_iter, "tol": self.tol},
            "outcome": {"center_tol": self.center_tol, "loglik_tol": self.loglik_tol},
            "population": {
                "proxy_size": self.proxy_size,
                "same_init": self.same_init,
                "max_iter": self.population_max_iter,
                "tol": self.population_tol,
            },
        }

    def digest(self) -> str:
        """SHA-256 of the normalized spec: the study's identity."""
        blob = json.dumps(self.normalized(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def tasks(self) -> Iterator[Task]:
        """Every task of the study, m-major, in replicate-block order."""
        for i, m in enumerate(self.ms):
            for j, separation in enumerate(self.separations):
                for start in range(0, self.replicates, self.block):
                    stop = min(start + self.block, self.replicates)
                    yield Task(i, j, m, separation, start, stop)


def load_spec(path: str | Path) -> Study:
    """Read and validate a study spec from a TOML file.

    Parameters
    ----------
    path : str or Path
        The spec file.

    Returns
    -------
    Study

    Raises
    ------
    SpecError
        If the file is missing, is not valid TOML, or any field is invalid.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(
            "spec", str(path), "the path of an existing TOML file"
        ) from None
    except (IsADirectoryError, UnicodeDecodeError) as error:
        raise SpecError(
            "spec", str(path), f"a readable UTF-8 TOML file ({error})"
        ) from None
    return parse_spec(text, default_name=path.stem)


def parse_spec(text: str, *, default_name: str = "study") -> Study:
    """Validate a study spec given as TOML text; see the module docstring."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SpecError("spec", "<TOML text>", f"valid TOML ({error})") from None

    _reject_unknown(raw, _TOP_KEYS, "")
    for key in _REQUIRED_TOP:
        if key not in raw:
            raise SpecError(key, None, "present: it is a required field")

    name = raw.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise SpecError("name", name, "a non-empty string")
    seed = _integer(raw, "seed", minimum=0)
    k = _integer(raw, "k", minimum=1, maximum=MAX_K)
    d = _integer(raw, "d", minimum=1)
    replicates = _integer(raw, "replicates", minimum=1)
    block = _integer(raw, "block", minimum=1) if "block" in raw else None
    block = min(block or _DEFAULT_BLOCK, replicates)

    layout_raw = _table(raw, "layout")
    layout = layout_raw.get("name")
    if layout is None:
        raise SpecError("layout.name", None, f"one of {list(mixture.LAYOUTS)}")
    if not isinstance(layout, str) or layout not in mixture.LAYOUTS:
        raise SpecError("layout.name", layout, f"one of {list(mixture.LAYOUTS)}")
    layout_params = mixture.check_layout(
        layout, k, d, {key: v for key, v in layout_raw.items() if key != "name"}
    )

    grid = _table(raw, "grid")
    _reject_unknown(grid, {"separation", "m"}, "grid.")
    separations = _separations(grid)
    scheme_specs = _schemes(raw["schemes"], k, d)
    # Before anything of size k x d is built (the layout, below).
    _check_center_memory(block, len(scheme_specs), k, d)
    _check_center_magnitude(seed, k, d, layout, layout_params, separations)
    ms = _sample_sizes(grid, k)
    _check_task_size(ms, block, d, k, "grid.m")

    em = {**_EM_DEFAULTS, **_table(raw, "em", required=False)}
    _reject_unknown(em, set(_EM_DEFAULTS), "em.")
    max_iter = _integer(em, "max_iter", minimum=1, prefix="em.")
    tol = _positive_float(em, "tol", prefix="em.")

    outcome = {**_OUTCOME_DEFAULTS, **_table(raw, "outcome", required=False)}
    _reject_unknown(outcome, set(_OUTCOME_DEFAULTS), "outcome.")
    center_tol = _positive_float(outcome, "center_tol", prefix="outcome.")
    loglik_tol = _positive_float(outcome, "loglik_tol", prefix="outcome.")

    population = {**_POPULATION_DEFAULTS, **_table(raw, "population", required=False)}
    _reject_unknown(population, set(_POPULATION_DEFAULTS), "population.")
    proxy_size = _integer(population, "proxy_size", minimum=k + 1, prefix="population.")
    if any(math.isinf(m) for m in ms):
        # At m = inf each replicate draws a proxy sample of this size instead.
        _check_task_size((float(proxy_size),), block, d, k, "population.proxy_size")
    same_init = population["same_init"]
    if not isinstance(same_init, bool):
        raise SpecError("population.same_init", same_init, "true or false")
    population_max_iter = _integer(
        population, "max_iter", minimum=1, prefix="population."
    )
    population_tol = _positive_float(population, "tol", prefix="population.")

    store = raw.get("store", f"data/runs/{name}.zarr")
    if not isinstance(store, str) or not store.strip():
        raise SpecError("store", store, "a non-empty path or URL string")

    return Study(
        name=name,
        seed=seed,
        k=k,
        d=d,
        layout=layout,
        layout_params=layout_params,
        separations=separations,
        ms=ms,
        schemes=scheme_specs,
        replicates=replicates,
        block=block,
        max_iter=max_iter,
        tol=tol,
        center_tol=center_tol,
        loglik_tol=loglik_tol,
        proxy_size=proxy_size,
        same_init=same_init,
        population_max_iter=population_max_iter,
        population_tol=population_tol,
        store=store,
        text=text,
    )


def _reject_unknown(table: Mapping[str, Any], known: set[str], prefix: str) -> None:
    """Refuse keys the spec does not define: a typo must not pass silently."""
    for key in table:
        if key not in known:
            raise SpecError(f"{prefix}{key}", table[key], f"one of {sorted(known)}")


def _table(raw: Mapping[str, Any], key: str, *, required: bool = True) -> dict:
    value = raw.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise SpecError(key, value, "a TOML table ([" + key + "])")
    return value


def _integer(
    table: Mapping[str, Any],
    key: str,
    *,
    minimum: int,
    maximum: int | None = None,
    prefix: str = "",
) -> int:
    value = table.get(key)
    expected = (
        f"an integer >= {minimum}"
        if maximum is None
        else f"an integer from {minimum} to {maximum}"
    )
    # bool is an int in Python; a spec that says `k = true` is a mistake.
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise SpecError(f"{prefix}{key}", value, expected)
    if maximum is not None and value > maximum:
        raise SpecError(f"{prefix}{key}", value, expected)
    return value


def _positive_float(table: Mapping[str, Any], key: str, *, prefix: str = "") -> float:
    value = table.get(key)
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise SpecError(f"{prefix}{key}", value, "a finite number > 0")
    return float(value)


def _separations(grid: Mapping[str, Any]) -> tuple[float, ...]:
    values = grid.get("separation")
    if not isinstance(values, list) or not values:
        raise SpecError("grid.separation", values, "a non-empty list of numbers > 0")
    out = []
    for value in values:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value <= 0:
            raise SpecError("grid.separation", value, "a finite number > 0")
        out.append(float(value))
    if len(set(out)) != len(out):
        raise SpecError("grid.separation", values, "a list without repeated values")
    return tuple(out)


def _sample_sizes(grid: Mapping[str, Any], k: int) -> tuple[float, ...]:
    values = grid.get("m")
    expected = f'a non-empty list of integers > k = {k}, or "inf"'
    if not isinstance(values, list) or not values:
        raise SpecError("grid.m", values, expected)
    out: list[float] = []
    for value in values:
        if isinstance(value, str) and value.strip().lower() == "inf":
            out.append(math.inf)
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value <= k:
            raise SpecError("grid.m", value, f'an integer > k = {k}, or "inf"')
        out.append(float(value))
    # The m axis of the store is in spec order and every reading of it (where
    # P_m first reaches a level, the curves) walks it upwards: an order given
    # here is kept, so it must be the increasing one.
    if any(b <= a for a, b in zip(out, out[1:], strict=False)):
        raise SpecError(
            "grid.m",
            values,
            'a strictly increasing list, without repeats, with "inf" (if any) last',
        )
    return tuple(out)


def _check_task_size(
    sizes: tuple[float, ...], block: int, d: int, k: int, field_name: str
) -> None:
    """Refuse a sample size whose task would not fit in `MAX_TASK_BYTES`."""
    per_point = _TASK_DATA_COPIES * block * d * 8
    largest = max((m for m in sizes if math.isfinite(m)), default=0.0)
    if largest * per_point <= MAX_TASK_BYTES:
        return
    allowed = MAX_TASK_BYTES // per_point
    knob = (
        "a smaller `block` allows a larger m"
        if allowed > k
        else f"m must exceed k = {k}, so `block` or `d` must be smaller"
    )
    raise SpecError(
        field_name,
        int(largest),
        f"at most {allowed:,} with block = {block} and d = {d} (one task holds "
        f"its block of data sets, block x m x d float64, about "
        f"{_TASK_DATA_COPIES} times, and must fit in "
        f"{MAX_TASK_BYTES / 2**30:g} GiB; {knob})",
    )


def _check_center_memory(block: int, n_schemes: int, k: int, d: int) -> None:
    """Refuse a task whose runs' centers would not fit in `MAX_TASK_BYTES`."""
    per_run = _TASK_CENTER_COPIES * k * d * 8
    runs = block * (1 + n_schemes)
    if runs * per_run <= MAX_TASK_BYTES:
        return
    limit = f"{MAX_TASK_BYTES / 2**30:g} GiB"
    allowed = MAX_TASK_BYTES // (per_run * (1 + n_schemes))
    if allowed >= 1:
        raise SpecError(
            "block",
            block,
            f"at most {allowed:,} with k = {k}, d = {d} and {n_schemes} scheme(s) "
            f"(each of the block x (1 + schemes) runs of a task holds its k x d "
            f"centers about {_TASK_CENTER_COPIES} times, within {limit})",
        )
    largest = MAX_TASK_BYTES // (_TASK_CENTER_COPIES * k * 8 * (1 + n_schemes))
    raise SpecError(
        "d",
        d,
        f"at most {largest:,} with k = {k} and {n_schemes} scheme(s) (the runs of "
        f"one data set hold their k x d centers about {_TASK_CENTER_COPIES} "
        f"times, within {limit})",
    )


def _check_center_magnitude(
    seed: int,
    k: int,
    d: int,
    layout: str,
    params: dict[str, Any],
    separations: tuple[float, ...],
) -> None:
    """Refuse separations whose true centers the schemes would refuse as data.

    The centers scale linearly with the separation (the layout's shape drawn
    from the same stream at every separation, see `pmstudy.store.true_centers`),
    so the shape at separation 1 bounds them all.
    """
    # The limit the schemes apply to data: one constant for both.
    limit = schemes.MAX_ABS_COORDINATE
    rng = seeds.stream(seed, "layout")
    shape = mixture.layout_centers(layout, k, d, 1.0, params, rng)
    spread = float(np.max(np.abs(shape)))
    largest = max(separations)
    if spread * largest < limit:
        return
    raise SpecError(
        "grid.separation",
        largest,
        f"at most {limit / spread:.3g} for this layout: the true centers (and so "
        f"the data) must have coordinates below {limit:.0e} in absolute value",
    )


def _schemes(values: Any, k: int, d: int) -> tuple[SchemeSpec, ...]:
    expected = (
        f"a non-empty list of scheme names from {list(schemes.SCHEMES)} or tables "
        '{name = "...", label = "...", <params>}'
    )
    if not isinstance(values, list) or not values:
        raise SpecError("schemes", values, expected)
    out: list[SchemeSpec] = []
    for entry in values:
        if isinstance(entry, str):
            name, label, params = entry, entry, {}
        elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
            name = entry["name"]
            label = entry.get("label", name)
            params = {
                key: v for key, v in entry.items() if key not in {"name", "label"}
            }
        else:
            raise SpecError("schemes", entry, expected)
        if name not in schemes.SCHEMES:
            raise SpecError("schemes", name, f"one of {list(schemes.SCHEMES)}")
        if not isinstance(label, str) or not label.strip() or label == "oracle":
            raise SpecError(
                f"schemes.{name}.label", label, 'a non-empty string other than "oracle"'
            )
        params = schemes.check_scheme(name, params, k=k, d=d)
        out.append(SchemeSpec(label=label, name=name, params=params))
    labels = [s.label for s in out]
    if len(set(labels)) != len(labels):
        raise SpecError("schemes", labels, "unique labels (give repeats a `label`)")
    return tuple(out)
