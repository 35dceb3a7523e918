"""Run decoding in a child process that can be killed: a time limit that holds when native code hangs.

Decoders hang inside C code on some damaged files (decord's ``get_batch`` holding the GIL, for one); a timeout in
the same thread cannot interrupt that. :class:`IsolatedCaller` keeps one long-lived child Python process per
owning process (a loader worker), sends it one call at a time over a pipe and waits at most ``timeout`` seconds
for the answer. A late answer means the child is killed and a fresh one started for the next call; a crash in
native code (a segfault) is reported the same way instead of taking the worker down. With ``memory_limit`` the
child's address space is capped (``RLIMIT_AS``), so a file that asks for gigabytes fails alone (a MemoryError, or
the child's death) instead of drawing the kernel's out-of-memory killer onto the trainer. Arrays come back as raw
bytes, without pickling. The child is restarted every ``max_calls`` calls so a decoder leak cannot grow.

The child runs ``python -m simvlg_video.data.isolated`` and executes functions named ``"module:function"``;
it dies with its owner (end of input, and on Linux a parent-death signal). Starting it (the interpreter, and the
``preload`` modules: the decoders) is not part of any call's time limit: the child says when it is ready.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

_LENGTH = struct.Struct("<Q")
STARTUP_LIMIT = 120.0  # seconds a new child may take to import its modules and say it is ready


class CallTimeout(TimeoutError):
    """The child did not answer within the time limit; it has been killed."""


class ChildDied(RuntimeError):
    """The child process exited (crashed) while working on a call."""


class IsolatedCaller:
    """Calls ``"module:function"`` with arguments in a child process, with a time limit per call.

    Not shared between processes: a copy inherited by a forked process (a DataLoader worker) starts its own
    child on first use and leaves the parent's alone. Thread-safe: calls from several threads queue up.
    """

    def __init__(
        self,
        timeout: float,
        max_calls: int = 500,
        preload: tuple[str, ...] = (),
        memory_limit: int | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if max_calls < 1:
            raise ValueError(f"max_calls must be >= 1, got {max_calls}")
        if memory_limit is not None and memory_limit < 1:
            raise ValueError(f"memory_limit must be >= 1 byte or None, got {memory_limit}")
        self.timeout = float(timeout)
        self.max_calls = max_calls
        self.memory_limit = memory_limit  # bytes of address space the child may map (None: no limit)
        self.preload = tuple(preload)  # modules the child imports before it is ready (outside every time limit)
        self.restarts = 0  # children killed after a time-out or found dead
        self._process: subprocess.Popen | None = None
        self._owner_pid = os.getpid()
        self._calls = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # a pickled copy (spawned loader worker) starts without a child
        state = dict(self.__dict__)
        state.update(_process=None, _owner_pid=None, _calls=0, _lock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __call__(self, function: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """``function(*args, **kwargs)`` in the child. Exceptions raised there are raised here (re-created from
        their pickle when possible); :class:`CallTimeout` and :class:`ChildDied` say the child is gone."""
        with self._lock:
            process = self._child()
            request = pickle.dumps((function, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
            deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
            try:
                process.stdin.write(_LENGTH.pack(len(request)) + request)
                process.stdin.flush()
                header = pickle.loads(_read_message(process.stdout.fileno(), deadline))
                if header[0] == "array":
                    _, dtype, shape = header
                    result = np.empty(shape, dtype=np.dtype(dtype))
                    _read_into(process.stdout.fileno(), memoryview(result.reshape(-1).view(np.uint8)), deadline)
                    return result
                if header[0] == "value":
                    return header[1]
                raise header[1]
            except CallTimeout:
                self._kill()
                raise
            except (ChildDied, BrokenPipeError) as error:
                status = self._kill(exiting=True)
                if isinstance(error, BrokenPipeError):
                    raise ChildDied(f"the decode process died before {function} ran ({status})") from None
                raise ChildDied(f"{error} ({status})") from None
            finally:
                self._calls += 1
                if self._calls >= self.max_calls and self._process is not None:
                    self.close()

    def close(self) -> None:
        """Stop the child (it exits on end of input; killed if it does not within a second)."""
        process, self._process = self._process, None
        if process is None or self._owner_pid != os.getpid():
            return
        try:
            process.stdin.close()
            process.wait(timeout=1.0)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
        finally:
            process.stdout.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _child(self) -> subprocess.Popen:
        if self._owner_pid != os.getpid():  # inherited through fork: never touch the parent's child
            self._process, self._owner_pid, self._calls = None, os.getpid(), 0
        if self._process is not None and self._process.poll() is not None:
            logger.warning(
                "decode process %d had exited (code %s); starting a new one",
                self._process.pid,
                self._process.returncode,
            )
            self._process = None
            self.restarts += 1
        if self._process is None:
            memory = str(self.memory_limit or 0)
            self._process = subprocess.Popen(
                [sys.executable, "-m", "simvlg_video.data.isolated", str(os.getpid()), memory, *self.preload],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            if hasattr(fcntl, "F_SETPIPE_SZ"):  # Linux: 1 MiB pipe, so frames cross in fewer system calls
                fcntl.fcntl(self._process.stdout.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
            self._calls = 0
            try:
                status, detail = pickle.loads(
                    _read_message(self._process.stdout.fileno(), time.monotonic() + STARTUP_LIMIT)
                )
            except (CallTimeout, ChildDied) as error:
                self._kill()
                raise ChildDied(f"the decode process did not start ({error})") from None
            if status != "ready":
                self._kill()
                raise ChildDied(f"the decode process could not start: {detail}")
        return self._process

    def _kill(self, exiting: bool = False) -> str:
        """Kill the child (if it still runs) and say how it ended; `exiting`: it closed its output, so give it a
        moment to exit and keep its own signal or exit code."""
        process, self._process = self._process, None
        if process is None:
            return "no process"
        if exiting:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=1.0)
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdin, process.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        self.restarts += 1
        return _exit_status(process.returncode, self.memory_limit)


def _exit_status(code: int, memory_limit: int | None) -> str:
    """How a child ended, in words: its signal or exit code, and its memory limit, the usual cause of an abort."""
    if code >= 0:
        how = f"exit code {code}"
    else:
        try:
            how = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"killed by signal {-code}"
    if memory_limit is not None:
        how += f"; it may map {memory_limit / 2**30:g} GiB (data.decode_memory_gib)"
    return how


def _read_message(fd: int, deadline: float) -> bytes:
    """One length-prefixed message from ``fd``, before ``deadline``."""
    prefix = bytearray(_LENGTH.size)
    _read_into(fd, memoryview(prefix), deadline)
    message = bytearray(_LENGTH.unpack(prefix)[0])
    _read_into(fd, memoryview(message), deadline)
    return bytes(message)


def _read_into(fd: int, buffer: memoryview, deadline: float) -> None:
    """Fill ``buffer`` from ``fd`` before ``deadline``, or raise CallTimeout / ChildDied."""
    done = 0
    while done < len(buffer):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise CallTimeout("the decode process did not answer in time")
        count = os.readv(fd, [buffer[done:]])
        if count == 0:
            raise ChildDied("the decode process exited while working (crashed in native code?)")
        done += count


# ---------------------------------------------------------------------------------------------- the child


def _serve(parent_pid: int, memory_limit: int, preload: list[str]) -> None:
    """Cap the address space at `memory_limit` bytes (0: no cap), import `preload`, say ready, then answer calls
    from stdin until it closes: a length-prefixed pickle in, a header (+ raw array bytes) out."""
    _die_with_parent(parent_pid)
    if memory_limit:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    reader, writer = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # stray prints from libraries must not corrupt the answers
    try:
        for module in preload:
            importlib.import_module(module)
    except Exception as error:
        _send(writer, ("failed", f"{type(error).__name__}: {error}"))
        return
    _send(writer, ("ready", None))
    functions: dict[str, Any] = {}
    while True:
        prefix = reader.read(_LENGTH.size)
        if len(prefix) < _LENGTH.size:
            return
        function_name, args, kwargs = pickle.loads(reader.read(_LENGTH.unpack(prefix)[0]))
        try:
            function = functions.get(function_name) or functions.setdefault(function_name, _resolve(function_name))
            result = function(*args, **kwargs)
        except Exception as error:
            _send(writer, ("error", _picklable(error)))
            continue
        if isinstance(result, np.ndarray):
            result = np.ascontiguousarray(result)
            _send(writer, ("array", result.dtype.str, result.shape))
            writer.write(memoryview(result.reshape(-1).view(np.uint8)))
            writer.flush()
        else:
            _send(writer, ("value", result))


def _send(writer, header: tuple) -> None:
    payload = pickle.dumps(header, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_LENGTH.pack(len(payload)) + payload)
    writer.flush()


def _resolve(name: str):
    module, _, attribute = name.partition(":")
    if not module or not attribute:
        raise ValueError(f"expected 'module:function', got {name!r}")
    target = importlib.import_module(module)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


def _picklable(error: Exception) -> Exception:
    """The exception itself when it survives pickling, else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to kill this process when its parent dies (a hung child must not outlive its worker)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(0)


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
