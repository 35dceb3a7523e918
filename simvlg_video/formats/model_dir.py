"""Our model directory: a whole captioner, with nothing lost and nothing silently changed.

```
MODEL_DIR/model.yaml               what to build (read into `ModelConfig`), where its frozen parts live, their
                                   fingerprints, and how it captions by default
MODEL_DIR/weights.safetensors      every tensor that is not read from a frozen file, whatever trained last
```
Frozen parts are pointers (`vit.weights`, a weights file; `lm.path`, a Hugging Face folder; both may be one Hugging
Face BLIP-2 folder), relative to the directory or absolute, so a video model exported from an image model does not
copy the ViT or the LLM. Each pointer carries a fingerprint, checked on every load. Loading is strict: a missing,
unexpected or mis-shaped tensor is an error naming it; no tensor may be absent.

A model directory is data: the placement, the connector and the frame sampler it names are chosen by name from the
toolkit's registries (PLACEMENTS, CONNECTORS, SAMPLERS); an import path or any other instruction to build code is
refused, naming the file and the key, before anything is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from simvlg_video.adapters.placements import placement_from
from simvlg_video.choices import ChoiceError, instruction_keys
from simvlg_video.data.samplers import sampler_from
from simvlg_video.formats.fingerprint import FrozenSourceChanged, check_fingerprint, fingerprint
from simvlg_video.formats.tensor_io import check_tensors, read_safetensors, write_safetensors
from simvlg_video.formats.vit_weights import fill_unsaved_buffers, load_vit_weights
from simvlg_video.model.adapter_protocol import adapter_modules
from simvlg_video.model.captioner import VideoCaptioner
from simvlg_video.model.connector import ConnectorConfig, build_tome_connector
from simvlg_video.model.lm import CaptionText, LMConfig, lm_skeleton, load_lm, load_tokenizer
from simvlg_video.model.parallel import whole_on_cpu
from simvlg_video.model.qformer import QFormerConfig, build_qformer_connector
from simvlg_video.model.vit import VIT_SETTINGS, VitConfig, build_vit

MODEL_CONFIG = "model.yaml"
WEIGHTS = "weights.safetensors"
FORMAT = 2  # 1: the first layout (only the tensors of the modules that trained), never loaded
CONNECTORS = {"tome": ConnectorConfig, "qformer": QFormerConfig}  # `connector.kind` -> its typed section


class ModelDirError(ValueError):
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
    inference: Any = None  # how the model captions unless told otherwise (frames, sampler by name, decoding; see
    # simvlg_video.eval.inference); None: the reference recipe's evaluation settings
    frozen: dict[str, Any] = field(default_factory=dict)  # "vit" / "lm": fingerprints of the frozen sources
    stored: dict[str, Any] = field(default_factory=dict)  # fingerprint of weights.safetensors (written with it)
    format: int = FORMAT


def read_model_config(path: str | Path) -> ModelConfig:
    """MODEL_DIR/model.yaml (or a model config .yaml) checked against `ModelConfig`: unknown keys, wrong types and
    missing values are errors naming the file and the key."""
    path = Path(path)
    try:
        raw = OmegaConf.load(path)
        if not isinstance(raw, DictConfig):
            raise ModelDirError(f"{path}: expected a mapping of settings, found a {type(raw).__name__}")
        if path.name == MODEL_CONFIG and raw.get("format") != FORMAT:
            raise ModelDirError(
                f"{path} is a model directory in format {raw.get('format', 1)}; this version reads "
                f"format {FORMAT}: rebuild it (adapt or import it again)"
            )
        choose_parts_by_name(raw, str(path))
        connector = raw.pop("connector", None) or {}
        kind = connector.get("kind", "tome")
        if kind not in CONNECTORS:
            raise ModelDirError(f"{path}: connector.kind is {kind!r}; known kinds: {', '.join(CONNECTORS)}")
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), raw))
    except OmegaConfBaseException as error:
        raise ModelDirError(f"{path}: {str(error).splitlines()[0]}") from None
    try:
        cfg.connector = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(CONNECTORS[kind]), connector))
    except OmegaConfBaseException as error:
        raise ModelDirError(f"{path}: connector (kind {kind}): {str(error).splitlines()[0]}") from None
    unknown = sorted(set(cfg.vit.overrides) - VIT_SETTINGS)
    if unknown:  # e.g. timm.create_model's checkpoint_path, which would load a file no fingerprint checks
        raise ModelDirError(
            f"{path}: vit.overrides.{unknown[0]} is not a setting of the ViT ({', '.join(sorted(VIT_SETTINGS))})"
        )
    return cfg


def choose_parts_by_name(raw: DictConfig, source: str) -> None:
    """Replace `adapter` and `inference.sampler` of a model config by their by-name form, then refuse any
    instruction to build code left anywhere (`_target_`, `_args_`, ...): ModelDirError naming `source` and the key.
    Format-2 files written before names existed hold the toolkit's own `_target_` strings, translated here."""
    if raw.get("adapter") is not None:
        raw.adapter = _by_name(placement_from, raw.adapter, f"{source}: adapter")
    inference = raw.get("inference")
    if isinstance(inference, DictConfig) and inference.get("sampler") is not None:
        inference.sampler = _by_name(sampler_from, inference.sampler, f"{source}: inference.sampler")
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


