"""Fingerprints of the frozen files a model directory points at, so a changed file is noticed instead of used.

A fingerprint records, for every file of a weights file or a model folder, its size and a SHA-256 over samples of its
content: the first and last MiB and 64 blocks of 64 KiB spread evenly between. Taking one reads at most 6 MiB per
file whatever its size, so every load checks it. Any rewrite of a weights file (another
fine-tune, another precision, a truncated copy) changes its size or its samples; copying or moving the files does not.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from simvlg_video.errors import UserError

_EDGE = 1 << 20  # bytes hashed at each end of a file
_BLOCK = 1 << 16  # bytes of each block sampled between
_BLOCKS = 64
# Files of a model folder that no loader reads; editing them does not change the model.
_IGNORED_SUFFIXES = (".md", ".lock")
_IGNORED_NAMES = ("LICENSE", "LICENSE.txt", "NOTICE", ".gitattributes")


class FrozenSourceChanged(UserError, ValueError):
    """A frozen file or folder differs from the one a model directory was written with."""


def _sampled_digest(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        if size <= 2 * _EDGE + _BLOCKS * _BLOCK:
            digest.update(handle.read())
            return digest.hexdigest()
        offsets = [0] + [_EDGE + (size - 2 * _EDGE - _BLOCK) * i // (_BLOCKS - 1) for i in range(_BLOCKS)]
        for offset in offsets:
            handle.seek(offset)
            digest.update(handle.read(_EDGE if offset == 0 else _BLOCK))
        handle.seek(size - _EDGE)
        digest.update(handle.read(_EDGE))
    return digest.hexdigest()


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix.lower() not in _IGNORED_SUFFIXES
        and p.name not in _IGNORED_NAMES
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )


def fingerprint(path: str | Path) -> dict[str, dict]:
    """{file name (relative to a folder; the file's own name for a file): {"size", "sha256_sampled"}}."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    found = {}
    for file in _files(path):
        size = file.stat().st_size
        name = file.name if file == path else str(file.relative_to(path))
        found[name] = {"size": size, "sha256_sampled": _sampled_digest(file, size)}
    return found


def check_fingerprint(label: str, path: str | Path, recorded: dict[str, dict]) -> None:
    """Raise FrozenSourceChanged naming every file of `path` that was added, removed or changed since `recorded`."""
    current = fingerprint(path)
    problems = [f"{name}: missing" for name in sorted(set(recorded) - set(current))]
    problems += [f"{name}: new file" for name in sorted(set(current) - set(recorded))]
    for name in sorted(set(recorded) & set(current)):
        was, now = recorded[name], current[name]
        if was["size"] != now["size"]:
            problems.append(f"{name}: size {was['size']} -> {now['size']} bytes")
        elif was["sha256_sampled"] != now["sha256_sampled"]:
            problems.append(f"{name}: content changed (same size)")
    if problems:
        raise FrozenSourceChanged(
            f"{label} {path} is not the one this model was made with:\n  "
            + "\n  ".join(problems)
            + "\nPoint the model at the original files, or adapt again from the new ones."
        )
