"""The EM benchmark behind ``pmstudy bench``: pmstudy's kernel beside scikit-learn.

Each workload fits the same data from the same initial centers for the same
number of iterations, with no early stopping:

- pmstudy: the numba kernel, the whole batch in one call (mean shift and
  data layout included in the time, compilation excluded by a warm-up);
- scikit-learn: ``GaussianMixture(covariance_type="spherical", tol=0,
  max_iter=iterations, means_init=..., n_init=1, init_params="random")``, one
  data set at a time, the closest a user can get. It also fits the weights
  and the variances, so its centers differ from pmstudy's (the
  difference is reported, not checked).

pmstudy's centers are checked against the NumPy reference path on the first
data sets of the batch; the largest absolute difference is reported. Times
are medians over ``repeats`` runs, in wall seconds.

To say how far from this machine's limit the kernel runs, the bench also
measures the float64 throughput of a large matrix product on all cores (the
best a machine's BLAS does, close to its peak) and reports, per workload,
the rate of the two products EM needs (4 k d flops per point-iteration:
logits and weighted sums) as a fraction of it. The exps of the softmax are not
counted, so for small k * d, where they dominate, the fraction is low by
construction.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass

import numpy as np

from pmstudy.errors import SpecError

logger = logging.getLogger(__name__)

NOTE = (
    "Same data, same initial centers, same number of EM iterations, no early "
    "stopping. pmstudy: numba kernel, whole batch per call. scikit-learn: "
    "GaussianMixture(covariance_type='spherical', tol=0, n_init=1, "
    "init_params='random', means_init=...) one data set at a time; it also "
    "fits weights and variances, a different model, so its centers differ: "
    "by little where the clusters are clear, by more where free weights and "
    "variances lead EM elsewhere ('sklearn gap', the largest coordinate "
    "difference; the work per iteration is the same). 'ref diff' compares "
    "pmstudy's centers with its NumPy reference path. Times are medians of "
    "repeats, wall seconds."
)
_REFERENCE_SETS = 2


@dataclass(frozen=True)
class Workload:
    """One benchmark case: k centers in d dimensions, batch data sets of m."""

    name: str
    k: int
    d: int
    m: int
    batch: int
    iterations: int


FULL = (
    Workload("k3-d2", 3, 2, 10_000, 64, 100),
    Workload("k10-d50", 10, 50, 10_000, 16, 100),
)
QUICK = (
    Workload("k3-d2", 3, 2, 2_000, 8, 20),
    Workload("k10-d50", 10, 50, 1_000, 4, 20),
)


def run_bench(quick: bool = False, repeats: int = 3) -> dict:
    """Time pmstudy's EM kernel and scikit-learn on fixed workloads.

    Parameters
    ----------
    quick : bool
        Small workloads that finish in about 30 seconds.
    repeats : int
        Timed repeats per workload and implementation; medians are reported.

    Returns
    -------
    dict
        ``{"workloads": [...], "note": str, "repeats": int}``; each workload has
        name, k, d, m, batch, iterations, pmstudy_s, sklearn_s, ratio
        (sklearn_s / pmstudy_s), ns_per_point_iteration (pmstudy),
        sklearn_ns_per_point_iteration, reference_max_abs_diff and
        sklearn_center_gap.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise SpecError("repeats", repeats, "an integer >= 1")
    workloads = QUICK if quick else FULL
    peak = machine_gflops()
    rows = [_bench_one(w, repeats, seed, peak) for seed, w in enumerate(workloads)]
    return {
        "workloads": rows,
        "note": NOTE,
        "repeats": repeats,
        "machine": {"matmul_gflops": peak, "cpu_count": os.cpu_count()},
    }