def resolve(base_dir: Path, path: str) -> Path:
    """A pointer of model.yaml as a path: relative ones are relative to the model directory."""
    return Path(path) if Path(path).is_absolute() else (base_dir / path).resolve()


def frozen_sources(cfg: ModelConfig, base_dir: Path) -> dict[str, Path]:
    """{"vit": weights file (when the ViT is not stored in the directory), "lm": LLM folder}."""
    if not cfg.lm.path:
        raise ModelDirError("the model has no lm.path: the LLM's Hugging Face folder must be given")
    sources = {"lm": resolve(base_dir, cfg.lm.path)}
    if cfg.vit.weights:
        sources["vit"] = resolve(base_dir, cfg.vit.weights)
    return sources


def build_connector(cfg: ConnectorConfig | QFormerConfig, vision_width: int) -> nn.Module:
    """The connector a `connector:` section describes, randomly initialised, reading ViT tokens of `vision_width`."""
    if isinstance(cfg, QFormerConfig):
        return build_qformer_connector(cfg, vision_width)
    return build_tome_connector(cfg)


def build_captioner(
    cfg: ModelConfig,
    base_dir: Path,
    dtype: torch.dtype = torch.float32,
    meta: bool = False,
    frozen_on_meta: bool = False,
) -> VideoCaptioner:
    """The captioner `cfg` describes, its frozen parts loaded straight into `dtype` (the ViT and the LLM never exist
    at a wider precision); everything else as initialised, in fp32. `meta=True` builds names and shapes only, on
    the meta device, reading no weights; `frozen_on_meta=True` does so for the parts behind frozen files only (what
    a new model directory needs: its own tensors, initialised, and pointers to the rest)."""
    sources = frozen_sources(cfg, base_dir)
    vit_from_file = "vit" in sources and not (meta or frozen_on_meta)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:  # a ViT whose weights come from a file is never randomly initialised (21 s for EVA-g on 2 cores)
        with torch.device("meta") if meta or "vit" in sources else torch.device("cpu"):
            vit = build_vit(cfg.vit.preset, **cfg.vit.overrides)
    finally:
        torch.set_default_dtype(previous)
    if vit_from_file:
        vit = vit.to_empty(device="cpu")
        load_vit_weights(vit, sources["vit"])
        fill_unsaved_buffers(vit)
    with torch.device("meta") if meta else torch.device("cpu"):
        connector = build_connector(cfg.connector, vit.embed_dim)
    lm = lm_skeleton(sources["lm"]) if meta or frozen_on_meta else load_lm(sources["lm"], dtype)[0]
    text = CaptionText(load_tokenizer(sources["lm"]), cfg.lm.prompt, cfg.lm.caption_end, cfg.lm.max_text_tokens)
    with torch.device("meta") if meta else torch.device("cpu"):
        model = VideoCaptioner(
            vit,
            connector,
            lm,
            text,
            connector_width=cfg.connector.hidden_size,
            project_vision=cfg.connector.kind == "tome",
            ln_vision_eps=cfg.ln_vision_eps,
        )
        if cfg.adapter is not None:
            placement_from(cfg.adapter).apply(model)
    return model


def _from_frozen_source(name: str, cfg: ModelConfig, adapter_prefixes: tuple[str, ...]) -> bool:
    if name.startswith("lm."):
        return True
    return bool(cfg.vit.weights) and name.startswith("vit.") and not name.startswith(adapter_prefixes)


