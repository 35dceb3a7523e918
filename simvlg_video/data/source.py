"""Where a run's manifest comes from: a given file, or the synthetic set generated once into a cache folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

MANIFEST = "manifest.jsonl"


def resolve_manifest(data: DictConfig) -> Path:
    """`data.manifest` when set (it must exist), else the synthetic set for these settings, generated if absent."""
    try:
        manifest = data.get("manifest")
    except (MissingMandatoryValue, InterpolationToMissingValueError) as error:  # `${data.root}/...`, `root: ???`
        missing = str(error).splitlines()[0]
        raise ValueError(f"data.manifest cannot be resolved ({missing}); give the missing value on the command "
                         "line, e.g. data.root=/path/to/dataset") from None
    if manifest:
        path = Path(manifest).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"data.manifest: {path} does not exist (a dataset's manifest is written by "
                                    "simvlg_video.data_tools.convert, then checked by data_tools.check_videos)")
        return path
    if OmegaConf.is_missing(data, "manifest"):
        raise ValueError("data.manifest is not set (???): give data.manifest=FILE on the command line")
    if data.get("synthetic") is None:
        raise ValueError("data.manifest and data.synthetic are both null: set data.manifest to a manifest file "
                         "(or choose a data config that has one, e.g. data=msrvtt data.root=FOLDER)")
    settings = OmegaConf.to_container(data.synthetic, resolve=True)
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    out_dir = Path(data.cache_dir).expanduser() / key
    manifest = out_dir / MANIFEST
    if not manifest.is_file():  # the generator writes the manifest last, so its presence means complete
        instantiate(data.synthetic, out_dir=out_dir)
    return manifest