def machine_gflops(size: int = 1024, repeats: int = 3) -> float:
    """float64 GFLOP/s of a (size, size) matrix product on all cores, best of n."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size))
    b = rng.standard_normal((size, size))
    a @ b  # BLAS threads start and the matrices are touched
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


def render(result: dict, fmt: str, table) -> str:
    """A bench result as "json", or as "table" through ``table(result)``."""
    if fmt == "json":
        return json.dumps(result, indent=2)
    if fmt != "table":
        raise SpecError("format", fmt, "'table' or 'json'")
    return table(result)


def format_bench(result: dict, fmt: str) -> str:
    """Render `run_bench` output as "table" (aligned text) or "json"."""
    return render(result, fmt, _table)


def _table(result: dict) -> str:
    header = (
        f"{'workload':<10} {'k':>3} {'d':>3} {'m':>7} {'batch':>5} {'iter':>5} "
        f"{'pmstudy s':>10} {'sklearn s':>10} {'ratio':>7} {'ns/pt-it':>9} "
        f"{'% peak':>7} {'ref diff':>9} {'sklearn gap':>11}"
    )
    lines = [header, "-" * len(header)]
    for row in result["workloads"]:
        lines.append(
            f"{row['name']:<10} {row['k']:>3} {row['d']:>3} {row['m']:>7} "
            f"{row['batch']:>5} {row['iterations']:>5} {row['pmstudy_s']:>10.4f} "
            f"{row['sklearn_s']:>10.4f} {row['ratio']:>7.1f} "
            f"{row['ns_per_point_iteration']:>9.2f} "
            f"{100 * row['peak_fraction']:>7.1f} "
            f"{row['reference_max_abs_diff']:>9.1e} "
            f"{row['sklearn_center_gap']:>11.1e}"
        )
    lines.append("")
    machine = result["machine"]
    lines.append(
        f"Machine: float64 matrix product {machine['matmul_gflops']:.1f} GFLOP/s on "
        f"{machine['cpu_count']} cores. '% peak': the 4 k d flops per "
        "point-iteration of EM's two products at pmstudy's speed, against it "
        "(exps not counted)."
    )
    lines.append(result["note"])
    return "\n".join(lines)


def _problem(workload: Workload, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Data (batch, m, d) from a mixture with separated centers, starts near them."""
    rng = np.random.default_rng(np.random.SeedSequence([20240531, seed]))
    k, d = workload.k, workload.d
    truth = rng.normal(scale=4.0 / np.sqrt(d), size=(workload.batch, k, d))
    labels = rng.integers(0, k, size=(workload.batch, workload.m))
    data = np.take_along_axis(truth, labels[:, :, None], axis=1)
    data += rng.standard_normal(data.shape)
    init = truth + rng.normal(scale=1.0 / np.sqrt(d), size=truth.shape)
    return data, init


def _fit_pmstudy(data: np.ndarray, init: np.ndarray, iterations: int) -> np.ndarray:
    """Fixed-iteration fit with the numba kernel: (R, m, d), (R, k, d) -> (R, k, d)."""
    from pmstudy._kernels import NumbaStepper, single_threaded_blas

    stepper = NumbaStepper(data, 1, init.shape[1])
    shift = stepper.shift[:, None, :]
    runs = np.arange(data.shape[0])
    with single_threaded_blas():
        path, _ = stepper.steps(runs, init - shift, iterations)
    return path[:, -1] + shift


def _fit_reference(data: np.ndarray, init: np.ndarray, iterations: int) -> np.ndarray:
    """The same fit on the NumPy reference path."""
    from pmstudy.em import _NumpyStepper

    stepper = _NumpyStepper(data, 1)
    shift = stepper.shift[:, None, :]
    runs = np.arange(data.shape[0])
    path, _ = stepper.steps(runs, init - shift, iterations)
    return path[:, -1] + shift


def _fit_sklearn(data: np.ndarray, init: np.ndarray, iterations: int) -> np.ndarray:
    """scikit-learn's GaussianMixture on each data set in turn."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    out = np.empty_like(init)
    for r in range(data.shape[0]):
        model = GaussianMixture(
            n_components=init.shape[1],
            covariance_type="spherical",
            tol=0.0,
            max_iter=iterations,
            means_init=init[r],
            n_init=1,
            init_params="random",
            random_state=r,
        )
        # tol=0 never "converges", so every fit warns; that is the point here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(data[r])
        out[r] = model.means_
    return out


def _median_time(func, *args) -> tuple[float, np.ndarray]:
    times = []
    for _ in range(args[-1]):
        start = time.perf_counter()
        result = func(*args[:-1])
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def _bench_one(workload: Workload, repeats: int, seed: int, peak: float) -> dict:
    data, init = _problem(workload, seed)
    iters = workload.iterations
    _fit_pmstudy(data[:1], init[:1], 1)  # compile or load the kernel

    pm_s, pm_centers = _median_time(_fit_pmstudy, data, init, iters, repeats)
    sk_s, sk_centers = _median_time(_fit_sklearn, data, init, iters, repeats)
    few = slice(0, _REFERENCE_SETS)
    reference = _fit_reference(data[few], init[few], iters)

    work = workload.batch * workload.m * iters
    flops = 4 * workload.k * workload.d
    row = {
        "name": workload.name,
        "k": workload.k,
        "d": workload.d,
        "m": workload.m,
        "batch": workload.batch,
        "iterations": iters,
        "pmstudy_s": pm_s,
        "sklearn_s": sk_s,
        "ratio": sk_s / pm_s,
        "ns_per_point_iteration": pm_s / work * 1e9,
        "sklearn_ns_per_point_iteration": sk_s / work * 1e9,
        "flops_per_point_iteration": flops,
        "gflops": flops * work / pm_s / 1e9,
        "peak_fraction": flops * work / pm_s / 1e9 / peak,
        "reference_max_abs_diff": float(np.abs(pm_centers[few] - reference).max()),
        "sklearn_center_gap": float(np.abs(pm_centers - sk_centers).max()),
    }
    logger.info("bench %s: %s", workload.name, row)
    return row
