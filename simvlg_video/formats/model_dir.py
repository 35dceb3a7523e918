"""Our model directory: a whole captioner, with nothing lost and nothing silently changed.

```
MODEL_DIR/model.yaml               what to build (read into `ModelConfig`), where its frozen parts live, their
                                   fingerprints, and how it captions by default
MODEL_DIR/weights.safetensors      every tensor that is not read from a frozen file, whatever trained last
```
Frozen parts are pointers (`vit.weights`, a weights file; `lm.path`, a Hugging Face folder; both may be one Hugging
Face BLIP-2 folder), relative to the directory or absolute, so a video model exported from an image model does not
copy the ViT or the LLM. Each pointer carries a fingerprint, checked on every load. This module reads what they
point at and hands it to the factory (`simvlg_video.model.build`). Loading is strict: a missing, unexpected or
mis-shaped tensor is an error naming it; no tensor may be absent.

A model directory is data: the placement, the connector and the frame sampler it names are chosen by name from the
toolkit's registries (`simvlg_video.model.config`); an import path or any other instruction to build code is
refused, naming the file and the key, before anything is built.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn
from transformers import PreTrainedModel

from simvlg_video.formats.fingerprint import FrozenSourceChanged, check_fingerprint, fingerprint
from simvlg_video.formats.hf_blip2 import is_blip2_folder, language_model
from simvlg_video.formats.tensor_io import check_tensors, read_safetensors, write_safetensors
from simvlg_video.formats.vit_weights import load_vit_weights
from simvlg_video.model.adapter_protocol import adapter_modules
from simvlg_video.model.build import FrozenParts, build_captioner
from simvlg_video.model.captioner import VideoCaptioner
from simvlg_video.model.config import (
    ModelConfig,
    ModelDirError,
    check_format,
    choose_parts_by_name,
    model_config_from,
    read_settings,
)
from simvlg_video.model.lm import checked_lm_folder, lm_skeleton, load_lm, load_tokenizer
from simvlg_video.model.parallel import whole_on_cpu

MODEL_CONFIG = "model.yaml"
WEIGHTS = "weights.safetensors"


def read_model_config(path: str | Path) -> ModelConfig:
    """MODEL_DIR/model.yaml (or a model config .yaml) checked against `ModelConfig`: unknown keys, wrong types and
    missing values are errors naming the file and the key; a model.yaml must be in this version's format."""
    path = Path(path)
    raw = read_settings(path)
    check_format(raw, str(path), required=path.name == MODEL_CONFIG)
    return model_config_from(raw, str(path))


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


def read_frozen_lm(path: Path, dtype: torch.dtype) -> PreTrainedModel:
    """The LLM a pointer names, read straight into `dtype`: a causal LM's folder, or a BLIP-2 folder's
    `language_model.*`."""
    if is_blip2_folder(checked_lm_folder(path)):
        return language_model(path, dtype)
    return load_lm(path, dtype)


def frozen_lm_skeleton(path: Path) -> PreTrainedModel:
    """The LLM a pointer names, names and shapes only (meta device): no weights are read."""
    if is_blip2_folder(checked_lm_folder(path)):
        return language_model(path, meta=True)
    return lm_skeleton(path)


def build_from_pointers(
    cfg: ModelConfig,
    base_dir: Path,
    dtype: torch.dtype = torch.float32,
    meta: bool = False,
    frozen_on_meta: bool = False,
) -> VideoCaptioner:
    """The captioner `cfg` describes, its frozen parts read from where its pointers (relative to `base_dir`) say,
    straight into `dtype` (the ViT and the LLM never exist at a wider precision). `meta=True` builds names and
    shapes only, reading no weights; `frozen_on_meta=True` does so for the parts behind frozen files only (what a new
    model directory needs: its own tensors, initialised, and pointers to the rest)."""
    sources = frozen_sources(cfg, base_dir)
    read = not (meta or frozen_on_meta)
    fill_vit = None
    if read and "vit" in sources:

        def fill_vit(vit: nn.Module) -> None:
            load_vit_weights(vit, sources["vit"])

    lm = read_frozen_lm(sources["lm"], dtype) if read else frozen_lm_skeleton(sources["lm"])
    parts = FrozenParts(lm, load_tokenizer(sources["lm"]), fill_vit)
    return build_captioner(cfg, parts, dtype, meta=meta)


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
    model = build_from_pointers(cfg, path, dtype)
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
    described = stored_tensors(build_from_pointers(cfg, base_dir, meta=True), cfg)  # what a load will expect
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


__all__ = [  # with the errors a load raises, wherever they are defined
    "FrozenSourceChanged",
    "ModelDirError",
    "build_from_pointers",
    "load_model_dir",
    "read_model_config",
    "save_model_dir",
    "stored_tensors",
]
