"""The Dask orchestration of a study: tasks, the per-block work, writing, resuming.

One task handles one replicate block of one (m, separation) pair: it samples the
block's data sets, draws every scheme's initial centers on each, runs one batched
EM over (oracle + schemes) x replicates, and judges the outcomes. Results are small
and travel back to the client, which alone writes them into the store as tasks
finish. Tasks already in the store are skipped, so a rerun resumes.

Every random stream is keyed by stable values (see `pmstudy.seeds`), and every EM
run's result is independent of the other runs in its batch, so the store is the
same bit for bit whatever the number of workers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from pmstudy import em, mixture, schemes, seeds
from pmstudy.outcome import SUCCESS, UNDECIDED, judge, matched_distance
from pmstudy.store import completed_blocks, prepare_store, true_centers, write_block
from pmstudy.study import Study, Task

logger = logging.getLogger(__name__)

__all__ = ["RunSummary", "run_block", "run_study"]


@dataclass(frozen=True)
class RunSummary:
    """What a call to `run_study` did."""

    store: str
    tasks_total: int
    tasks_skipped: int
    tasks_run: int
    seconds: float


def _initial_centers(
    study: Study, task: Task, samples: np.ndarray, centers_true: np.ndarray
) -> np.ndarray:
    """Initial centers of the oracle and every scheme on every sample.

    Returns
    -------
    ndarray of shape (B, 1 + S, k, d)
        Start 0 is the oracle (the true centers).
    """
    n_blocks = len(task.replicates)
    inits = np.empty((n_blocks, 1 + len(study.schemes), study.k, study.d))
    inits[:, 0] = centers_true
    for s, scheme in enumerate(study.schemes, start=1):
        for b, replicate in enumerate(task.replicates):
            rng = seeds.stream(
                study.seed,
                "init",
                m=task.m,
                separation=task.separation,
                scheme=scheme.label,
                replicate=replicate,
            )
            inits[b, s] = schemes.initial_centers(
                scheme.name,
                samples[b],
                study.k,
                rng,
                centers_true=centers_true,
                params=scheme.params,
            )
    return inits


def _samples(study: Study, task: Task, centers_true: np.ndarray) -> np.ndarray:
    """The block's data sets, or its proxy samples when m is infinite.

    Returns
    -------
    ndarray of shape (B, m, d), or (B, proxy_size, d)
    """
    population = math.isinf(task.m)
    size = study.proxy_size if population else int(task.m)
    purpose = "proxy" if population else "data"
    out = np.empty((len(task.replicates), size, study.d))
    for b, replicate in enumerate(task.replicates):
        rng = seeds.stream(
            study.seed,
            purpose,
            m=task.m,
            separation=task.separation,
            replicate=replicate,
        )
        out[b] = mixture.sample_mixture(centers_true, size, rng)
    return out


def _population_fit(
    study: Study, centers_true: np.ndarray, inits: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Population EM from every start; shapes follow `inits` (..., k, d)."""
    from pmstudy import population  # heavy; only studies that need it pay for it

    lead = inits.shape[:-2]
    flat = inits.reshape(-1, study.k, study.d)
    result = population.population_em(
        centers_true,
        flat,
        max_iter=study.population_max_iter,
        tol=study.population_tol,
    )
    return (
        result.centers.reshape(inits.shape),
        result.loglik.reshape(lead),
        result.end.reshape(lead).astype(np.int8),
        result.n_iter.reshape(lead),
    )


