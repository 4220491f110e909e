"""Benchmark of the population integrals: error against time for r = 1, 2, 3.

For each rank r a fixed workload (true centers and a few points: the truth,
a perturbed point and a point with the centers farther apart, where the
switching is sharpest) is evaluated with the piecewise Gauss-Legendre rule
at several n (nodes per panel). For each n the benchmark reports the wall
time of one population EM step per point (median of repeats, all cores), the
innermost evaluations per point, and the largest error against a reference
(n = `_REFERENCE_N[r]` on finer panels). It then times the default call,
`population_step` (two rules n, n + 2 with the adaptive choice of n), and
reports its error estimate beside its actual error.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from pmstudy.population import population_step
from pmstudy.population.core import evaluate, evaluate_rule
from pmstudy.population.quadrature import PanelRule

logger = logging.getLogger(__name__)

_REFERENCE_RULE = PanelRule(drop=50.0, first=0.4, growth=2.0, cap=1.0)
_REFERENCE_N = {1: 24, 2: 20, 3: 14}
_NODES = {1: (4, 6, 8, 10, 12), 2: (4, 6, 8, 10, 12), 3: (4, 6, 8, 10)}
_NODES_QUICK = {1: (6, 8, 10), 2: (6, 8, 10), 3: (6, 8)}


def _workloads() -> dict[int, tuple[str, np.ndarray, np.ndarray]]:
    """r -> (description, true centers (k, d), points (P, k, d))."""
    rng = np.random.default_rng(np.random.SeedSequence(1234))
    triangle = 3.0 * np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3.0) / 2.0]])
    tetra = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float)
    tetra *= 3.0 / math.sqrt(8.0)  # edges of length 3
    line = np.array([[0.0], [2.0], [8.0]])
    out = {}
    for r, name, truth in (
        (1, "k=3 d=1, centers 0, 2, 8", line),
        (2, "k=3 d=2, triangle of side 3", triangle),
        (3, "k=4 d=3, regular tetrahedron of edge 3", tetra),
    ):
        mid = truth.mean(axis=0)
        points = np.stack(
            [
                truth,
                truth + 0.5 * rng.standard_normal(truth.shape),
                mid + 2.0 * (truth - mid),
            ]
        )
        out[r] = (name, truth, points)
    return out


def _timed(func, repeats: int) -> tuple[float, object]:
    """Median wall time of func() over repeats (after one warm-up call)."""
    result = func()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def run_population_bench(
    quick: bool = False, repeats: int = 3, ranks: tuple[int, ...] = (1, 2, 3)
) -> dict:
    """Error against time of the population EM step for r = 1, 2, 3.

    Parameters
    ----------
    quick : bool
        Fewer n and points, one repeat, a cheaper reference: well under a
        minute in all.
    repeats : int
        Timed repeats per measurement (median reported).
    ranks : tuple of int
        Which of r = 1, 2, 3 to measure.

    Returns
    -------
    dict
        JSON-ready: ``{"rows": [{"r", "workload", "n", "seconds_per_step",
        "evaluations_per_step", "max_error"}], "default": [{"r", "workload",
        "seconds_per_step", "nodes", "estimated_error", "actual_error"}],
        "note": str}``. Times are per point and per step, median of repeats.
    """
    nodes = _NODES_QUICK if quick else _NODES
    repeats = 1 if quick else repeats
    rows = []
    default = []
    for r, (name, truth, points) in _workloads().items():
        if r not in ranks:
            continue
        if quick:
            # One point and a reference four nodes above the largest n on
            # the default panels: its error is still about 1e-14.
            points = points[1:2]
            reference, _ = evaluate_rule("step", truth, points, max(nodes[r]) + 4)
        else:
            reference, _ = evaluate(
                "step", truth, points, n_nodes=_REFERENCE_N[r], rule=_REFERENCE_RULE
            )
        n_points = len(points)
        for n in nodes[r]:
            seconds, (value, n_eval) = _timed(
                lambda n=n, t=truth, p=points: evaluate_rule("step", t, p, n), repeats
            )
            rows.append(
                {
                    "r": r,
                    "workload": name,
                    "n": n,
                    "seconds_per_step": seconds / n_points,
                    "evaluations_per_step": n_eval // n_points,
                    "max_error": float(np.abs(value - reference).max()),
                }
            )
            logger.info("population bench r=%d n=%d: %.2e s", r, n, seconds)
        seconds, (value, error) = _timed(
            lambda truth=truth, points=points: population_step(truth, points), repeats
        )
        _, acc = evaluate("step", truth, points)
        default.append(
            {
                "r": r,
                "workload": name,
                "seconds_per_step": seconds / n_points,
                "nodes": int(acc.nodes.max()),
                "estimated_error": float(error.max()),
                "actual_error": float(np.abs(value - reference).max()),
            }
        )
    note = (
        "One population EM step per point; 'n' is Gauss-Legendre nodes per "
        "panel on every level. max_error: largest absolute error of the step "
        f"against n = {_REFERENCE_N} on finer panels (quick: n + 4 on the same "
        "panels). The default call uses "
        "two rules (n and n + 2) for its error estimate, so it costs about "
        "the sum of two rows."
    )
    return {"rows": rows, "default": default, "note": note}


def format_population_bench(result: dict, fmt: str = "table") -> str:
    """Render `run_population_bench` output as "table" or "json"."""
    from pmstudy.bench import render

    return render(result, fmt, _table)


def _table(result: dict) -> str:
    lines = [f"{'r':>2} {'n':>3} {'ms/step':>10} {'evaluations':>12} {'max error':>10}"]
    for row in result["rows"]:
        lines.append(
            f"{row['r']:>2} {row['n']:>3} {1e3 * row['seconds_per_step']:>10.3f} "
            f"{row['evaluations_per_step']:>12d} {row['max_error']:>10.1e}"
        )
    lines.append("")
    lines.append(
        f"{'r':>2} {'default ms/step':>16} {'n':>3} {'estimated':>10} {'actual':>10}"
    )
    for row in result["default"]:
        lines.append(
            f"{row['r']:>2} {1e3 * row['seconds_per_step']:>16.3f} {row['nodes']:>3} "
            f"{row['estimated_error']:>10.1e} {row['actual_error']:>10.1e}"
        )
    lines.append("")
    lines.extend(f"r={row['r']}: {row['workload']}" for row in result["default"])
    lines.append(result["note"])
    return "\n".join(lines)
