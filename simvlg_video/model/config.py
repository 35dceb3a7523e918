"""What a captioner is made of, as one typed record: `ModelConfig`, one section per part.

It is what a model directory's model.yaml holds and what the architectures in configs/model/ describe. Reading one
checks it whole: unknown keys, wrong types and missing values are errors naming the file and the key, and the parts
it names (the placement, the connector, the frame sampler) are chosen by name from the toolkit's registries; an
import path or any other instruction to build code is refused before anything is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from simvlg_video.adapters.placements import placement_from
from simvlg_video.choices import ChoiceError, instruction_keys
from simvlg_video.data.samplers import sampler_from
from simvlg_video.errors import UserError
from simvlg_video.model.connector import ConnectorConfig
from simvlg_video.model.lm import LMConfig
from simvlg_video.model.qformer import QFormerConfig
from simvlg_video.model.vit import VIT_SETTINGS, VitConfig

FORMAT = 2  # of a model directory; 1: the first layout (only the tensors of the modules that trained), never loaded
CONNECTORS = {"tome": ConnectorConfig, "qformer": QFormerConfig}  # `connector.kind` -> its typed section


class ModelDirError(UserError, ValueError):
    """A path that is not a model directory this version reads, or one whose files do not fit each other."""


@dataclass
class ModelConfig:
    """model.yaml: one typed section per part of the captioner."""

    vit: VitConfig = field(default_factory=VitConfig)
    connector: Any = field(default_factory=ConnectorConfig)  # by `kind`: ConnectorConfig (tome, SimVLG's) or
    # QFormerConfig (qformer, BLIP-2's)
    lm: LMConfig = field(default_factory=LMConfig)
    image_size: int = 224  # frames are resized and cropped to this
    ln_vision_eps: float = 1e-5  # LayerNorm eps of ln_vision: torch's default in SimVLG and LAVIS; a Hugging Face
    # BLIP-2 uses its vision config's layer_norm_eps (1e-6)
    adapter: Any = None  # the placement by name with its settings ({name: reference, ...}:
    # simvlg_video.adapters.placements); None: the image model
    inference: Any = None  # how the model captions unless told otherwise ({data, sampler: {eval}, eval, precision}:
    # simvlg_video.eval.inference); None: the reference recipe's evaluation settings
    frozen: dict[str, Any] = field(default_factory=dict)  # "vit" / "lm": fingerprints of the frozen sources
    stored: dict[str, Any] = field(default_factory=dict)  # fingerprint of weights.safetensors (written with it)
    format: int = FORMAT


def read_settings(path: Path) -> DictConfig:
    """A YAML file of settings as a mapping; anything else is a ModelDirError naming the file."""
    try:
        raw = OmegaConf.load(path)
    except OmegaConfBaseException as error:
        raise ModelDirError(f"{path}: {str(error).splitlines()[0]}") from None
    if not isinstance(raw, DictConfig):
        raise ModelDirError(f"{path}: expected a mapping of settings, found a {type(raw).__name__}")
    return raw


def model_config_from(raw: DictConfig, source: str) -> ModelConfig:
    """`raw` settings checked against `ModelConfig` (the connector section against its kind's); errors name
    `source` and the key."""
    try:
        choose_parts_by_name(raw, source)
        connector = raw.pop("connector", None) or {}
        kind = connector.get("kind", "tome")
        if kind not in CONNECTORS:
            raise ModelDirError(f"{source}: connector.kind is {kind!r}; known kinds: {', '.join(CONNECTORS)}")
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), raw))
    except OmegaConfBaseException as error:
        raise ModelDirError(f"{source}: {str(error).splitlines()[0]}") from None
    try:
        cfg.connector = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(CONNECTORS[kind]), connector))
    except OmegaConfBaseException as error:
        raise ModelDirError(f"{source}: connector (kind {kind}): {str(error).splitlines()[0]}") from None
    unknown = sorted(set(cfg.vit.overrides) - VIT_SETTINGS)
    if unknown:  # e.g. timm.create_model's checkpoint_path, which would load a file no fingerprint checks
        raise ModelDirError(
            f"{source}: vit.overrides.{unknown[0]} is not a setting of the ViT ({', '.join(sorted(VIT_SETTINGS))})"
        )
    return cfg


def choose_parts_by_name(raw: DictConfig, source: str) -> None:
    """Replace `adapter` and `inference.sampler` of a model config by their by-name form, then refuse any
    instruction to build code left anywhere (`_target_`, `_args_`, ...): ModelDirError naming `source` and the key.
    Format-2 files written before names existed hold the toolkit's own `_target_` strings, translated here."""
    if raw.get("adapter") is not None:
        raw.adapter = _by_name(placement_from, raw.adapter, f"{source}: adapter")
    inference = raw.get("inference")
    sampler = inference.get("sampler") if isinstance(inference, DictConfig) else None
    if isinstance(sampler, DictConfig) and sampler.get("eval") is not None:  # {eval: ...}: a sampler config's part
        sampler.eval = _by_name(sampler_from, sampler.eval, f"{source}: inference.sampler.eval")
    elif sampler is not None:  # the flat form of earlier versions: the sampler itself
        inference.sampler = _by_name(sampler_from, sampler, f"{source}: inference.sampler")
    refused = instruction_keys(raw)
    if refused:
        raise ModelDirError(
            f"{source}: {refused[0]}: an instruction to build code, which a model directory cannot give "
            "(placements, connectors and samplers are chosen by name)"
        )


def _by_name(choose: Callable[[Any], Any], settings: Any, where: str) -> dict[str, Any]:
    try:
        return asdict(choose(settings))
    except ChoiceError as error:
        raise ModelDirError(f"{where}: {error}") from None


def load_model_config(name_or_path: str | Path) -> ModelConfig:
    """An architecture: a name in the `configs/model/` folder (e.g. simvlg_opt2.7b) or a .yaml path."""
    path = Path(name_or_path).expanduser()
    folder = resources.files("simvlg_video.configs") / "model"
    if path.suffix not in (".yaml", ".yml"):
        path = Path(str(folder / f"{name_or_path}.yaml"))
    if not path.is_file():
        known = sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))
        raise FileNotFoundError(f"model config {name_or_path!r} not found (a .yaml path, or one of {known})")
    raw = read_settings(path)
    check_format(raw, str(path), required=False)
    return model_config_from(raw, str(path))


def check_format(raw: DictConfig, source: str, required: bool) -> None:
    """A model config of another model-directory format is refused, with what to do; `required`: it must say."""
    if raw.get("format", None if required else FORMAT) != FORMAT:
        raise ModelDirError(
            f"{source} is a model directory in format {raw.get('format', 1)}; this version reads "
            f"format {FORMAT}: rebuild it (adapt or import it again)"
        )
