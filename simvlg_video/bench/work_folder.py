"""The model-file benchmark's --work folder: what the benchmark wrote there is listed in the folder itself, so a
later run reuses those files and the cleanup removes them and nothing else."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from simvlg_video.errors import InputError


class WorkFolder:
    """The --work folder and what the benchmark wrote into it, listed in the folder itself so that a later run
    reuses those files (after --keep) and the cleanup removes them and nothing else."""

    LISTING = ".model_files_bench.json"
    NAMES = frozenset({"eva_vit_g.pth", "opt-2.7b", "simvlg_image.pth", "tiny_model.yaml", "blip2-opt-2.7b", "model"})

    def __init__(self, path: Path):
        self.path = path
        self.made_by_us = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        listing = path / self.LISTING
        self.written: dict[str, bool] = {}
        if listing.is_file():
            try:
                self.written = json.loads(listing.read_text())
            except ValueError as error:
                raise InputError(f"{listing} is damaged ({error}); remove it and what the benchmark wrote") from None
            if not isinstance(self.written, dict) or not set(self.written) <= self.NAMES:
                raise InputError(f"{listing} is not the benchmark's list of its files; remove it")

    def finished(self, name: str) -> bool:
        """Whether DIR/name was written whole by this benchmark (a run before this one, with --keep)."""
        return self.written.get(name) is True and (self.path / name).exists()

    def claim(self, name: str) -> Path:
        """DIR/name, for the benchmark to write; refused when something the benchmark did not write is there."""
        target = self.path / name
        if target.exists() and name not in self.written:
            raise InputError(f"{target} exists and was not written by this benchmark; give another --work folder")
        _remove(target)
        self._record(name, False)
        return target

    def done(self, *names: str) -> None:
        for name in names:
            self._record(name, True)

    def clean(self) -> None:
        """Remove what the benchmark wrote (and DIR, when the benchmark made it and nothing else is left)."""
        for name in self.written:
            _remove(self.path / name)
        (self.path / self.LISTING).unlink(missing_ok=True)
        if self.made_by_us and not any(self.path.iterdir()):
            self.path.rmdir()

    def _record(self, name: str, whole: bool) -> None:
        self.written[name] = whole
        (self.path / self.LISTING).write_text(json.dumps(self.written, indent=1) + "\n")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
