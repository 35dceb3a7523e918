"""Every config file under simvlg_video/configs is composed with adapt.yaml and what it configures is instantiated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from simvlg_video.adapters.patch import adapter_parameters
from simvlg_video.data.manifest import read_manifest
from simvlg_video.model.connector import build_tome_connector
from simvlg_video.model.model_dir import load_model_dir
from simvlg_video.model.reference_ckpt import load_model_config
from simvlg_video.model.vit import build_vit

CONFIGS = Path(__file__).resolve().parents[1] / "simvlg_video" / "configs"
GROUPS = ("data", "sampler", "adapter", "experiment")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def compose_adapt(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("adapt", overrides=["run_dir=unused", "++data.root=/datasets/x", *overrides])
    OmegaConf.resolve(cfg)  # every interpolation resolves
    return cfg


def test_every_config_file_belongs_to_a_known_group() -> None:
    found = {p.relative_to(CONFIGS).parts[0] for p in CONFIGS.rglob("*.yaml") if p.parent != CONFIGS}
    assert found == {*GROUPS, "model"}, "a new config group needs a case in this file"


@pytest.mark.parametrize("name", options("sampler"))
def test_sampler_configs_instantiate_to_samplers_of_the_requested_length(name: str) -> None:
    cfg = compose_adapt(f"sampler={name}")
    keyframes = list(range(0, 300, 25))
    for phase, rng in (("train", np.random.default_rng(0)), ("eval", None)):
        sampler = instantiate(cfg.sampler[phase])
        indices = sampler(300, cfg.data.num_frames, rng, fps=25.0, keyframes=keyframes)
        assert len(indices) == cfg.data.num_frames and all(0 <= i < 300 for i in indices)
        assert indices == sorted(indices)


@pytest.mark.parametrize("name", options("adapter"))
def test_adapter_configs_patch_a_model_that_keeps_working(name: str, model_copy: Path) -> None:
    cfg = compose_adapt(f"adapter={name}")
    model, _ = load_model_dir(model_copy)
    instantiate(cfg.adapter)(model)
    if name == "none":
        assert not adapter_parameters(model)
    else:
        assert adapter_parameters(model)
    frames = torch.randn(2, 3, 3, model.vit.patch_embed.img_size[0], model.vit.patch_embed.img_size[1])
    assert torch.isfinite(model.encode(frames)).all()


@pytest.mark.parametrize("name", options("data"))
def test_data_configs_name_a_manifest_or_a_generator(name: str, tmp_path: Path) -> None:
    cfg = compose_adapt(f"data={name}")
    assert cfg.data.num_frames > 0 and cfg.data.max_skip_fraction <= 1
    if cfg.data.synthetic is None:
        assert cfg.data.manifest == "/datasets/x/manifest.checked.jsonl"
        return
    synthetic = OmegaConf.merge(cfg.data.synthetic, {"num_clips": 14, "duration": 0.5})
    manifest = instantiate(synthetic, out_dir=tmp_path, show_progress=False)
    assert len(read_manifest(manifest)) == 14


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_configs_override_the_recipe(name: str) -> None:
    default = compose_adapt()
    if name in options("data"):  # a dataset's recipe comes with the dataset
        cfg = compose_adapt(f"data={name}")
        assert compose_adapt(f"data={name}", f"experiment={name}") == cfg
        assert compose_adapt(f"data={name}", "~experiment").train == default.train
    else:
        cfg = compose_adapt(f"experiment={name}")
    assert cfg.train.steps != default.train.steps  # the recipe, not adapt.yaml's demo settings, is in force


@pytest.mark.parametrize("name", options("model"))
def test_model_configs_describe_a_buildable_architecture(name: str) -> None:
    cfg = load_model_config(name)
    with torch.device("meta"):  # full size without allocating it
        vit = build_vit(cfg.vit.preset, **cfg.vit.overrides)
        connector = build_tome_connector(**cfg.connector)
    tokens = vit.patch_embed.num_patches + 1
    assert vit.patch_embed.img_size == (cfg.image_size, cfg.image_size)
    assert connector.config.hidden_size == cfg.connector.hidden_size
    assert tokens - cfg.connector.r * cfg.connector.num_layers >= 1
