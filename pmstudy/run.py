"""The Dask orchestration of a study: tasks, the per-block work, writing, resuming.

One task handles one replicate block of one (m, separation) pair: it samples the
block's data sets, draws every scheme's initial centers on each, runs one batched
EM over (oracle + schemes) x replicates, and judges the outcomes. Results are small
and travel back to the client, which alone writes them into the store as tasks
finish. Blocks already whole in the store are skipped, so a rerun resumes; a block
that a killed client left half-written is run again. Where the tasks run is
`pmstudy.clusters`' business.

Every random stream is keyed by stable values (see `pmstudy.seeds`), and every EM
run's result is independent of the other runs in its batch, so the store is the
same bit for bit whatever the number of workers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pmstudy import em, mixture, schemes, seeds
from pmstudy.clusters import check_cluster, open_client
from pmstudy.outcome import SUCCESS, UNDECIDED, judge, matched_distance
from pmstudy.store import (
    BlockState,
    StoreWriter,
    block_states,
    prepare_store,
    true_centers,
)
from pmstudy.study import Study, Task

logger = logging.getLogger(__name__)

__all__ = ["BlocksFailed", "RunSummary", "run_block", "run_study"]


# Tasks submitted but not finished, per worker thread: enough that no worker
# waits for the client, few enough that a study of any size costs the scheduler
# and the workers the same.
_IN_FLIGHT_PER_THREAD = 4
_MIN_IN_FLIGHT = 8


@dataclass(frozen=True)
class RunSummary:
    """What a call to `run_study` did.

    Attributes
    ----------
    store : str
    tasks_total, tasks_skipped, tasks_run : int
        Blocks of the study; already whole in the store; run and written now.
    seconds : float
        Wall time of the whole call, cluster start included.
    compute_seconds : float
        Sum over the tasks run of their time inside `run_block` on a worker.
    run_seconds : float
        Wall time from the first submission to the last result.
    thread_seconds : float
        Worker threads present, integrated over `run_seconds`.
    """

    store: str
    tasks_total: int
    tasks_skipped: int
    tasks_run: int
    seconds: float
    compute_seconds: float = 0.0
    run_seconds: float = 0.0
    thread_seconds: float = 0.0

    @property
    def utilization(self) -> float:
        """Fraction of the workers' time spent inside tasks (NaN if none ran).

        One minus it is the overhead of scheduling, transfer and writing, as seen
        by the workers.
        """
        if self.thread_seconds <= 0:
            return math.nan
        return self.compute_seconds / self.thread_seconds


class BlocksFailed(RuntimeError):
    """Some tasks failed; every other block was written. A rerun retries them.

    Attributes
    ----------
    summary : RunSummary
    failures : list of (Task, BaseException)
    """

    def __init__(
        self, summary: RunSummary, failures: list[tuple[Task, BaseException]]
    ) -> None:
        self.summary = summary
        self.failures = failures
        task, error = failures[0]
        super().__init__(
            f"{len(failures)} block(s) failed, the first (m={task.m:g}, "
            f"separation={task.separation:g}, replicates {task.start}-"
            f"{task.stop - 1}) with {error!r}; the rest is written, rerun to retry"
        )


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


def _timed_block(study: Study, task: Task) -> tuple[dict[str, np.ndarray], float]:
    """`run_block` and the seconds it took on its worker."""
    started = time.perf_counter()
    block = run_block(study, task)
    return block, time.perf_counter() - started


def _threads(client: Any) -> int:
    """Worker threads the scheduler knows of right now."""
    return sum(client.nthreads().values())


def run_study(
    study: Study,
    store: str | None = None,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    cluster: str = "local",
    on_progress: Callable[[int, int], None] | None = None,
) -> RunSummary:
    """Run every task of `study` not yet whole in its store, and write the results.

    A block is skipped only if every chunk of it is whole (see
    `pmstudy.store.block_states`); a block half-written by a client that died is
    run again and overwritten in place. Tasks go to the cluster a few per worker
    thread at a time, so that neither the scheduler nor the workers hold more than
    that, whatever the size of the study. A task lost with its worker is rerun by
    Dask elsewhere; a task that fails is logged, the others go on, and
    `BlocksFailed` is raised at the end.

    Parameters
    ----------
    study : Study
    store : str, optional
        Store location, a path or an fsspec URL; defaults to the spec's.
    workers : int, optional
        Worker processes of the local cluster (default: one per core), or of the
        SLURM cluster.
    scheduler, scheduler_file : str, optional
        Use an existing Dask cluster instead of starting one.
    cluster : {"local", "slurm"}
        The kind of cluster to start when no scheduler is given.
    on_progress : callable, optional
        Called as ``on_progress(done, total)`` after each block is written.

    Returns
    -------
    RunSummary

    Raises
    ------
    BlocksFailed
        If some tasks failed; every other block has been written.
    """
    from distributed import as_completed

    path = store or study.store
    started = time.perf_counter()
    check_cluster(cluster, scheduler, scheduler_file)
    with contextlib.ExitStack() as stack:
        client_context = None
        if scheduler or scheduler_file:
            # Connect before the store exists: a scheduler that cannot be reached
            # ends the command with nothing created.
            client = stack.enter_context(
                open_client(scheduler=scheduler, scheduler_file=scheduler_file)
            )
            client_context = contextlib.nullcontext(client)
        prepare_store(study, path)
        states = block_states(study, path)
        tasks = [task for task, state in states.items() if state is not BlockState.DONE]
        total = len(states)
        partial = sum(state is BlockState.PARTIAL for state in states.values())
        logger.info(
            "%d of %d blocks already in the store; %d to run (%d partly written)",
            total - len(tasks),
            total,
            len(tasks),
            partial,
        )
        if on_progress is not None:
            on_progress(total - len(tasks), total)

        failures: list[tuple[Task, BaseException]] = []
        compute_seconds = thread_seconds = run_seconds = 0.0
        if tasks:
            if client_context is None:
                client_context = open_client(cluster=cluster, workers=workers)
            with client_context as client, StoreWriter(study, path) as writer:
                queue = iter(tasks)
                in_flight: dict[Any, Task] = {}
                # Its own client's loop: an empty `as_completed` would take the loop of
                # the process's default client, which may be another one.
                results = as_completed(loop=client.loop)

                def top_up(threads: int) -> None:
                    limit = max(_MIN_IN_FLIGHT, _IN_FLIGHT_PER_THREAD * threads)
                    while len(in_flight) < limit:
                        task = next(queue, None)
                        if task is None:
                            return
                        # The study travels with each task (a few kB): data scattered
                        # once could be lost with the workers holding it.
                        future = client.submit(_timed_block, study, task, pure=False)
                        in_flight[future] = task
                        results.add(future)

                threads = _threads(client)
                top_up(threads)
                last = run_started = time.perf_counter()
                finished = total - len(tasks)
                for future in results:
                    task = in_flight.pop(future)
                    try:
                        block, seconds = future.result()
                    except Exception as error:
                        failures.append((task, error))
                        logger.error("task %s failed: %r", task, error)
                    else:
                        writer.write(task, block)
                        compute_seconds += seconds
                        finished += 1
                        if on_progress is not None:
                            on_progress(finished, total)
                    future.release()
                    # Worker threads present, integrated over time: the capacity that
                    # the compute seconds are measured against.
                    now = time.perf_counter()
                    thread_seconds += threads * (now - last)
                    last = now
                    threads = _threads(client)
                    top_up(threads)
                run_seconds = time.perf_counter() - run_started

    summary = RunSummary(
        path,
        total,
        total - len(tasks),
        len(tasks) - len(failures),
        time.perf_counter() - started,
        compute_seconds=compute_seconds,
        run_seconds=run_seconds,
        thread_seconds=thread_seconds,
    )
    if tasks:
        logger.info(
            "%d block(s) in %.1f s; tasks computed %.1f s of %.1f worker-thread "
            "seconds (utilization %.1f%%)",
            summary.tasks_run,
            run_seconds,
            compute_seconds,
            thread_seconds,
            100 * summary.utilization,
        )
    if failures:
        raise BlocksFailed(summary, failures)
    return summary
