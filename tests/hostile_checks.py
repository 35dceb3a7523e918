"""Decoders that misbehave on purpose, for tests that run them in the decode process (`tests/` must then be on the
child's PYTHONPATH): a file named hang* blocks in C code as a stuck decoder does, one named crash* aborts the process
as a crashing decoder does; every other file gets the real check."""

from __future__ import annotations

import os
import time
from pathlib import Path

from simvlg_video.data_tools.check_videos import VideoCheck, check_video


def check(path: str, *args) -> VideoCheck:
    """`check_video`, except that hang* files never return and crash* files kill the process."""
    name = Path(path).name
    if name.startswith("hang"):
        time.sleep(3600)  # a sleep in C code: only killing the process ends it
    if name.startswith("crash"):
        os.abort()
    return check_video(path, *args)
