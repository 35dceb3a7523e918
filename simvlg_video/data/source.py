"""Where a run's manifest comes from: a given file, or the synthetic set generated once into a cache folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

MANIFEST = "manifest.jsonl"


def resolve_manifest(data: DictConfig) -> Path:
    """`data.manifest` when set (it must exist), else the synthetic set for these settings, generated if absent."""
    if data.get("manifest"):
        path = Path(data.manifest).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"data.manifest: {path} does not exist")
        return path
    settings = OmegaConf.to_container(data.synthetic, resolve=True)
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    out_dir = Path(data.cache_dir).expanduser() / key
    manifest = out_dir / MANIFEST
    if not manifest.is_file():  # the generator writes the manifest last, so its presence means complete
        instantiate(data.synthetic, out_dir=out_dir)
    return manifest
