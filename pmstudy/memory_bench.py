"""Peak memory of one large EM fit, behind ``pmstudy bench --memory``.

Memory beyond the data must not grow with m: a worker holds the data set, its
mean-shifted copy, the kernel's layout of it (points last) and buffers whose
size depends on k, d and the batch, never on m. The bench fits m = 10^6
points in d = 10 (80 MB of data) with each of the two kernels (k = 3 takes
the fused kernel, k = 10 the register-blocked one) in a fresh Python process
and reports that process's peak resident memory, interpreter, NumPy, numba and
the loaded kernels included: what one Dask worker would need.
"""

from __future__ import annotations

import json
import logging
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

logger = logging.getLogger(__name__)

LIMIT_MB = 2048.0  # the budget of one worker: 2 GiB


@dataclass(frozen=True)
class MemoryCase:
    """One fit: `starts` runs of EM on one data set of m points."""

    name: str
    k: int
    d: int
    m: int
    starts: int
    iterations: int


FULL = (
    MemoryCase("k3-d10-m1e6", 3, 10, 1_000_000, 8, 20),
    MemoryCase("k10-d10-m1e6", 10, 10, 1_000_000, 8, 20),
)
QUICK = (
    MemoryCase("k3-d10-m1e5", 3, 10, 100_000, 4, 5),
    MemoryCase("k10-d10-m1e5", 10, 10, 100_000, 4, 5),
)


def run_memory_bench(quick: bool = False) -> dict:
    """Fit each case in a fresh process and collect its peak memory.

    Returns
    -------
    dict
        ``{"cases": [...], "limit_mb": 2048.0, "note": str}``; each case has
        name, k, d, m, starts, iterations, data_mb (the data set alone),
        peak_mb (peak resident memory of the process), seconds and
        within_limit.
    """
    rows = []
    for case in QUICK if quick else FULL:
        # A tiny fit first, so that the measured process loads the compiled
        # kernels from numba's cache instead of compiling them (compilation
        # alone can take 100 MB more than the fit).
        warm = (case.k, case.d, 1000, 1, 1)
        subprocess.run(
            [sys.executable, "-m", "pmstudy.memory_bench", *map(str, warm)],
            capture_output=True,
            check=False,
        )
        args = [str(v) for v in (case.k, case.d, case.m, case.starts, case.iterations)]
        done = subprocess.run(
            [sys.executable, "-m", "pmstudy.memory_bench", *args],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"memory bench case {case.name} failed: {done.stderr.strip()[-500:]}"
            )
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        row = {**asdict(case), **measured}
        row["within_limit"] = row["peak_mb"] <= LIMIT_MB
        logger.info("memory bench %s: %s", case.name, row)
        rows.append(row)
    note = (
        "Peak resident memory of a fresh Python process that fits one data set "
        "of m points with `starts` EM runs (numba kernels), interpreter and "
        "libraries included."
    )
    return {"cases": rows, "limit_mb": LIMIT_MB, "note": note}


def format_memory_bench(result: dict, fmt: str) -> str:
    """Render `run_memory_bench` output as "table" or "json"."""
    from pmstudy.bench import render

    return render(result, fmt, _table)


def _table(result: dict) -> str:
    header = (
        f"{'case':<14} {'k':>3} {'d':>3} {'m':>8} {'starts':>6} "
        f"{'data MB':>8} {'peak MB':>8} {'seconds':>8} {'<= 2 GiB':>8}"
    )
    lines = [header, "-" * len(header)]
    for row in result["cases"]:
        lines.append(
            f"{row['name']:<14} {row['k']:>3} {row['d']:>3} {row['m']:>8} "
            f"{row['starts']:>6} {row['data_mb']:>8.1f} {row['peak_mb']:>8.1f} "
            f"{row['seconds']:>8.2f} {'yes' if row['within_limit'] else 'NO':>8}"
        )
    lines += ["", result["note"]]
    return "\n".join(lines)


def _child(k: int, d: int, m: int, starts: int, iterations: int) -> dict:
    """Fit one case in this process; returns data_mb, peak_mb and seconds."""
    from pmstudy.em import fit_em

    rng = np.random.default_rng(20241204)
    truth = rng.normal(scale=3.0, size=(k, d))
    data = truth[rng.integers(0, k, size=m)] + rng.standard_normal((m, d))
    init = truth[None] + rng.normal(scale=0.5, size=(starts, k, d))
    start = time.perf_counter()
    result = fit_em(data[None], init[None], max_iter=iterations, tol=1e-12)
    seconds = time.perf_counter() - start
    if not np.all(np.isfinite(result.centers)):
        raise RuntimeError("non-finite centers")
    # ru_maxrss is in kilobytes on Linux.
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mb = peak_kb / 1024
    return {"data_mb": data.nbytes / 2**20, "peak_mb": peak_mb, "seconds": seconds}


if __name__ == "__main__":
    values = [int(v) for v in sys.argv[1:6]]
    print(json.dumps(_child(*values)))
