"""Run a decode function on one untrusted file within the limits: a time limit and a memory limit that hold in
native code (the child process of ``isolated.py``), and every failure turned into one :class:`VideoDecodeError`
that names the file and says why, so a loader skips and counts it and goes on.

Without a time limit the function runs in the calling process (no child, hence no time or memory limit).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from simvlg_video.data.decode import VideoDecodeError
from simvlg_video.data.isolated import CallTimeout, ChildDied, IsolatedCaller
from simvlg_video.data.limits import memory_limit_bytes


class DecodeGuard:
    """Calls decode functions (module-level functions whose first argument names the file) under the limits.

    ``timeout``: seconds a call may take (None: run here, unlimited); ``memory_gib``: the child's address space
    (None: unlimited); ``preload``: modules the child imports once, before its first call.
    """

    def __init__(self, timeout: float | None, memory_gib: float | None, preload: tuple[str, ...] = ()) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError(f"decode_timeout must be > 0 seconds or None, got {timeout!r}")
        self.timeout = timeout
        self.memory_gib = memory_gib
        limit = memory_limit_bytes(memory_gib)
        self.caller = IsolatedCaller(timeout, preload=preload, memory_limit=limit) if timeout is not None else None

    def __call__(self, source: str | Path, function: Callable, *args: Any, **kwargs: Any) -> Any:
        """``function(*args, **kwargs)``, in the child when there is a time limit; `source` is the file (or the name
        of the bytes) that an error names."""
        if self.caller is None:
            return function(*args, **kwargs)
        name = f"{_module_name(function)}:{function.__qualname__}"
        try:
            return self.caller(name, *args, **kwargs)
        except CallTimeout:
            raise VideoDecodeError(
                source, f"decoding did not finish within {self.timeout:g} s (decoder process killed)"
            ) from None
        except ChildDied as error:
            raise VideoDecodeError(source, str(error)) from None
        except MemoryError:
            limit = f"{self.memory_gib:g} GiB, data.decode_memory_gib" if self.memory_gib is not None else "no limit"
            raise VideoDecodeError(
                source, f"decoding needs more memory than the decode process may map ({limit})"
            ) from None

    @property
    def restarts(self) -> int:
        """Decode processes killed after a time-out or found dead."""
        return self.caller.restarts if self.caller is not None else 0

    def close(self) -> None:
        """Stop the decode process (a new one starts on the next call)."""
        if self.caller is not None:
            self.caller.close()


def _module_name(function: Callable) -> str:
    """The name the decode process imports `function`'s module by (a module run with `python -m` is `__main__`
    here)."""
    if function.__module__ != "__main__":
        return function.__module__
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is None:
        raise ValueError(f"{function.__qualname__} is defined in a script, which a decode process cannot import")
    return spec.name


def map_guarded(
    function: Callable,
    jobs: Iterable[tuple[Any, tuple]],
    workers: int,
    timeout: float,
    memory_gib: float | None,
    preload: tuple[str, ...] = (),
    **kwargs: Any,
) -> Iterator[tuple[Any, Any]]:
    """``function(*args, **kwargs)`` for every job (source, args) in `workers` threads, each owning one decode
    process with the limits; yields (source, its result or the exception it raised) as each finishes, so a caller
    can record progress as it comes. Stopping the iteration early cancels what has not started."""
    local = threading.local()
    guards: list[DecodeGuard] = []

    def run(source: Any, args: tuple) -> tuple[Any, Any]:
        if not hasattr(local, "guard"):
            local.guard = DecodeGuard(timeout, memory_gib, preload)
            guards.append(local.guard)
        try:
            return source, local.guard(source, function, *args, **kwargs)
        except Exception as error:
            return source, error

    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        futures = [pool.submit(run, source, args) for source, args in jobs]
        for future in as_completed(futures):
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for guard in guards:
            guard.close()
