"""The store: block writes land in their slots, and a block is done only when every
chunk of it is whole (truncated, empty, damaged, missing chunks and interrupted
writes are all caught); half-created stores and leftovers are dealt with.

Blocks here are synthetic (random but valid values), so no EM runs: what is tested
is the store's bookkeeping, against plain reads of the files.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from pmstudy.errors import SpecError
from pmstudy.store import (
    CELL_VARIABLES,
    BlockState,
    StoreMismatch,
    StoreWriter,
    block_states,
    completed_blocks,
    create_store,
    open_store,
    prepare_store,
    write_block,
)
from pmstudy.study import Study, Task, parse_spec

SPEC = """
name = "bookkeeping"
seed = 5
k = 3
d = 2
replicates = 40
block = 2
schemes = ["forgy", "kmeans++"]

[layout]
name = "simplex"

[grid]
separation = [2.0]
m = [50, "inf"]
"""


@pytest.fixture(scope="module")
def study() -> Study:
    return parse_spec(SPEC)


def fake_block(study: Study, task: Task) -> dict[str, np.ndarray]:
    """Valid values for every variable of one block, keyed by the task."""
    rng = np.random.default_rng([task.m_index, task.separation_index, task.start])
    n_schemes, size = len(study.schemes), task.stop - task.start
    block = {}
    for name, (dims, dtype, _, _) in CELL_VARIABLES.items():
        lead = (n_schemes, size) if "scheme" in dims else (size,)
        tail = (study.k, study.d) if "component" in dims else ()
        if dtype.startswith("i"):
            block[name] = rng.integers(0, 3, size=lead + tail)
        else:
            block[name] = rng.normal(size=lead + tail)
    return block


def chunk_file(path: str | Path, name: str, study: Study, task: Task) -> Path:
    """The file of one block's chunk of a variable, from zarr's key layout."""
    dims = CELL_VARIABLES[name][0]
    index = {
        "m": task.m_index,
        "separation": task.separation_index,
        "replicate": task.start // study.block,
    }
    key = "/".join(str(index.get(dim, 0)) for dim in dims)
    return Path(path) / name / "c" / key


@pytest.fixture(scope="module")
def full_store(study, tmp_path_factory) -> str:
    """Every block written."""
    path = str(tmp_path_factory.mktemp("store") / "full.zarr")
    prepare_store(study, path)
    with StoreWriter(study, path) as writer:
        for task in study.tasks():
            writer.write(task, fake_block(study, task))
    return path


@pytest.fixture
def copy_of_full(full_store, tmp_path) -> str:
    path = str(tmp_path / "copy.zarr")
    shutil.copytree(full_store, path)
    return path


def test_every_block_lands_in_its_slots(study, full_store):
    with xr.open_zarr(full_store, consolidated=False, mask_and_scale=False) as ds:
        ds = ds.load()
    for task in study.tasks():
        block = fake_block(study, task)
        for name, value in block.items():
            stored = ds[name].isel(
                m=task.m_index,
                separation=task.separation_index,
                replicate=slice(task.start, task.stop),
            )
            dtype = CELL_VARIABLES[name][1]
            np.testing.assert_array_equal(stored.values, value.astype(dtype), name)
    states = block_states(study, full_store)
    assert set(states.values()) == {BlockState.DONE}
    assert len(completed_blocks(study, full_store)) == len(list(study.tasks()))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _delete(path: Path) -> None:
    path.unlink()


DAMAGES = [_truncate, _empty, _flip_a_byte, _delete]
DAMAGED = ["outcome", "centers_final", "oracle_loglik"]


def test_a_damaged_chunk_makes_its_block_partial(study, copy_of_full):
    """Each damage to each kind of variable, on a block of its own."""
    tasks = list(study.tasks())
    cases = [(damage, name) for damage in DAMAGES for name in DAMAGED]
    victims = dict(zip(tasks[1::2], cases, strict=False))
    assert len(victims) == len(cases)
    for task, (damage, name) in victims.items():
        damage(chunk_file(copy_of_full, name, study, task))

    states = block_states(study, copy_of_full)
    for task in tasks:
        expected = BlockState.PARTIAL if task in victims else BlockState.DONE
        assert states[task] is expected, (task, victims.get(task))
    done = completed_blocks(study, copy_of_full)
    assert len(done) == len(tasks) - len(victims)
    assert all((t.m_index, t.separation_index, t.start) not in done for t in victims)

    # Rewriting the blocks whole repairs them, in place.
    with StoreWriter(study, copy_of_full) as writer:
        for task in victims:
            writer.write(task, fake_block(study, task))
    assert set(block_states(study, copy_of_full).values()) == {BlockState.DONE}


def test_a_block_with_no_chunk_is_missing(study, copy_of_full):
    victim = list(study.tasks())[3]
    for name in CELL_VARIABLES:
        chunk_file(copy_of_full, name, study, victim).unlink()
    assert block_states(study, copy_of_full)[victim] is BlockState.MISSING


class Died(Exception):
    """The writer's process, as if killed."""


def _dying_after(n_writes, put):
    """`put` that raises instead of writing once `n_writes` chunks are written."""
    lock = threading.Lock()
    count = [0]

    def dying(*args):
        with lock:
            if count[0] >= n_writes:
                raise Died(args[0])
            count[0] += 1
        put(*args)

    return dying


