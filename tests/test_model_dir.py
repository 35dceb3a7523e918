"""Our model directory: exact round trips, and refusals that name the offending tensors."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from simvlg_video.adapters.placements import reference
from simvlg_video.model.model_dir import TRAINABLE_TENSORS, load_model_dir, save_model_dir
from simvlg_video.model.state import StateDictMismatch


def test_export_import_round_trip_is_bit_exact(tiny_model_dir, tmp_path):
    model, cfg = load_model_dir(tiny_model_dir)
    reference(model, qk_dim=32, num_heads=4)
    with torch.no_grad():
        for block in model.vit.blocks:
            block.temporal_merge.alpha.fill_(0.25)
            block.temporal_merge.query.weight.normal_()
    cfg.adapter = OmegaConf.create(
        {"_target_": "simvlg_video.adapters.placements.reference", "_partial_": True, "qk_dim": 32, "num_heads": 4}
    )
    cfg.trainable = ["adapters", "ln_vision", "VL_proj", "connector", "opt_proj"]
    save_model_dir(model, cfg, tmp_path / "video", base_dir=tiny_model_dir)

    loaded, loaded_cfg = load_model_dir(tmp_path / "video")
    expected, actual = model.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    assert OmegaConf.to_container(loaded_cfg.adapter) == OmegaConf.to_container(cfg.adapter)


def test_missing_tensor_is_named(model_copy):
    tensors = load_file(model_copy / TRAINABLE_TENSORS)
    del tensors["VL_proj.bias"]
    save_file(tensors, model_copy / TRAINABLE_TENSORS)
    with pytest.raises(StateDictMismatch, match=r"missing: VL_proj\.bias"):
        load_model_dir(model_copy)


def test_renamed_and_misshaped_tensors_are_named(model_copy):
    tensors = load_file(model_copy / TRAINABLE_TENSORS)
    tensors["VL_projection.weight"] = tensors.pop("VL_proj.weight")
    tensors["opt_proj.bias"] = torch.zeros(7)
    save_file(tensors, model_copy / TRAINABLE_TENSORS)
    with pytest.raises(StateDictMismatch) as error:
        load_model_dir(model_copy)
    message = str(error.value)
    assert "missing: VL_proj.weight" in message
    assert "unexpected: VL_projection.weight" in message
    assert "opt_proj.bias (expected (128,), found (7,))" in message


def test_not_a_model_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.yaml not found"):
        load_model_dir(tmp_path)
