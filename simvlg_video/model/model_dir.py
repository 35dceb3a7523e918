"""Our own model directory: `model.yaml` (how to build it, where its frozen parts live) + trainable tensors.

```
MODEL_DIR/model.yaml               vit / connector / lm / adapter config, `trainable` module list
MODEL_DIR/trainable.safetensors    the tensors of the `trainable` modules (names as in the model's state dict)
```
Frozen parts are pointers (`vit.weights`, `lm.path`), relative to the directory or absolute, so a video model
exported from an image model does not copy the ViT or the LLM.
"""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file
from torch import nn

from simvlg_video.adapters.patch import adapter_parameters
from simvlg_video.model.captioner import VideoCaptioner
from simvlg_video.model.connector import build_tome_connector
from simvlg_video.model.lm import CaptionText, load_lm
from simvlg_video.model.state import check_tensors, read_tensors
from simvlg_video.model.vit import build_vit
from simvlg_video.model.vit_weights import load_vit_weights

MODEL_CONFIG = "model.yaml"
TRAINABLE_TENSORS = "trainable.safetensors"
ADAPTERS = "adapters"


def _resolve(base_dir: Path, path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else (base_dir / path).resolve()


def build_captioner(cfg: DictConfig, base_dir: Path) -> VideoCaptioner:
    """Build the model a config describes, loading its frozen parts; trainable tensors are left as initialised."""
    vit = build_vit(cfg.vit.preset, **cfg.vit.get("overrides", {}))
    if cfg.vit.get("weights"):
        load_vit_weights(vit, _resolve(base_dir, cfg.vit.weights))
    connector = build_tome_connector(**cfg.connector)
    lm, tokenizer = load_lm(_resolve(base_dir, cfg.lm.path))
    text = CaptionText(tokenizer, cfg.lm.prompt, cfg.lm.caption_end, cfg.lm.max_text_tokens)
    model = VideoCaptioner(vit, connector, lm, text, connector_width=cfg.connector.hidden_size)
    if cfg.get("adapter") is not None:
        instantiate(cfg.adapter)(model)
    return model


def trainable_tensors(model: nn.Module, modules: list[str]) -> dict[str, torch.Tensor]:
    """The live tensors a model directory stores: every tensor of the named submodules (`adapters` = all adapters)."""
    tensors: dict[str, torch.Tensor] = {}
    for module_name in modules:
        if module_name == ADAPTERS:
            tensors.update(adapter_parameters(model))
            continue
        if not hasattr(model, module_name):
            raise KeyError(f"model has no submodule {module_name!r} (has: {[n for n, _ in model.named_children()]})")
        for name, tensor in getattr(model, module_name).state_dict(keep_vars=True).items():
            tensors[f"{module_name}.{name}"] = tensor
    return tensors


def load_model_dir(path: str | Path) -> tuple[VideoCaptioner, DictConfig]:
    """Build and load a model directory, refusing tensors that are missing, unexpected or mis-shaped."""
    path = Path(path)
    config_file = path / MODEL_CONFIG
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is not a model directory: {MODEL_CONFIG} not found")
    cfg = OmegaConf.load(config_file)
    model = build_captioner(cfg, path)
    stored = read_tensors(path / TRAINABLE_TENSORS)
    targets = trainable_tensors(model, list(cfg.trainable))
    check_tensors({k: v.shape for k, v in targets.items()}, stored, str(path / TRAINABLE_TENSORS))
    with torch.no_grad():
        for name, tensor in stored.items():
            targets[name].copy_(tensor)
    return model, cfg


def save_model_dir(model: nn.Module, cfg: DictConfig, out_dir: str | Path, base_dir: Path | None = None,
                   tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `cfg` and the trainable tensors (`tensors` when given, e.g. gathered from FSDP shards, else the
    model's); frozen pointers relative to `base_dir` become absolute."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    if base_dir is not None:
        if cfg.vit.get("weights"):
            cfg.vit.weights = str(_resolve(base_dir, cfg.vit.weights))
        cfg.lm.path = str(_resolve(base_dir, cfg.lm.path))
    if tensors is None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in trainable_tensors(model, list(cfg.trainable)).items()}
    tmp_tensors = out_dir / (TRAINABLE_TENSORS + ".tmp")
    save_file(tensors, tmp_tensors)
    tmp_tensors.replace(out_dir / TRAINABLE_TENSORS)
    tmp_config = out_dir / (MODEL_CONFIG + ".tmp")
    OmegaConf.save(cfg, tmp_config)
    tmp_config.replace(out_dir / MODEL_CONFIG)
    return out_dir