def test_an_interrupted_write_never_reads_as_done(study, tmp_path):
    """Kill the writer after each possible number of chunk writes."""
    path = str(tmp_path / "interrupted.zarr")
    create_store(study, path)
    tasks = list(study.tasks())
    n_variables = len(CELL_VARIABLES)
    assert len(tasks) > n_variables

    for written, task in zip(range(n_variables), tasks, strict=False):
        writer = StoreWriter(study, path)
        writer._put = _dying_after(written, writer._put)
        with pytest.raises(Died), writer:
            writer.write(task, fake_block(study, task))

    states = block_states(study, path)
    for written, task in zip(range(n_variables), tasks, strict=False):
        assert states[task] is (
            BlockState.MISSING if written == 0 else BlockState.PARTIAL
        )
        # The outcome chunk, which the report counts, is never written early.
        assert not chunk_file(path, "outcome", study, task).exists()
        on_disk = [
            name
            for name in CELL_VARIABLES
            if chunk_file(path, name, study, task).exists()
        ]
        assert len(on_disk) == written

    # A whole write after all that makes each block done.
    with StoreWriter(study, path) as writer:
        for task in tasks[:n_variables]:
            writer.write(task, fake_block(study, task))
    states = block_states(study, path)
    assert all(states[t] is BlockState.DONE for t in tasks[:n_variables])


def test_the_writer_refuses_fill_values_and_wrong_shapes(study, tmp_path):
    path = str(tmp_path / "refuse.zarr")
    create_store(study, path)
    task = next(study.tasks())
    block = fake_block(study, task)
    for name, bad in [
        ("loglik", np.nan),
        ("center_error", np.inf),
        ("n_iter", -1),
    ]:
        spoiled = {key: value.copy() for key, value in block.items()}
        spoiled[name] = spoiled[name].astype(float if bad != -1 else int)
        spoiled[name].flat[0] = bad
        with pytest.raises(ValueError, match=name):
            write_block(study, path, task, spoiled)
    spoiled = dict(block, outcome=block["outcome"][:, :1])
    with pytest.raises(ValueError, match="shape"):
        write_block(study, path, task, spoiled)
    with pytest.raises(ValueError, match="lacks"):
        write_block(study, path, task, {"outcome": block["outcome"]})
    assert set(block_states(study, path).values()) == {BlockState.MISSING}


def _drop_identity(path: str) -> None:
    meta = Path(path) / "zarr.json"
    group = json.loads(meta.read_text())
    del group["attributes"]["spec_sha256"]
    meta.write_text(json.dumps(group))


def test_a_half_created_store_is_created_again(study, tmp_path):
    path = str(tmp_path / "half.zarr")
    create_store(study, path)
    # As if killed while creating: the identity, written last, and an array or
    # two are not there yet.
    _drop_identity(path)
    shutil.rmtree(Path(path) / "outcome")
    with pytest.raises(Exception, match="store"):
        open_store(path)

    prepare_store(study, path)
    with open_store(path) as ds:
        assert ds.attrs["spec_sha256"] == study.digest()
        assert "outcome" in ds
    assert set(block_states(study, path).values()) == {BlockState.MISSING}


def test_stores_of_other_studies_are_refused(study, tmp_path):
    other = parse_spec(SPEC.replace("seed = 5", "seed = 6"))
    path = str(tmp_path / "other.zarr")
    create_store(other, path)
    with pytest.raises(StoreMismatch, match="seed: store has 6, spec has 5"):
        prepare_store(study, path)
    # Half-created for another study: refused too, never overwritten.
    _drop_identity(path)
    with pytest.raises(StoreMismatch, match="seed"):
        prepare_store(study, path)
    # A zarr group that pmstudy did not write.
    import zarr

    foreign = str(tmp_path / "foreign.zarr")
    zarr.open_group(foreign, mode="w", zarr_format=3).attrs["owner"] = "someone"
    with pytest.raises(StoreMismatch, match="no pmstudy spec"):
        prepare_store(study, foreign)
    assert dict(zarr.open_group(foreign, mode="r").attrs) == {"owner": "someone"}


def test_leftovers_of_a_killed_writer_are_removed_on_resume(
    study, copy_of_full, caplog
):
    chunk = chunk_file(copy_of_full, "loglik", study, next(study.tasks()))
    leftover = chunk.with_name(chunk.name + ".0123456789abcdef0123456789abcdef.partial")
    leftover.write_bytes(b"half a chunk")
    unrelated = Path(copy_of_full) / "notes.partial"
    unrelated.write_text("not zarr's")
    with caplog.at_level("INFO", logger="pmstudy.store"):
        prepare_store(study, copy_of_full)
    assert not leftover.exists()
    assert unrelated.exists()
    assert "removed 1 temporary file" in caplog.text


def test_a_directory_holding_other_files_is_refused_and_left_alone(study, tmp_path):
    busy = tmp_path / "results"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(SpecError) as info:
        prepare_store(study, str(busy))
    assert info.value.field == "store"
    assert "is not a pmstudy store" in str(info.value)
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    # An empty directory is a fine place for a new store.
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_store(study, str(empty))
    with open_store(str(empty)) as ds:
        assert ds.attrs["spec_sha256"] == study.digest()
