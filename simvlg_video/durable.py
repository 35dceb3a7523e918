"""Files that survive a power loss.

A file's bytes reach the disk only when it is fsynced, and a rename only when its folder is: without both, a machine
that loses power can come back with a renamed file that is empty or cut short. Everything here writes under a
temporary name, fsyncs, renames over the final name and fsyncs the folder, so a crash at any instant leaves the old
file or the new one, never a damaged one.

A leaf module: it imports nothing of ours.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_file(path: Path) -> None:
    """Flush one written file's bytes to the disk."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_folder(path: Path) -> None:
    """Flush a folder's entries (files created, renamed or removed in it) to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(folder: Path) -> None:
    """Flush every file under `folder`, then every folder from the deepest up to `folder` itself."""
    folders = [folder]
    for path in sorted(folder.rglob("*")):
        if path.is_dir():
            folders.append(path)
        else:
            fsync_file(path)
    for path in reversed(folders):
        fsync_folder(path)


def rename_durably(source: Path, target: Path) -> None:
    """Rename `source` to `target` (replacing a file there) and flush both folders' entries."""
    os.replace(source, target)
    fsync_folder(target.parent)
    if source.parent != target.parent:
        fsync_folder(source.parent)


def write_text_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text`: the old content or the new one survives a crash, never a part of either."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        rename_durably(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
