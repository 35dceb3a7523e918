"""Timing on the GPU without host syncs in the timed region, the measured matrix-multiply rate, and model FLOP
utilisation against it."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import torch


def seconds_per_call(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Mean wall time of `repeats` back-to-back calls: CUDA events around the whole loop on a GPU (the calls queue
    without waiting for each other), `perf_counter` on the CPU."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - start) / repeats
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000.0 / repeats


def count_host_syncs(fn: Callable[[], object]) -> int:
    """How many times one call of `fn` makes the host wait for the GPU (torch's sync debug mode, as warnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 10) -> float:
    """FLOP/s of a size x size x size matrix product on random data in `dtype` (the MFU denominator, measured in the
    same run and the same dtype as the step it divides; too small a size never reaches the device's peak)."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    seconds_per_call(lambda: a @ b, 3, device)
    return 2.0 * size**3 / seconds_per_call(lambda: a @ b, repeats, device)


def model_flop_utilisation(flop_per_s: float, peak_flop_per_s: float) -> float | None:
    """The share of the measured peak a step's model FLOP rate reaches, or None where the rate is above the peak: then
    the peak was underestimated, and a utilisation above 100% would be printed as if it were one."""
    if peak_flop_per_s <= 0 or flop_per_s > peak_flop_per_s:
        return None
    return flop_per_s / peak_flop_per_s


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak GPU memory allocated since the last reset, in GiB (None on the CPU)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def reset_memory(device: torch.device) -> None:
    """Free cached blocks and restart the peak-memory count."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