def stored_tensors(model: nn.Module, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Every state-dict tensor of `model` that no frozen source provides (live tensors; FSDP shards as they are)."""
    prefixes = tuple(f"{name}." for name, _ in adapter_modules(model))
    return {
        name: tensor
        for name, tensor in model.state_dict(keep_vars=True).items()
        if not _from_frozen_source(name, cfg, prefixes)
    }


def load_model_dir(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[VideoCaptioner, ModelConfig]:
    """Check the frozen sources' fingerprints, build, and load the stored tensors, refusing any that are missing,
    unexpected or mis-shaped. The ViT and the LLM are loaded in `dtype` (a run's compute dtype)."""
    path = Path(path)
    config_file = path / MODEL_CONFIG
    if not path.is_dir():
        raise ModelDirError(f"{path} is not a model directory (not a folder)")
    if not config_file.is_file():
        raise ModelDirError(
            f"{path} is not a model directory: it has no {MODEL_CONFIG} (a model directory holds "
            f"{MODEL_CONFIG} and {WEIGHTS}; `adapt`, `lavis_checkpoint` and `blip2_checkpoint` "
            "write them)"
        )
    cfg = read_model_config(config_file)
    for label, source in frozen_sources(cfg, path).items():
        if label not in cfg.frozen:
            raise ModelDirError(f"{config_file} has no fingerprint for its frozen {label} ({source})")
        if not source.exists():
            raise ModelDirError(f"{config_file}: the frozen {label} {source} does not exist")
        check_fingerprint(f"the frozen {label} of {path}:", source, cfg.frozen[label])
    model = build_captioner(cfg, path, dtype)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise ModelDirError(f"{path} has no {WEIGHTS}")
    if cfg.stored != fingerprint(weights)[weights.name]:
        raise ModelDirError(
            f"{weights} is not the file {config_file} was written with (a write was interrupted, "
            "or one of the two files was replaced)"
        )
    stored = read_safetensors(weights)
    targets = stored_tensors(model, cfg)
    check_tensors({name: t.shape for name, t in targets.items()}, stored, str(weights))
    with torch.no_grad():
        for name, tensor in stored.items():
            targets[name].copy_(tensor)
    return model, cfg


def save_model_dir(
    model: nn.Module,
    cfg: ModelConfig,
    out_dir: str | Path,
    base_dir: Path | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write `cfg` and every stored tensor (`tensors` when given, e.g. gathered from FSDP shards, else the model's).

    Frozen pointers relative to `base_dir` (the directory the model was loaded from) become absolute; the
    fingerprints recorded when it was loaded are kept, those of new pointers are taken now. The directory is written
    under temporary names and renamed when complete; model.yaml records the weights file's fingerprint, so a
    directory left inconsistent by a crash is refused on load rather than used.
    """
    out_dir = Path(out_dir)
    base_dir = out_dir if base_dir is None else Path(base_dir)
    copy = OmegaConf.structured(cfg)
    choose_parts_by_name(copy, f"the model config to save in {out_dir}")  # what is written names parts by name
    cfg = OmegaConf.to_object(copy)
    for label, source in frozen_sources(cfg, base_dir).items():
        if label not in cfg.frozen:
            cfg.frozen[label] = fingerprint(source)
        if base_dir != out_dir:
            if label == "lm":
                cfg.lm.path = str(source)
            else:
                cfg.vit.weights = str(source)
    tensors = whole_on_cpu(stored_tensors(model, cfg) if tensors is None else tensors)
    described = stored_tensors(build_captioner(cfg, base_dir, meta=True), cfg)  # what a load will expect
    check_tensors(
        {name: t.shape for name, t in described.items()},
        tensors,
        f"the tensors to save in {out_dir} (against its model.yaml: is the adapter recorded in the config?)",
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    temporary = out_dir / (WEIGHTS + ".partial")
    write_safetensors(tensors, temporary)
    cfg.stored = fingerprint(temporary)[temporary.name]
    config_text = OmegaConf.to_yaml(OmegaConf.structured(cfg))
    temporary.replace(out_dir / WEIGHTS)  # the pair is checked on load: a crash between these two lines is noticed
    (out_dir / (MODEL_CONFIG + ".partial")).write_text(config_text, encoding="utf-8")
    (out_dir / (MODEL_CONFIG + ".partial")).replace(out_dir / MODEL_CONFIG)
    return out_dir


__all__ = [
    "FORMAT",
    "FrozenSourceChanged",
    "ModelConfig",
    "ModelDirError",
    "build_captioner",
    "load_model_dir",
    "read_model_config",
    "save_model_dir",
    "stored_tensors",
]
