"""The precision a run computes in: the dtype its frozen weights are loaded as and the autocast it runs under.

A leaf module like `world`: everything may import it, it imports nothing of ours.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype a run computes in: what its frozen weights are loaded as and what autocast runs."""
    if precision not in PRECISION_DTYPES:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return PRECISION_DTYPES[precision]


def cpu_runs_bf16() -> bool:
    """Whether this CPU has bf16 matrix kernels (AVX512-BF16 or AMX); without them (AVX2 only) bf16 matmuls run
    much slower than fp32, so a CPU run keeps fp32 unless bf16 is asked for."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on the model's device, or nothing for fp32."""
    dtype = compute_dtype(precision)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
