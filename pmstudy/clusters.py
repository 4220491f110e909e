"""Where a study's tasks run: a local cluster, an existing one, or a SLURM one.

`open_client` hands `pmstudy.run` a connected `distributed.Client`:

- ``local`` (the default): a `distributed.LocalCluster` of worker processes with
  one thread each, on 127.0.0.1;
- an existing cluster, by scheduler address or scheduler file (started with
  ``dask scheduler`` / ``dask worker``, ``dask ssh``, the dask-kubernetes operator,
  ...): see ``cluster/`` for recipes;
- ``slurm``: a dask-jobqueue `SLURMCluster` whose settings come from dask's own
  configuration (``jobqueue.slurm.*``, e.g. ``~/.config/dask/jobqueue.yaml``); see
  ``cluster/slurm/README.md``.

Each worker runs one task at a time on one thread: a task is one batched EM, and
the kernel uses the core it has.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
from collections.abc import Iterator
from typing import Any

from pmstudy.errors import SpecError

logger = logging.getLogger(__name__)

__all__ = ["CLUSTERS", "check_cluster", "local_cluster", "open_client", "slurm_cluster"]

CLUSTERS = ("local", "slurm")


def local_cluster(workers: int | None = None) -> Any:
    """A `distributed.LocalCluster` on 127.0.0.1: processes, one thread each.

    Parameters
    ----------
    workers : int, optional
        Worker processes; default one per core.
    """
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=workers or os.cpu_count() or 1,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    )


def slurm_cluster(**overrides: Any) -> Any:
    """A dask-jobqueue `SLURMCluster` configured from ``jobqueue.slurm.*``.

    Nothing is submitted until the cluster is scaled. Settings come from dask's
    configuration (files under ``~/.config/dask/``, ``DASK_*`` variables); the
    keyword arguments override them. Unless the configuration says otherwise,
    each worker process gets one thread.

    Raises
    ------
    SpecError
        If dask-jobqueue is not installed.
    """
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise SpecError(
            "--cluster",
            "slurm",
            "a cluster whose package is installed: pip install 'pmstudy[slurm]'",
        ) from None
    import dask

    options = dict(overrides)
    cores = options.get("cores", dask.config.get("jobqueue.slurm.cores", None))
    processes = options.get(
        "processes", dask.config.get("jobqueue.slurm.processes", None)
    )
    if cores and processes is None:
        # One process per core, one thread each, unless configured otherwise.
        options["processes"] = cores
    return SLURMCluster(**options)


def check_cluster(
    cluster: str, scheduler: str | None = None, scheduler_file: str | None = None
) -> None:
    """Refuse, before anything starts, a cluster that cannot be had here.

    Raises
    ------
    SpecError
        For an unknown cluster, one combined with a scheduler, a scheduler
        file that does not exist, or SLURM without
        dask-jobqueue or without ``sbatch`` (jobs that cannot be submitted would
        leave the run waiting for workers forever).
    """
    if cluster not in CLUSTERS:
        raise SpecError("--cluster", cluster, f"one of {list(CLUSTERS)}")
    if (scheduler or scheduler_file) and cluster != "local":
        raise SpecError("--cluster", cluster, "left out when a scheduler is given")
    if scheduler_file and not os.path.isfile(scheduler_file):
        # A Dask client waits for a missing scheduler file to appear.
        raise SpecError(
            "--scheduler-file",
            scheduler_file,
            "an existing file written by `dask scheduler --scheduler-file`",
        )
    if cluster == "slurm" and not (scheduler or scheduler_file):
        if importlib.util.find_spec("dask_jobqueue") is None:
            raise SpecError(
                "--cluster",
                cluster,
                "a cluster whose package is installed: pip install 'pmstudy[slurm]'",
            )
        if shutil.which("sbatch") is None:
            raise SpecError(
                "--cluster",
                cluster,
                "used on a SLURM submit host (no `sbatch` on the PATH here)",
            )


@contextlib.contextmanager
def open_client(
    *,
    cluster: str = "local",
    workers: int | None = None,
    scheduler: str | None = None,
    scheduler_file: str | None = None,
) -> Iterator[Any]:
    """A connected `distributed.Client`; its cluster, if made here, closes after.

    Parameters
    ----------
    cluster : {"local", "slurm"}
        The cluster to start when no scheduler is given.
    workers : int, optional
        Worker processes: of the local cluster (default one per core), or to
        scale a SLURM cluster to (default one job's worth).
    scheduler, scheduler_file : str, optional
        Connect to an existing cluster instead.

    Raises
    ------
    SpecError
        For an unknown cluster, or one combined with a scheduler.
    """
    from distributed import Client

    check_cluster(cluster, scheduler, scheduler_file)
    if scheduler or scheduler_file:
        try:
            # A bounded wait: a stale scheduler file or a dead address must end in
            # an error, not in a run that waits forever.
            client = Client(
                address=scheduler, scheduler_file=scheduler_file, timeout="60s"
            )
        except (OSError, TimeoutError) as error:
            field = "--scheduler" if scheduler else "--scheduler-file"
            raise SpecError(
                field,
                scheduler or scheduler_file,
                f"a reachable Dask scheduler ({error})",
            ) from None
        logger.info("connected to scheduler %s", client.scheduler.address)
        try:
            yield client
        finally:
            client.close()
        return

    if cluster == "slurm":
        made = slurm_cluster()
        if workers:
            made.scale(n=workers)
        else:
            made.scale(jobs=1)
        client = Client(made)
        logger.info(
            "SLURM cluster: %s worker(s) requested; dashboard at %s",
            workers or "one job's",
            client.dashboard_link,
        )
    else:
        made = local_cluster(workers)
        client = Client(made)
        logger.info(
            "local cluster of %d worker(s); dashboard at %s",
            len(made.workers),
            client.dashboard_link,
        )
    try:
        yield client
    finally:
        client.close()
        made.close()
