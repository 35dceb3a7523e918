"""The stop request a signal leaves, in this process: SIGTERM and SIGUSR1 are recorded (not acted on) while the
context is open, and the handlers that were there before come back when it closes."""

from __future__ import annotations

import os
import signal

from simvlg_video.train.stop_signals import StopSignals
from simvlg_video.world import World


def test_a_signal_is_recorded_and_the_previous_handlers_return():
    before = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGUSR1)}
    with StopSignals() as stop:
        assert stop.agreed(World()) is None
        os.kill(os.getpid(), signal.SIGUSR1)  # delivered before os.kill returns to Python code
        assert stop.agreed(World()) == signal.SIGUSR1
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.agreed(World()) == signal.SIGTERM  # the process is still alive: the signal only asked
    assert {number: signal.getsignal(number) for number in before} == before
