"""The process group's own duties, on two gloo processes: work rank 0 does alone may outlast the collective timeout
and its failure reaches every rank; a stop signal seen by one rank is seen by all; a run directory a rank cannot
see is named on every rank."""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from simvlg_video.errors import InputError
from simvlg_video.train.launch import RunDirNotShared, check_shared_run_dir
from simvlg_video.world import barrier, init_world, max_over_ranks, on_main, shutdown

TIMEOUT_MIN = 0.05  # a collective timeout shorter than rank 0's slow work below (the other jobs: 1 minute)


def _rank(rank: int, port: int, job: str, folder: str, results) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"})
    os.environ["MASTER_PORT"] = str(port)
    try:
        world = init_world(TIMEOUT_MIN if job == "slow" else 1.0)
        results.put((rank, JOBS[job](world, Path(folder))))
        shutdown(world)
    except BaseException:  # the parent reports it
        results.put((rank, traceback.format_exc()))


def _slow_rank0_work(world, folder: Path):
    def work() -> str:
        time.sleep(TIMEOUT_MIN * 60 * 3)  # three collective timeouts: a collective would have failed
        return "probed"

    value = on_main(work, world, "probing")
    return value, max_over_ranks(world.rank + 1, world)  # the group still works afterwards


def _failing_rank0_work(world, folder: Path):
    def work() -> None:
        raise InputError("manifest.jsonl line 3: no captions")

    try:
        on_main(work, world, "probing")
    except InputError as error:
        return f"InputError: {error}"
    return "no error"


def _stop_on_rank1(world, folder: Path):
    return max_over_ranks(15 if world.rank == 1 else 0, world)


def _private_run_dirs(world, folder: Path):
    try:
        check_shared_run_dir(folder / f"seen_by_rank{world.rank}", world)  # each rank a folder of its own
    except RunDirNotShared as error:
        return str(error)
    return "no error"


def _one_run_dir(world, folder: Path):
    check_shared_run_dir(folder / "shared", world)
    barrier(world)  # rank 0 has removed its check file
    return sorted(path.name for path in (folder / "shared").iterdir())


JOBS = {
    "slow": _slow_rank0_work,
    "failing": _failing_rank0_work,
    "stop": _stop_on_rank1,
    "private": _private_run_dirs,
    "shared": _one_run_dir,
}


def run_two(job: str, folder: Path) -> dict[int, object]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_rank, args=(rank, port, job, str(folder), results)) for rank in range(2)]
    for process in processes:
        process.start()
    found = dict(results.get(timeout=300) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    return found


@pytest.mark.slow
def test_rank0_work_longer_than_the_collective_timeout_reaches_every_rank(tmp_path: Path):
    assert run_two("slow", tmp_path) == {0: ("probed", 2), 1: ("probed", 2)}


@pytest.mark.slow
def test_a_failure_of_rank0_work_is_raised_on_every_rank(tmp_path: Path):
    message = "InputError: manifest.jsonl line 3: no captions"
    assert run_two("failing", tmp_path) == {0: message, 1: message}


@pytest.mark.slow
def test_a_stop_seen_by_one_rank_is_seen_by_all(tmp_path: Path):
    assert run_two("stop", tmp_path) == {0: 15, 1: 15}


@pytest.mark.slow
def test_a_run_directory_a_rank_cannot_see_is_named_on_every_rank(tmp_path: Path):
    found = run_two("private", tmp_path)
    for rank in (0, 1):  # each names the folder it was given
        assert f"seen_by_rank{rank} must be on a filesystem every node sees" in str(found[rank])
        assert f"rank 1 on {socket.gethostname()} cannot read the file rank 0 wrote there" in str(found[rank])
    assert run_two("shared", tmp_path) == {0: [], 1: []}  # the check leaves nothing behind


def test_rank0_outcomes_travel_as_data_and_errors_come_back_by_name_among_the_toolkits_own():
    from simvlg_video.world import MainRankFailed, _from_store, _to_store

    for value in (None, "token", 3, Path("/runs/a/manifest.jsonl")):
        assert _from_store(json.loads(_to_store(value)), "probing") == value
    with pytest.raises(InputError, match="line 3: no captions"):
        _from_store(json.loads(_to_store(error=InputError("line 3: no captions"))), "probing")
    with pytest.raises(MainRankFailed, match="KeyError"):  # not a user error: its name and message only
        _from_store(json.loads(_to_store(error=KeyError("x"))), "probing")
    with pytest.raises(MainRankFailed, match="system"):  # a name outside the toolkit's errors builds nothing
        _from_store({"error": "system", "message": "rm -rf /"}, "probing")
    with pytest.raises(TypeError):
        _to_store(object())
