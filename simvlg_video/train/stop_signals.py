"""Stopping a training run when the cluster asks: SIGTERM (what SLURM and Kubernetes send before they kill a job)
and SIGUSR1 (SLURM's `--signal=USR1@SECONDS` warning) make the run finish its step, save a checkpoint and exit with
status INTERRUPTED; `resume=auto` continues it.

The handler only records the signal. After every optimiser step the ranks agree on it (a one-number all-reduce), so
a signal that reached one rank stops every rank after the same step. Under torchrun the agent forwards the signals
it handles (`--signals-to-handle`) to its workers and kills them after `--shutdown-timeout` seconds.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from types import FrameType

from simvlg_video.durable import write_text_atomically
from simvlg_video.world import World, max_over_ranks

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# RUN_DIR/INTERRUPTED_MARKER: written when a run stops for a signal, removed when it resumes. torchrun exits with 1
# whatever its workers' statuses, so a batch script asks this file whether to requeue.
INTERRUPTED_MARKER = "interrupted.json"


class StopSignals:
    """A context that, while open, turns SIGTERM and SIGUSR1 into a request to stop after the current step.

    Outside the main thread (where Python cannot install handlers) it does nothing and signals keep their default
    action. A process forked inside it (a loader worker) keeps the default action too.
    """

    def __init__(self) -> None:
        self.received = 0  # the signal's number; 0: none
        self._previous: dict[int, object] = {}
        self._pid = os.getpid()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._pid = os.getpid()
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:  # a forked child: act as if no handler had been installed
            signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)
            return
        self.received = number  # nothing more in a handler: it may run in the middle of anything

    def agreed(self, world: World) -> signal.Signals | None:
        """The stop signal any rank received, the same answer on every rank (a collective: every rank calls it
        after the same step)."""
        number = max_over_ranks(self.received, world)
        return signal.Signals(number) if number else None


def mark_interrupted(run_dir: Path, record: dict) -> None:
    """Leave RUN_DIR/interrupted.json (the stop's log record) for the batch script that requeues the job."""
    write_text_atomically(run_dir / INTERRUPTED_MARKER, json.dumps(record) + "\n")


def clear_interrupted(run_dir: Path) -> None:
    (run_dir / INTERRUPTED_MARKER).unlink(missing_ok=True)
