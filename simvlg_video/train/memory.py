"""Peak memory of a training run, for its summary: torch's allocator peak on a GPU, the process's resident peak on
a CPU."""

from __future__ import annotations

import contextlib
import resource
import sys
from pathlib import Path

import torch


def reset_peak_memory(device: torch.device) -> None:
    """Start peak-memory accounting afresh (one run of a sweep must not report the previous run's peak).

    GPU: torch's counter. CPU on Linux: the kernel's peak-RSS mark (VmHWM), reset through /proc/self/clear_refs.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(GiB, what it measures): torch's peak allocation on a GPU since its last reset, else the process's peak
    resident memory (since `reset_peak_memory` on Linux; the process's lifetime peak elsewhere)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "GPU allocated"
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20, "process RSS"
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (kib / 2**30 if sys.platform == "darwin" else kib / 2**20), "process RSS"
