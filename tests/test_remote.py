"""Remote stores: a study run into an S3 bucket, damaged, resumed and reported.

The S3 endpoint is moto's server, started by the test on 127.0.0.1 with a port the
system picks; the bucket is created here, the credentials are dummies, and the
endpoint reaches pmstudy only through the environment (`AWS_ENDPOINT_URL`), as a
user's would. No other endpoint is ever contacted.
"""

from __future__ import annotations

import json
import logging

import pytest

from pmstudy.cli import main
from pmstudy.study import load_spec
from tests.test_cluster import assert_same_store, reference_store, write_spec
from tests.test_cluster import dask_cluster as dask_cluster  # a shared fixture

pytestmark = pytest.mark.slow

BUCKET = "pmstudy-test"

SMALL_SPEC = """
name = "remote"
seed = 4
k = 3
d = 2
replicates = 4
block = 2
schemes = ["forgy", "kmeans++"]

[layout]
name = "simplex"

[grid]
separation = [4.0, 6.0]
m = [40]

[em]
max_iter = 400
tol = 1e-6
"""


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A local S3 server and an environment that points boto at it alone."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")

    server = moto_server.ThreadedMotoServer(
        ip_address="127.0.0.1", port=0, verbose=False
    )
    server.start()
    host, port = server.get_host_and_port()
    assert host == "127.0.0.1"
    endpoint = f"http://{host}:{port}"
    nowhere = str(tmp_path_factory.mktemp("aws") / "absent")
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        # Read no user's AWS files, ask no metadata service, use no proxy.
        "AWS_CONFIG_FILE": nowhere,
        "AWS_SHARED_CREDENTIALS_FILE": nowhere,
        "AWS_EC2_METADATA_DISABLED": "true",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem()
        fs.mkdir(BUCKET)
        try:
            yield fs
        finally:
            _close_async_sessions()
            s3fs.S3FileSystem.clear_instance_cache()
            server.stop()


def _close_async_sessions() -> None:
    """Close the HTTP sessions of the asynchronous S3 file systems zarr made.

    s3fs closes a synchronous file system's session when it is collected, but
    not an asynchronous one's (zarr's), which would otherwise be reported as an
    unclosed aiohttp session at exit.
    """
    import s3fs
    from zarr.core.sync import sync

    for fs in list(s3fs.S3FileSystem._cache.values()):
        creator = getattr(fs, "_s3creator", None)
        if fs.asynchronous and creator is not None:
            sync(creator.__aexit__(None, None, None))
            fs._s3 = fs._s3creator = None


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote")
    spec = write_spec(root, SMALL_SPEC, "remote")
    study = load_spec(spec)
    return study, spec, reference_store(study, str(root / "reference.zarr"))


def _key(study, name, task) -> str:
    """The object key of one block's chunk of a variable (zarr's key layout)."""
    from pmstudy.store import CELL_VARIABLES

    index = {
        "m": task.m_index,
        "separation": task.separation_index,
        "replicate": task.start // study.block,
    }
    dims = CELL_VARIABLES[name][0]
    return f"{name}/c/" + "/".join(str(index.get(dim, 0)) for dim in dims)


def test_a_study_in_s3_runs_resumes_and_reports(s3, small, dask_cluster, capsys):
    study, spec, reference = small
    url = f"s3://{BUCKET}/studies/remote.zarr"
    tasks = list(study.tasks())
    run = ["-q", "run", str(spec), "--store", url]
    run += ["--scheduler-file", dask_cluster.scheduler_file]

    assert main(run) == 0
    assert f"{len(tasks)} block(s) run, 0 already done" in capsys.readouterr().out
    assert s3.exists(f"{BUCKET}/studies/remote.zarr/zarr.json")

    # Lose one block's outcome object, cut another's centers short.
    lost, cut = tasks[1], tasks[2]
    s3.rm(f"{BUCKET}/studies/remote.zarr/{_key(study, 'outcome', lost)}")
    key = f"{BUCKET}/studies/remote.zarr/{_key(study, 'centers_final', cut)}"
    s3.pipe(key, s3.cat(key)[:9])
    assert main(["status", url, "--format", "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["blocks"]["partial"] == 2
    assert status["blocks"]["done"] == len(tasks) - 2

    # Resume: exactly the two damaged blocks are run again.
    assert main(run) == 0
    assert f"2 block(s) run, {len(tasks) - 2} already done" in capsys.readouterr().out
    assert_same_store(url, reference)

    assert main(["report", url, "--format", "csv"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 1 + len(study.ms) * len(study.separations) * 2
    for row in rows[1:]:
        # m, separation, scheme, n: every replicate counted once.
        assert int(row.split(",")[3]) == study.replicates
