"""Batches decoded by threads of the training process: the loader for the GPU decoder.

NVDEC frames land in GPU memory of the process that decodes them, so the decoding happens here rather than in
DataLoader worker processes. Each thread owns one open hardware decoder (see ``clip_reader.py``), several
threads keep several decodes in flight, and batches are prefetched while the model runs. An item that is not
back within the time limit becomes an error item (the clip is skipped) and a fresh thread takes the stuck one's
place, so a hang inside a decoder costs one clip and one idle thread, never the run. The threads stop when the
loader is closed or garbage-collected, so repeated evaluations do not pile them up.
"""

from __future__ import annotations

import logging
import queue
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import torch

logger = logging.getLogger(__name__)

# Used when the dataset's reader sets no decode time limit: a hung hardware decoder must still be abandoned.
DEFAULT_ITEM_TIMEOUT = 120.0


class ThreadedClipLoader:
    """Iterates batches of ``collate(items)`` like a DataLoader over ``dataset``.

    The shuffle order comes from a generator seeded by ``seed`` and advanced once per epoch, as a DataLoader's,
    or in ``order`` (an iterable of dataset indices, re-read each epoch).
    Up to ``prefetch_batches`` batches are decoded ahead.
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        num_threads: int,
        collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
        prefetch_batches: int = 2,
        order: Iterable[int] | None = None,
    ) -> None:
        if batch_size < 1 or num_threads < 1 or prefetch_batches < 1:
            raise ValueError(
                f"batch_size, num_threads and prefetch_batches must be >= 1, got {batch_size},"
                f" {num_threads}, {prefetch_batches}"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.order = order
        self.drop_last = drop_last
        self.collate = collate
        self.prefetch_batches = prefetch_batches
        self.generator = torch.Generator().manual_seed(seed)
        timeout = dataset.reader.decode_timeout
        self.item_timeout = timeout if timeout is not None else DEFAULT_ITEM_TIMEOUT
        self.pool = _ReplaceablePool(num_threads)
        self._stop_threads = weakref.finalize(self, self.pool.close)  # the threads hold the pool, not the loader

    def close(self) -> None:
        """Stop the decoding threads (a thread stuck in a decoder stops when its call returns)."""
        self._stop_threads()

    def __len__(self) -> int:
        count = len(self.order) if self.order is not None else len(self.dataset)
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.order is not None:
            order = list(self.order)
        elif self.shuffle:
            order = torch.randperm(len(self.dataset), generator=self.generator).tolist()
        else:
            order = list(range(len(self.dataset)))
        count = len(order)
        batches = [order[start : start + self.batch_size] for start in range(0, count, self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        pending: list[list[tuple[int, Future]]] = []
        try:
            for batch in batches:
                pending.append([(index, self.pool.submit(self.dataset.__getitem__, index)) for index in batch])
                if len(pending) > self.prefetch_batches:
                    yield self._collect(pending.pop(0))
            while pending:
                yield self._collect(pending.pop(0))
        finally:  # an iteration stopped early: drop the prefetched work that has not started
            for futures in pending:
                for _, future in futures:
                    future.cancel()

    def _collect(self, futures: list[tuple[int, Future]]) -> dict[str, Any]:
        items = []
        for index, future in futures:
            try:
                items.append(future.result(timeout=self.item_timeout))
            except FutureTimeout:
                record = self.dataset.records[index]
                reason = f"decoding did not finish within {self.item_timeout:g} s (decoder thread abandoned)"
                logger.warning("skipping clip %s: cannot decode %s: %s", record.clip_id, record.video_path, reason)
                self.pool.replace_stuck_thread()
                items.append({"clip_id": record.clip_id, "error": reason, "video": str(record.video_path)})
        return self.collate(items)


_STOP = None  # the task that ends a thread


class _ReplaceablePool:
    """A fixed number of daemon threads serving a task queue; a stuck thread can be written off and replaced."""

    def __init__(self, num_threads: int) -> None:
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.written_off = 0
        self.started = 0
        self.closed = False
        for _ in range(num_threads):
            self._start_thread()

    def close(self) -> None:
        """One stop per thread ever started; work still queued is cancelled."""
        self.closed = True
        while True:
            try:
                task = self.tasks.get_nowait()
            except queue.Empty:
                break
            if task is not _STOP:
                task[0].cancel()
        for _ in range(self.started):
            self.tasks.put(_STOP)

    def submit(self, function: Callable, *args: Any) -> Future:
        if self.closed:
            raise RuntimeError("the loader was closed")
        future: Future = Future()
        self.tasks.put((future, function, args))
        return future

    def replace_stuck_thread(self) -> None:
        """A thread is stuck in a call: start another so the pool keeps its size (the stuck one, if it ever
        returns, keeps serving: the pool is then one larger, which is harmless)."""
        self.written_off += 1
        self._start_thread()

    def _start_thread(self) -> None:
        self.started += 1
        threading.Thread(target=_serve, args=(self.tasks,), daemon=True, name="clip-decoder").start()


def _serve(tasks: queue.SimpleQueue) -> None:
    """A pool thread: run tasks until the stop task (it holds the queue only, so the pool can be collected)."""
    while True:
        task = tasks.get()
        if task is _STOP:
            return
        future, function, args = task
        if not future.set_running_or_notify_cancel():
            continue
        try:
            future.set_result(function(*args))
        except BaseException as error:
            future.set_exception(error)
