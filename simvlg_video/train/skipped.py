"""The samples a training run could not use: counted in the checkpoint, listed one per line in RUN_DIR/skipped.jsonl.

A long run over web data meets many unreadable samples, and a checkpoint that carried every one of them would grow
without bound. The checkpoint keeps the count and the last few (for messages); each sample is appended to the
journal when it is met, as a JSON line with its process's rank, its number there, and the epoch it was met in. A
run resumed after a kill meets again the samples its killed attempt had met past the checkpoint (on another number
of processes, other ranks meet them): a sample the journal already holds for that epoch is not written twice.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

SKIPPED_JOURNAL = "skipped.jsonl"
RECENT = 20  # skipped samples a checkpoint keeps, the newest, for messages


def sample_identity(entry: dict) -> tuple:
    """What tells one skipped sample of a run from another: its epoch, file, clip id and (in a shard) ordinal."""
    return tuple(entry.get(key) for key in ("epoch", "video", "clip_id", "sample"))


def share_of_skipped(saved: list[dict], rank: int, world_size: int) -> dict:
    """This rank's part of the skipped-sample states of an interrupted run of any number of processes: its own (none
    for a process the run did not have) and, for rank 0, those of the processes it no longer has, so that the
    counts still add up to the run's."""
    mine = [saved[rank]] if rank < len(saved) else []
    if rank == 0:
        mine += saved[world_size:]
    return {
        "count": sum(int(state["count"]) for state in mine),
        "recent": [entry for state in mine for entry in state["recent"]][-RECENT:],
    }


class SkippedSamples:
    """How many samples this process skipped (``len``), the newest :data:`RECENT` of them (iteration), and the
    journal every one is appended to (None: none is written)."""

    def __init__(self, journal: Path | None = None, rank: int = 0) -> None:
        self.journal = journal
        self.rank = rank
        self.count = 0
        self.recent: deque[dict] = deque(maxlen=RECENT)
        self._journaled: set[tuple] | None = None  # the samples the journal holds (None: not read yet)
        self._line_started = False  # whether a line cut short by a kill has been ended

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[dict]:
        return iter(self.recent)

    def add(self, entries: Iterable[dict]) -> None:
        """Count `entries` ({clip_id, video, reason, epoch[, sample]}) and append to the journal those it does not
        hold yet."""
        if self._journaled is None:  # an attempt killed past its last checkpoint wrote some of these already
            self._journaled = self._samples_in_journal()
        lines = []
        for entry in entries:
            self.count += 1
            self.recent.append(entry)
            if sample_identity(entry) not in self._journaled:
                self._journaled.add(sample_identity(entry))
                lines.append(json.dumps({"rank": self.rank, "n": self.count, **entry}, ensure_ascii=False) + "\n")
        if lines and self.journal is not None:
            if not self._line_started:
                lines.insert(0, "\n" if _ends_mid_line(self.journal) else "")
                self._line_started = True
            descriptor = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:  # one append per batch: the lines of several processes do not interleave
                os.write(descriptor, "".join(lines).encode("utf-8"))
            finally:
                os.close(descriptor)

    def state_dict(self) -> dict:
        return {"count": self.count, "recent": list(self.recent)}

    def load_state_dict(self, state: dict | list) -> None:
        """Continue from a checkpoint's count (a list: a checkpoint that kept every skipped sample)."""
        if isinstance(state, list):
            self.count, recent = len(state), state
        else:
            self.count, recent = int(state["count"]), state["recent"]
        self.recent = deque(recent, maxlen=RECENT)
        self._journaled = None

    def _samples_in_journal(self) -> set[tuple]:
        """The samples the journal lists, whichever rank wrote them (lines cut short by a kill are ignored)."""
        found: set[tuple] = set()
        if self.journal is None or not self.journal.is_file():
            return found
        with self.journal.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict):
                    with contextlib.suppress(TypeError):  # a damaged line's unhashable values identify nothing
                        found.add(sample_identity(entry))
        return found


def _ends_mid_line(path: Path) -> bool:
    """Whether the file's last line has no newline (a write cut short by a kill)."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with path.open("rb") as handle:
        handle.seek(-1, 2)
        return handle.read(1) != b"\n"
