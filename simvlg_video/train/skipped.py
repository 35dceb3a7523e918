"""The samples a training run could not use: counted in the checkpoint, listed one per line in RUN_DIR/skipped.jsonl.

A long run over web data meets many unreadable samples, and a checkpoint that carried every one of them would grow
without bound. The checkpoint keeps the count and the last few (for messages); each sample is appended to the
journal when it is met, as a JSON line with its process's rank and its number there. A run resumed after a kill
meets again, in the same order, the samples its killed attempt had met past the checkpoint: the journal already
holds those numbers, so they are not written twice.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

SKIPPED_JOURNAL = "skipped.jsonl"
RECENT = 20  # skipped samples a checkpoint keeps, the newest, for messages


class SkippedSamples:
    """How many samples this process skipped (``len``), the newest :data:`RECENT` of them (iteration), and the
    journal every one is appended to (None: none is written)."""

    def __init__(self, journal: Path | None = None, rank: int = 0) -> None:
        self.journal = journal
        self.rank = rank
        self.count = 0
        self.recent: deque[dict] = deque(maxlen=RECENT)
        self._journaled: int | None = None  # how many of this rank's samples the journal holds (None: not read)
        self._line_started = False  # whether a line cut short by a kill has been ended

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[dict]:
        return iter(self.recent)

    def add(self, entries: Iterable[dict]) -> None:
        """Count `entries` ({clip_id, video, reason}) and append to the journal those it does not hold yet."""
        if self._journaled is None:  # an attempt killed before its first checkpoint wrote these already
            self._journaled = self._numbers_in_journal()
        lines = []
        for entry in entries:
            self.count += 1
            self.recent.append(entry)
            if self.count > self._journaled:
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
            self._journaled = self.count

    def state_dict(self) -> dict:
        return {"count": self.count, "recent": list(self.recent)}

    def load_state_dict(self, state: dict | list) -> None:
        """Continue from a checkpoint's count (a list: a checkpoint that kept every skipped sample)."""
        if isinstance(state, list):
            self.count, recent = len(state), state
        else:
            self.count, recent = int(state["count"]), state["recent"]
        self.recent = deque(recent, maxlen=RECENT)
        self._journaled = max(self.count, self._numbers_in_journal())

    def _numbers_in_journal(self) -> int:
        """The highest number this rank wrote into the journal (0: none; lines cut short by a kill are ignored)."""
        if self.journal is None or not self.journal.is_file():
            return 0
        highest = 0
        with self.journal.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and entry.get("rank") == self.rank and isinstance(entry.get("n"), int):
                    highest = max(highest, entry["n"])
        return highest


def _ends_mid_line(path: Path) -> bool:
    """Whether the file's last line has no newline (a write cut short by a kill)."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with path.open("rb") as handle:
        handle.seek(-1, 2)
        return handle.read(1) != b"\n"
