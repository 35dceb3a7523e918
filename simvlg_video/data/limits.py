"""What one untrusted image or video may cost: its pixels, its encoded size, and the memory of the process that
decodes it. Every loader, `check_videos` and `caption` apply the same limits, whose defaults live here.

A file over a limit is refused from its header, before anything is decoded: a decompression bomb (a PNG of a few
kilobytes that unpacks to gigabytes) or a 16K video costs one skipped file, never the run. Special files (a FIFO,
a device, a socket) are refused before they are opened, since opening one can block forever.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

# Seconds one probe or decode may take before its process is killed and the file skipped.
DEFAULT_DECODE_TIMEOUT = 60.0
# Pixels of one image or one video frame (width x height): 8192 x 8192, above 8K video (7680 x 4320).
DEFAULT_MAX_PIXELS = 8192 * 8192
# Address space of a decode process: ample for a clip of 8K frames, well below what a 16K video asks for.
DEFAULT_DECODE_MEMORY_GIB = 4.0
# Bytes of one member of a WebDataset shard (an encoded image, its caption, its metadata), read whole into memory.
DEFAULT_MAX_MEMBER_BYTES = 64 * 2**20


def pixel_problem(width: int, height: int, max_pixels: int | None) -> str | None:
    """Why a picture of `width` x `height` is refused, or None when it is within `max_pixels` (None: no limit)."""
    if max_pixels is not None and width * height > max_pixels:
        return f"{width}x{height} pixels ({width * height:,}), over the pixel limit of {max_pixels:,} (data.max_pixels)"
    return None


def file_problem(path: str | Path) -> str | None:
    """Why `path` cannot be read as a media file (missing, not a regular file, empty), or None; it is not opened."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return "file not found"
    except OSError as error:
        return f"cannot read the file ({error.strerror})"
    if not stat.S_ISREG(status.st_mode):
        return "not a regular file"
    if status.st_size == 0:
        return "file is empty (0 bytes)"
    return None


def memory_limit_bytes(gib: float | None) -> int | None:
    """`data.decode_memory_gib` as bytes (None: no limit); refuses a limit that is not positive."""
    if gib is None:
        return None
    if not gib > 0:
        raise ValueError(f"decode_memory_gib must be > 0 or None, got {gib!r}")
    return int(gib * 2**30)
