"""Faults with real processes: a worker killed with SIGKILL mid-run, the client
(`pmstudy run`, a subprocess) killed with SIGKILL mid-run and run again, and a
store damaged on disk. Each ends with a store identical, variable by variable and
exactly, to one written by a plain in-process loop with no Dask at all.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pmstudy.cli import main
from pmstudy.run import run_study
from pmstudy.status import study_status
from pmstudy.store import BlockState, block_states
from pmstudy.study import load_spec
from tests.test_cluster import (
    FAST_SPEC,
    assert_same_store,
    reference_store,
    write_spec,
)
from tests.test_cluster import dask_cluster as dask_cluster  # a shared fixture
from tests.test_store import chunk_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    spec = write_spec(root, FAST_SPEC, "fast")
    study = load_spec(spec)
    return study, spec, reference_store(study, str(root / "reference.zarr"))


@pytest.fixture(scope="module")
def lasting(tmp_path_factory):
    """FAST_SPEC with tasks that last long enough to be caught mid-task.

    With FAST_SPEC's tiny tasks an idle machine finishes every task before the
    client has written its first block, and no worker is busy to be killed.
    """
    root = tmp_path_factory.mktemp("faults-lasting")
    text = FAST_SPEC.replace("m = [40, 120]", "m = [3000, 6000]").replace(
        "block = 2", "block = 4"
    )
    spec = write_spec(root, text, "lasting")
    study = load_spec(spec)
    return study, spec, reference_store(study, str(root / "reference.zarr"))


def test_a_worker_killed_mid_task_loses_nothing(dask_cluster, lasting, tmp_path):
    study, _, reference = lasting
    store = str(tmp_path / "worker-killed.zarr")
    pids = dask_cluster.worker_pids()
    killed: dict[str, object] = {}

    with dask_cluster.client() as monitor:

        def kill_a_busy_worker(done: int, total: int) -> None:
            # Called by the run after each block it writes: once the first block
            # is in, kill a worker in the middle of a task.
            if killed or done == 0:
                return
            busy = {a: keys for a, keys in monitor.processing().items() if keys}
            if not busy:
                return
            address, keys = sorted(busy.items())[0]
            os.kill(pids[address], signal.SIGKILL)
            killed.update(address=address, keys=list(keys), done=done)

        summary = run_study(
            study,
            store,
            scheduler_file=dask_cluster.scheduler_file,
            on_progress=kill_a_busy_worker,
        )
        assert killed, "no worker was busy to be killed"
        assert killed["keys"] and killed["done"] < summary.tasks_total
        # The killed worker is gone (its nanny starts a new one, for later tests).
        assert killed["address"] not in monitor.nthreads()

    assert summary.tasks_run == summary.tasks_total == len(list(study.tasks()))
    assert_same_store(store, reference)


def _pmstudy(*args: str) -> list[str]:
    return [sys.executable, "-m", "pmstudy.cli", *args]


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def test_a_client_killed_mid_run_then_run_again(dask_cluster, fast, tmp_path, capsys):
    study, spec, reference = fast
    store = str(tmp_path / "client-killed.zarr")
    command = _pmstudy(
        "run", str(spec), "--store", store, "--scheduler", dask_cluster.address
    )
    total = len(list(study.tasks()))

    client = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(
        target=_read_lines, args=(client.stderr, lines), daemon=True
    ).start()
    try:
        deadline = time.monotonic() + 120
        seen = []
        while True:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            assert line is not None, "the run ended before it was killed:\n" + (
                "".join(seen)
            )
            seen.append(line)
            progress = re.search(r"progress: (\d+) of (\d+) blocks", line)
            if progress and 0 < int(progress.group(1)) < total:
                os.kill(client.pid, signal.SIGKILL)
                break
        assert client.wait(timeout=30) == -signal.SIGKILL
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(client.pid, signal.SIGKILL)
        client.wait(timeout=30)
        client.stderr.close()

    # What the killed client left: some blocks whole, the rest to do.
    left = study_status(store)
    assert 0 < left.blocks_done < total
    assert 0 < left.fraction < 1

    # Run again (in this process, which saves starting another interpreter).
    assert main(command[3:]) == 0
    out = capsys.readouterr().out
    counts = re.search(r"(\d+) block\(s\) run, (\d+) already done", out)
    assert counts, out
    assert int(counts.group(2)) == left.blocks_done
    assert int(counts.group(1)) == total - left.blocks_done
    assert_same_store(store, reference)


def test_a_damaged_store_is_repaired_by_a_rerun(dask_cluster, fast, tmp_path):
    study, _, reference = fast
    store = str(tmp_path / "damaged.zarr")
    shutil.copytree(reference, store)
    tasks = list(study.tasks())
    truncated, missing, flipped, gone = tasks[1], tasks[6], tasks[11], tasks[20]

    path = chunk_file(store, "outcome", study, truncated)
    path.write_bytes(path.read_bytes()[:5])
    chunk_file(store, "centers_final", study, missing).unlink()
    path = chunk_file(store, "oracle_loglik", study, flipped)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    for name in ("outcome", "loglik", "n_iter", "centers_init"):
        chunk_file(store, name, study, gone).unlink()
    leftover = (
        Path(store) / "loglik" / "c" / "0.0123456789abcdef0123456789abcdef.partial"
    )
    leftover.write_bytes(b"")

    states = block_states(study, store)
    damaged = {truncated, missing, flipped, gone}
    assert {t for t, s in states.items() if s is not BlockState.DONE} == damaged

    summary = run_study(study, store, scheduler=dask_cluster.address)
    assert summary.tasks_run == len(damaged)
    assert summary.tasks_skipped == len(tasks) - len(damaged)
    assert not leftover.exists()
    assert_same_store(store, reference)
