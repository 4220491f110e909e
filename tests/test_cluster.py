"""Real clusters: `dask scheduler` and `dask worker` processes on 127.0.0.1, the
SLURM job script that dask-jobqueue renders, and the Kubernetes recipe.

`dask_cluster` (session scope) starts one scheduler and one `dask worker` with two
worker processes; tests/test_faults.py and tests/test_remote.py use it too, and
every module that asks for it gets the same processes (started once, stopped when
the last user is done). `reference_store` writes a study with a plain in-process
loop, no Dask, to compare distributed runs against.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from pmstudy.cli import main
from pmstudy.run import run_block
from pmstudy.store import create_store, write_block
from pmstudy.study import Study, load_spec

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# A study whose EM runs converge in a few dozen steps: 24 blocks of well under a
# second each, so that distributed runs (and their faults) stay quick.
FAST_SPEC = """
name = "fast"
seed = 3
k = 3
d = 2
replicates = 12
block = 2
schemes = ["forgy", "kmeans++", "uniform-box"]

[layout]
name = "simplex"

[grid]
separation = [4.0, 6.0]
m = [40, 120]

[em]
max_iter = 400
tol = 1e-6
"""


# ---------------------------------------------------------------------------
# Dask processes on the loopback interface.


@dataclass
class DaskProcesses:
    """A `dask scheduler` and a `dask worker` (with nannies) started by a test."""

    address: str
    scheduler_file: str
    scheduler: subprocess.Popen
    workers: subprocess.Popen
    logs: Path

    def client(self):
        from distributed import Client

        return Client(scheduler_file=self.scheduler_file, timeout="30s")

    def worker_pids(self) -> dict[str, int]:
        """Worker address -> the pid of its worker process (a nanny's child)."""
        with self.client() as client:
            return client.run(os.getpid)


def _stop(process: subprocess.Popen) -> None:
    """Stop a process group this module started: politely, then for sure."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    # Whatever is left of the group (worker processes of a killed nanny).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


@contextlib.contextmanager
def start_dask_processes(root: Path, n_workers: int = 2) -> Iterator[DaskProcesses]:
    """Start a scheduler and `n_workers` worker processes on 127.0.0.1.

    Ports are 0, so the system picks free ones; the scheduler file says which.
    Each process starts its own session (process group), so that it and its
    children can be stopped by group without touching anything else.
    """
    root.mkdir(parents=True, exist_ok=True)
    scheduler_file = root / "scheduler.json"
    env = {**os.environ, "DASK_LOGGING__DISTRIBUTED": "warning"}
    with (
        open(root / "scheduler.log", "wb") as scheduler_log,
        open(root / "workers.log", "wb") as worker_log,
    ):
        scheduler = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dask",
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--dashboard-address",
                "127.0.0.1:0",
                "--scheduler-file",
                str(scheduler_file),
                # An orphan (a test process killed hard) goes away by itself.
                "--idle-timeout",
                "600",
            ],
            stdout=scheduler_log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        workers = None
        try:
            deadline = time.monotonic() + 60
            while not scheduler_file.exists() or not scheduler_file.stat().st_size:
                if scheduler.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "dask scheduler did not start: "
                        + (root / "scheduler.log").read_text()
                    )
                time.sleep(0.1)
            workers = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dask",
                    "worker",
                    "--scheduler-file",
                    str(scheduler_file),
                    "--host",
                    "127.0.0.1",
                    "--nworkers",
                    str(n_workers),
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--local-directory",
                    str(root / "workers"),
                    "--death-timeout",
                    "60",
                    # Import the EM kernel at start, not in the first task.
                    "--preload",
                    "pmstudy.run",
                ],
                stdout=worker_log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            import json

            address = json.loads(scheduler_file.read_text())["address"]
            assert address.startswith("tcp://127.0.0.1:"), address
            processes = DaskProcesses(
                address, str(scheduler_file), scheduler, workers, root
            )
            with processes.client() as client:
                client.wait_for_workers(n_workers, timeout=120)
            yield processes
        finally:
            if workers is not None:
                _stop(workers)
            _stop(scheduler)


_shared: dict[str, object] = {}


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory) -> Iterator[DaskProcesses]:
    """One scheduler and two worker processes, shared by every module using it."""
    if "processes" not in _shared:
        stack = contextlib.ExitStack()
        root = tmp_path_factory.mktemp("dask")
        _shared["processes"] = stack.enter_context(start_dask_processes(root))
        _shared["stack"] = stack
        _shared["users"] = 0
    _shared["users"] = int(_shared["users"]) + 1  # type: ignore[call-overload]
    try:
        yield _shared["processes"]  # type: ignore[misc]
    finally:
        _shared["users"] = int(_shared["users"]) - 1  # type: ignore[call-overload]
        if _shared["users"] == 0:
            _shared.pop("processes")
            _shared.pop("stack").close()  # type: ignore[union-attr]


# ---------------------------------------------------------------------------
# Reference stores and comparisons.


def reference_store(study: Study, path: str) -> str:
    """Write every block of `study` with a plain loop in this process: no Dask."""
    create_store(study, path)
    for task in study.tasks():
        write_block(study, path, task, run_block(study, task))
    return path


def open_loaded(path: str, **kwargs) -> xr.Dataset:
    with xr.open_zarr(path, consolidated=False, mask_and_scale=False, **kwargs) as ds:
        return ds.load()


def assert_same_store(path: str, expected: str, **kwargs) -> None:
    """Every variable, coordinate and attribute equal, exactly."""
    a, b = open_loaded(path, **kwargs), open_loaded(expected)
    assert set(a.variables) == set(b.variables)
    for name in b.variables:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    assert a.attrs == b.attrs
    # Every replicate of every cell is there once: nothing is left at its fill.
    assert int((a.outcome >= 0).sum()) == a.outcome.size


def write_spec(root: Path, text: str, name: str) -> Path:
    spec = root / f"{name}.toml"
    spec.write_text(text)
    return spec


# ---------------------------------------------------------------------------
# `pmstudy run --scheduler` and `--scheduler-file`.


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    spec = write_spec(root, FAST_SPEC, "fast")
    study = load_spec(spec)
    return study, spec, reference_store(study, str(root / "reference.zarr")), root


@pytest.mark.parametrize("how", ["--scheduler", "--scheduler-file"])
def test_run_on_an_existing_cluster(dask_cluster, fast, how, capsys):
    study, spec, reference, root = fast
    store = str(root / f"{how.strip('-')}.zarr")
    cluster = dask_cluster
    where = cluster.address if how == "--scheduler" else cluster.scheduler_file
    assert main(["-q", "run", str(spec), "--store", store, how, where]) == 0
    out = capsys.readouterr().out
    total = len(list(study.tasks()))
    assert f"{total} block(s) run, 0 already done" in out
    assert_same_store(store, reference)
    # The cluster outlives the run: it is not the run's to close.
    with dask_cluster.client() as client:
        assert client.nthreads()


def test_cluster_choices_are_checked(capsys):
    from pmstudy.clusters import open_client
    from pmstudy.errors import SpecError

    with pytest.raises(SpecError, match="--cluster"), open_client(cluster="pbs"):
        pass
    with (
        pytest.raises(SpecError, match="scheduler"),
        open_client(cluster="slurm", scheduler="tcp://127.0.0.1:1"),
    ):
        pass
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "x.toml", "--cluster", "slurm", "--scheduler", "tcp://a:1"])
    assert exit_info.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_slurm_without_sbatch_is_refused_before_anything_is_made(
    tmp_path, monkeypatch, capsys
):
    pytest.importorskip("dask_jobqueue")
    spec = write_spec(tmp_path, FAST_SPEC, "fast")
    store = tmp_path / "never.zarr"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["run", str(spec), "--store", str(store), "--cluster", "slurm"]) == 2
    assert "sbatch" in capsys.readouterr().err
    assert not store.exists()


def test_missing_scheduler_file_is_refused_before_anything_is_made(tmp_path, capsys):
    # A Dask client would wait for the file to appear; the run must not.
    spec = write_spec(tmp_path, FAST_SPEC, "fast")
    store = tmp_path / "never.zarr"
    missing = str(tmp_path / "nope.json")
    args = ["run", str(spec), "--store", str(store), "--scheduler-file", missing]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--scheduler-file" in err and "nope.json" in err
    assert len(err.strip().splitlines()) == 1
    assert not store.exists()


def test_unreachable_scheduler_leaves_no_store(tmp_path, monkeypatch, capsys):
    # The client connects before the store is made. The refusal is simulated
    # (a real one takes the 60 s connection timeout).
    import distributed

    def refuse(*args, **kwargs):
        raise OSError("connection refused")

    monkeypatch.setattr(distributed, "Client", refuse)
    spec = write_spec(tmp_path, FAST_SPEC, "fast")
    store = tmp_path / "never.zarr"
    args = ["run", str(spec), "--store", str(store), "--scheduler", "127.0.0.1:1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--scheduler" in err and "connection refused" in err
    assert not store.exists()


def test_unknown_store_protocol_is_one_line(tmp_path, capsys):
    spec = write_spec(tmp_path, FAST_SPEC, "fast")
    assert main(["run", str(spec), "--store", "foo://bucket/x.zarr"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--store" in err and "foo" in err


# ---------------------------------------------------------------------------
# SLURM through dask-jobqueue: the job script, rendered without sbatch.


def _slurm_config(tmp_path: Path) -> dict:
    """The shipped example file, read by dask's own loader, as `jobqueue.slurm.*`."""
    import dask.config

    example = ROOT / "cluster" / "slurm" / "jobqueue.yaml"
    (tmp_path / "jobqueue.yaml").write_text(example.read_text())
    slurm = dask.config.collect(paths=[str(tmp_path)], env={})["jobqueue"]["slurm"]
    # The example names a cluster's network interface; here the scheduler listens
    # on the loopback only.
    slurm["interface"] = None
    slurm["scheduler-options"] = {
        "host": "127.0.0.1",
        "dashboard_address": "127.0.0.1:0",
    }
    return slurm


def test_slurm_job_script_starts_the_right_workers(tmp_path):
    pytest.importorskip("dask_jobqueue")
    import dask.config

    from pmstudy.clusters import slurm_cluster

    slurm = _slurm_config(tmp_path)
    # Key by key, so that dask-jobqueue's other defaults stay.
    settings = {f"jobqueue.slurm.{key}": value for key, value in slurm.items()}
    with dask.config.set(settings), slurm_cluster() as cluster:
        script = cluster.job_script()
        address = cluster.scheduler_address
    assert address.startswith("tcp://127.0.0.1:")
    lines = script.splitlines()
    # The directives come from the configuration file.
    assert f"#SBATCH -p {slurm['queue']}" in lines
    assert f"#SBATCH -A {slurm['account']}" in lines
    assert f"#SBATCH -t {slurm['walltime']}" in lines
    assert f"#SBATCH --cpus-per-task={slurm['cores']}" in lines
    for line in slurm["job-script-prologue"]:
        assert line in lines
    # The last line starts the workers: the configured Python, the scheduler of
    # this very run, one worker process per core, one thread each.
    command = lines[-1].split()
    assert command[:3] == [slurm["python"], "-m", "distributed.cli.dask_worker"]
    assert command[3] == address
    assert command[command.index("--nworkers") + 1] == str(slurm["cores"])
    assert command[command.index("--nthreads") + 1] == "1"
    assert "--nanny" in command
    for arg in slurm["worker-extra-args"]:
        assert arg in command
    # The prologue comes before the worker command.
    assert lines.index(slurm["job-script-prologue"][-1]) < len(lines) - 1


def test_slurm_readme_shows_the_shipped_configuration():
    readme = (ROOT / "cluster" / "slurm" / "README.md").read_text()
    example = (ROOT / "cluster" / "slurm" / "jobqueue.yaml").read_text()
    assert "~/.config/dask/jobqueue.yaml" in readme
    assert "pmstudy run" in readme and "--cluster slurm" in readme
    # The README quotes the example file verbatim.
    assert example.strip() in readme
    assert yaml.safe_load(example)["jobqueue"]["slurm"]["cores"] >= 1


# ---------------------------------------------------------------------------
# Kubernetes (dask-kubernetes operator) and SSH recipes.


def test_kubernetes_manifest_names_the_image_and_the_dask_commands():
    folder = ROOT / "cluster" / "kubernetes"
    manifest = yaml.safe_load((folder / "daskcluster.yaml").read_text())
    assert manifest["apiVersion"] == "kubernetes.dask.org/v1"
    assert manifest["kind"] == "DaskCluster"
    spec = manifest["spec"]
    worker = spec["worker"]["spec"]["containers"][0]
    scheduler = spec["scheduler"]["spec"]["containers"][0]

    readme = (folder / "README.md").read_text()
    build = re.search(r"docker build (?:.* )?-t (\S+)", readme)
    assert build, "the README shows how to build the image"
    assert worker["image"] == scheduler["image"] == build.group(1)

    args = worker["args"]
    assert args[:2] == ["dask", "worker"]
    assert args[args.index("--nthreads") + 1] == "1"
    assert "--name" in args and "$(DASK_WORKER_NAME)" in args
    assert scheduler["args"][:2] == ["dask", "scheduler"]
    ports = {p["name"]: p["containerPort"] for p in scheduler["ports"]}
    assert ports["tcp-comm"] == 8786
    service_ports = {p["name"] for p in spec["scheduler"]["service"]["ports"]}
    assert "tcp-comm" in service_ports

    dockerfile = (folder / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.1[1-9]", dockerfile, re.M)
    # pmstudy itself, with the extra for object stores, goes into the image.
    assert re.search(r"pip install .*\.\[s3\]", dockerfile)
    assert "COPY pmstudy" in dockerfile and "COPY pyproject.toml" in dockerfile


def test_ssh_recipe_uses_the_scheduler_option():
    readme = (ROOT / "cluster" / "ssh" / "README.md").read_text()
    assert "dask ssh" in readme and "SSHCluster" in readme
    assert "pmstudy run" in readme and "--scheduler" in readme


# A stand-in for SLURM's sbatch: it runs the job script on this machine, in the
# background and in a session of its own, and answers as sbatch does.
_SBATCH = """#!/usr/bin/env bash
# dask-jobqueue deletes its script once sbatch returns: keep a copy to run.
cp "${@: -1}" "$FAKE_SLURM/job.$$.sh"
setsid bash "$FAKE_SLURM/job.$$.sh" > "$FAKE_SLURM/job.$$.log" 2>&1 < /dev/null &
echo $! >> "$FAKE_SLURM/jobs"
echo "Submitted batch job $!"
"""
# ... and for scancel: it ends the job's process group.
_SCANCEL = """#!/usr/bin/env bash
for job in "$@"; do kill -TERM -- "-$job" 2> /dev/null; done
exit 0
"""


def test_run_on_slurm_through_dask_jobqueue(fast, tmp_path, monkeypatch, capsys):
    """`--cluster slurm` end to end, with sbatch standing in for SLURM."""
    pytest.importorskip("dask_jobqueue")
    import dask.config

    study, spec, reference, _ = fast
    fake = tmp_path / "slurm"
    (fake / "bin").mkdir(parents=True)
    for name, text in (("sbatch", _SBATCH), ("scancel", _SCANCEL)):
        (fake / "bin" / name).write_text(text)
        (fake / "bin" / name).chmod(0o755)
    monkeypatch.setenv("FAKE_SLURM", str(fake))
    monkeypatch.setenv("PATH", f"{fake / 'bin'}{os.pathsep}{os.environ['PATH']}")

    settings = {
        "cores": 1,
        "processes": 1,
        "memory": "2GB",
        "walltime": "00:10:00",
        "python": sys.executable,
        "interface": None,
        "scheduler-options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
        "worker-extra-args": ["--host", "127.0.0.1", "--preload", "pmstudy.run"],
        "local-directory": str(tmp_path / "workers"),
        # Also the time a worker process may take to start (imports included).
        "death-timeout": 180,
    }
    store = str(tmp_path / "slurm.zarr")
    run = ["-q", "run", str(spec), "--store", store, "--cluster", "slurm"]
    config = {f"jobqueue.slurm.{key}": value for key, value in settings.items()}
    try:
        # If no worker ever came, the run would wait for one forever (as it should
        # for jobs queued on a real cluster): run it in a thread, and give up.
        codes: list[int] = []
        with dask.config.set(config):
            runner = threading.Thread(target=lambda: codes.append(main(run)))
            runner.daemon = True
            runner.start()
            runner.join(timeout=300)
        assert codes == [0], "the SLURM run did not finish: " + "".join(
            log.read_text()[-2000:] for log in fake.glob("job.*.log")
        )
        assert "0 already done" in capsys.readouterr().out
        assert_same_store(store, reference)
        jobs = [int(job) for job in (fake / "jobs").read_text().split()]
        assert len(jobs) == 1  # one job's worth of workers by default
        # The run cancelled its job when it closed the cluster.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _group_alive(jobs[0]):
            time.sleep(0.2)
        assert not _group_alive(jobs[0])
    finally:
        jobs_file = fake / "jobs"
        for job in jobs_file.read_text().split() if jobs_file.exists() else []:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(job), signal.SIGKILL)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True