def run_block(study: Study, task: Task) -> dict[str, np.ndarray]:
    """Run one task: sample, initialize, fit, judge.

    Parameters
    ----------
    study : Study
    task : Task

    Returns
    -------
    dict of str to ndarray
        Every store variable for this block, without the m and separation axes:
        cell variables (S, B), center variables (S, B, k, d), oracle variables (B,).
    """
    centers_true = true_centers(study, task.separation)
    samples = _samples(study, task, centers_true)
    inits = _initial_centers(study, task, samples, centers_true)

    if math.isinf(task.m):
        centers, loglik, end, n_iter = _population_fit(study, centers_true, inits)
        starved = np.zeros(end.shape, dtype=bool)
    else:
        fit = em.fit_em(samples, inits, max_iter=study.max_iter, tol=study.tol)
        centers, loglik, end, n_iter = fit.centers, fit.loglik, fit.end, fit.n_iter
        starved = fit.starved

    verdict = judge(
        centers,
        loglik,
        end,
        centers_true,
        center_tol=study.center_tol,
        loglik_tol=study.loglik_tol,
    )

    def schemes_first(array: np.ndarray) -> np.ndarray:
        # (B, 1 + S, ...) -> (S, B, ...): drop the oracle, scheme axis leading.
        return np.swapaxes(array[:, 1:], 0, 1)

    block = {
        "outcome": schemes_first(verdict.outcome),
        "end": schemes_first(end),
        "n_iter": schemes_first(n_iter),
        "loglik": schemes_first(loglik),
        "loglik_gap": schemes_first(verdict.loglik_gap),
        "center_error": schemes_first(verdict.center_error),
        "n_merged": schemes_first(verdict.n_merged),
        "n_split": schemes_first(verdict.n_split),
        "starved": schemes_first(starved.astype(np.int8)),
        "centers_init": schemes_first(inits),
        "centers_final": schemes_first(centers),
        "oracle_end": end[:, 0],
        "oracle_loglik": loglik[:, 0],
        "oracle_center_error": verdict.center_error[:, 0],
        "oracle_outcome": verdict.outcome[:, 0],
        "best_loglik": verdict.best_loglik,
    }
    if study.same_init:
        # Population EM from the very starts of the finite runs (at m = inf the runs
        # already are population runs) separates failures of the landscape itself
        # from those that only a finite sample creates.
        if math.isinf(task.m):
            reference, reference_end = centers[:, 1:], end[:, 1:]
        else:
            reference, _, reference_end, _ = _population_fit(
                study, centers_true, inits[:, 1:]
            )
        block["population_success"] = _reached_truth(
            study, reference, reference_end, centers_true
        )
    return block


def _reached_truth(
    study: Study, centers: np.ndarray, end: np.ndarray, centers_true: np.ndarray
) -> np.ndarray:
    """Whether each population run ended at the truth.

    The population likelihood's global maxima are the permutations of the true
    centers, so ending there is success. Codes follow the outcome's: 0 fail,
    1 success, 2 undecided (the budget ran out).

    Parameters
    ----------
    centers : ndarray of shape (B, S, k, d)
    end : ndarray of shape (B, S)

    Returns
    -------
    ndarray of shape (S, B), int8
    """
    out = np.empty(end.shape, dtype=np.int8)
    for index in np.ndindex(end.shape):
        if end[index] == em.END_BUDGET:
            out[index] = UNDECIDED
        else:
            close = matched_distance(centers[index], centers_true) <= study.center_tol
            out[index] = SUCCESS if close else 0
    return np.swapaxes(out, 0, 1)


@contextlib.contextmanager
def _client(
    workers: int | None, scheduler: str | None, scheduler_file: str | None
) -> Iterator[object]:
    """A distributed Client: an existing cluster's, or a new local one."""
    from distributed import Client, LocalCluster

    if scheduler or scheduler_file:
        client = Client(address=scheduler, scheduler_file=scheduler_file)
        logger.info("connected to scheduler %s", client.scheduler.address)
        try:
            yield client
        finally:
            client.close()
        return
    n_workers = workers or os.cpu_count() or 1
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    )
    client = Client(cluster)
    logger.info(
        "local cluster of %d worker(s); dashboard at %s",
        n_workers,
        client.dashboard_link,
    )
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def run_study(
    study: Study,
    store: str | None = None,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> RunSummary:
    """Run every task of `study` not yet in its store, and write the results.

    Parameters
    ----------
    study : Study
    store : str, optional
        Store location; defaults to the spec's.
    workers : int, optional
        Worker processes of the local cluster (default: one per core).
    scheduler, scheduler_file : str, optional
        Use an existing Dask cluster instead of a local one.
    on_progress : callable, optional
        Called as ``on_progress(done, total)`` after each block is written.

    Returns
    -------
    RunSummary
    """
    from distributed import as_completed

    path = store or study.store
    started = time.perf_counter()
    prepare_store(study, path)
    done = completed_blocks(study, path)
    tasks = [
        t for t in study.tasks() if (t.m_index, t.separation_index, t.start) not in done
    ]
    total = len(done) + len(tasks)
    logger.info(
        "%d of %d blocks already in the store; %d to run", len(done), total, len(tasks)
    )
    if on_progress is not None:
        on_progress(len(done), total)

    if tasks:
        with _client(workers, scheduler, scheduler_file) as client:
            [study_future] = client.scatter([study], broadcast=True)
            futures = {
                client.submit(run_block, study_future, task, pure=False): task
                for task in tasks
            }
            finished = len(done)
            for future in as_completed(futures):
                task = futures.pop(future)
                write_block(study, path, task, future.result())
                future.release()
                finished += 1
                if on_progress is not None:
                    on_progress(finished, total)
    seconds = time.perf_counter() - started
    return RunSummary(path, total, len(done), len(tasks), seconds)
