"""Our model directory: exact round trips, every non-frozen tensor kept, frozen files fingerprinted, strict loading."""

from __future__ import annotations

import shutil
from dataclasses import asdict

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from simvlg_video.adapters.placements import Reference
from simvlg_video.formats.fingerprint import FrozenSourceChanged, fingerprint
from simvlg_video.formats.model_dir import (
    MODEL_CONFIG,
    WEIGHTS,
    build_from_pointers,
    load_model_dir,
    read_model_config,
    save_model_dir,
)
from simvlg_video.formats.tensor_io import StateDictMismatch
from simvlg_video.model.config import ModelDirError
from simvlg_video.model.vit import build_vit, fill_unsaved_buffers


def rewrite_weights(model_dir, tensors) -> None:
    """Replace the weights file and record its fingerprint, as a consistent (but wrong) directory would have it."""
    save_file(tensors, model_dir / WEIGHTS)
    config = OmegaConf.load(model_dir / MODEL_CONFIG)
    config.stored = fingerprint(model_dir / WEIGHTS)[WEIGHTS]
    OmegaConf.save(config, model_dir / MODEL_CONFIG)


def test_export_import_round_trip_is_bit_exact(tiny_model_dir, tmp_path):
    model, cfg = load_model_dir(tiny_model_dir)
    Reference(qk_dim=32, num_heads=4).apply(model)
    with torch.no_grad():
        for block in model.vit.blocks:
            block.temporal_merge.alpha.fill_(0.25)
            block.temporal_merge.query.weight.normal_()
    cfg.adapter = asdict(Reference(qk_dim=32, num_heads=4))
    save_model_dir(model, cfg, tmp_path / "video", base_dir=tiny_model_dir)

    loaded, loaded_cfg = load_model_dir(tmp_path / "video")
    expected, actual = model.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    assert loaded_cfg.adapter == cfg.adapter
    assert loaded_cfg.lm.path == str(tiny_model_dir / "lm")  # the pointer now leads back to the image model's LM
    # as readable as any new file (safetensors alone writes 0600: a model others on a cluster could not read)
    assert (tmp_path / "video" / WEIGHTS).stat().st_mode == (tmp_path / "video" / MODEL_CONFIG).stat().st_mode


def test_every_tensor_not_behind_a_frozen_pointer_is_stored(tiny_model_dir, tmp_path):
    """Whatever trained or not: ViT (stored here: the tiny model has no ViT file), connector, projections, adapters."""
    model, cfg = load_model_dir(tiny_model_dir)
    Reference(qk_dim=32, num_heads=4, blocks=[1]).apply(model)
    cfg.adapter = asdict(Reference(qk_dim=32, num_heads=4, blocks=[1]))
    save_model_dir(model, cfg, tmp_path / "video", base_dir=tiny_model_dir)
    stored = load_file(tmp_path / "video" / WEIGHTS)
    expected = {name for name in model.state_dict() if not name.startswith("lm.")}
    assert set(stored) == expected
    assert "vit.blocks.1.temporal_merge.alpha" in stored and "connector.encoder.layer.0.output.dense.weight" in stored


def test_a_vit_behind_a_pointer_is_not_copied_but_its_adapters_are(tiny_model_dir, tmp_path):
    model, cfg = load_model_dir(tiny_model_dir)
    save_file({k: v.contiguous() for k, v in model.vit.state_dict().items()}, tmp_path / "vit.safetensors")
    cfg.vit.weights = str(tmp_path / "vit.safetensors")
    cfg.frozen = {}
    Reference(qk_dim=32, num_heads=4, blocks=[0]).apply(model)
    cfg.adapter = asdict(Reference(qk_dim=32, num_heads=4, blocks=[0]))
    save_model_dir(model, cfg, tmp_path / "video", base_dir=tiny_model_dir)
    stored = load_file(tmp_path / "video" / WEIGHTS)
    assert {name for name in stored if name.startswith("vit.")} == {
        f"vit.blocks.0.temporal_merge.{name}"
        for name in ("query.weight", "query.bias", "key.weight", "key.bias", "alpha")
    }
    assert set(read_model_config(tmp_path / "video" / MODEL_CONFIG).frozen) == {"vit", "lm"}
    loaded, _ = load_model_dir(tmp_path / "video")
    assert torch.equal(loaded.vit.blocks[3].mlp.fc1.weight, model.vit.blocks[3].mlp.fc1.weight)


def test_a_vit_from_its_file_has_the_files_tensors_and_its_computed_buffers(tiny_model_dir, tmp_path):
    """The ViT behind a pointer is built without a random initialisation: every tensor, buffers included, and its
    output equal those of the ViT that wrote the file."""
    model, cfg = load_model_dir(tiny_model_dir)
    save_file({k: v.contiguous() for k, v in model.vit.state_dict().items()}, tmp_path / "vit.safetensors")
    cfg.vit.weights, cfg.frozen = str(tmp_path / "vit.safetensors"), {}
    save_model_dir(model, cfg, tmp_path / "pointer", base_dir=tiny_model_dir)
    loaded, _ = load_model_dir(tmp_path / "pointer")
    expected = dict(model.vit.named_buffers()) | dict(model.vit.named_parameters())
    actual = dict(loaded.vit.named_buffers()) | dict(loaded.vit.named_parameters())
    assert expected.keys() == actual.keys() and any(name.endswith("attn.k_bias") for name in actual)
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    frames = torch.randn(2, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.vit.forward_features(frames), model.vit.forward_features(frames))


def test_buffers_no_file_holds_are_computed_or_refused():
    vit = build_vit("tiny", img_size=32, embed_dim=32, depth=2)
    with torch.no_grad():
        vit.blocks[1].attn.k_bias.fill_(float("nan"))
    fill_unsaved_buffers(vit)
    assert torch.equal(vit.blocks[1].attn.k_bias, torch.zeros_like(vit.blocks[1].attn.k_bias))
    vit.blocks[0].register_buffer("scratch", torch.ones(2), persistent=False)
    with pytest.raises(RuntimeError, match=r"blocks\.0\.scratch"):
        fill_unsaved_buffers(vit)


def test_a_model_whose_config_does_not_describe_it_is_not_saved(tiny_model_dir, tmp_path):
    model, cfg = load_model_dir(tiny_model_dir)
    Reference(qk_dim=32, num_heads=4).apply(model)  # but cfg.adapter still says: the image model
    with pytest.raises(StateDictMismatch, match="is the adapter recorded"):
        save_model_dir(model, cfg, tmp_path / "video", base_dir=tiny_model_dir)
    assert not (tmp_path / "video").exists()


def test_missing_tensor_is_named(model_copy):
    tensors = load_file(model_copy / WEIGHTS)
    del tensors["VL_proj.bias"]
    rewrite_weights(model_copy, tensors)
    with pytest.raises(StateDictMismatch, match=r"missing: VL_proj\.bias"):
        load_model_dir(model_copy)


def test_renamed_and_misshaped_tensors_are_named(model_copy):
    tensors = load_file(model_copy / WEIGHTS)
    tensors["VL_projection.weight"] = tensors.pop("VL_proj.weight")
    tensors["opt_proj.bias"] = torch.zeros(7)
    rewrite_weights(model_copy, tensors)
    with pytest.raises(StateDictMismatch) as error:
        load_model_dir(model_copy)
    message = str(error.value)
    assert "missing: VL_proj.weight" in message
    assert "unexpected: VL_projection.weight" in message
    assert "opt_proj.bias (expected (128,), found (7,))" in message


def test_weights_that_do_not_belong_to_the_config_are_refused(model_copy):
    tensors = load_file(model_copy / WEIGHTS)
    tensors["VL_proj.bias"] += 1
    save_file(tensors, model_copy / WEIGHTS)  # as if a save was interrupted between its two files
    with pytest.raises(ModelDirError, match=r"is not the file .*model.yaml was written with"):
        load_model_dir(model_copy)


def test_a_changed_frozen_file_is_an_error_naming_it(model_copy):
    weights = model_copy / "lm" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte, same size
    weights.write_bytes(bytes(data))
    with pytest.raises(FrozenSourceChanged, match=r"model\.safetensors: content changed \(same size\)"):
        load_model_dir(model_copy)


def test_added_removed_and_resized_frozen_files_are_named(model_copy):
    (model_copy / "lm" / "extra_weights.bin").write_bytes(b"0" * 10)
    (model_copy / "lm" / "generation_config.json").unlink()
    with (model_copy / "lm" / "config.json").open("a") as handle:
        handle.write("\n")
    with pytest.raises(FrozenSourceChanged) as error:
        load_model_dir(model_copy)
    message = str(error.value)
    assert "generation_config.json: missing" in message and "extra_weights.bin: new file" in message
    assert "config.json: size" in message


def test_the_fingerprint_samples_a_large_file_and_sees_a_changed_block(tmp_path):
    big = tmp_path / "big.bin"
    with big.open("wb") as handle:
        handle.truncate(5 * 2**30)  # 5 GiB, sparse: only the sampled blocks are read
    before = fingerprint(big)["big.bin"]
    with big.open("r+b") as handle:
        handle.seek(2**20)  # the first sampled block after the head
        handle.write(b"\x01")
    after = fingerprint(big)["big.bin"]
    assert before["size"] == after["size"] == 5 * 2**30
    assert before["sha256_sampled"] != after["sha256_sampled"]


@pytest.mark.parametrize("make", [lambda d: None, lambda d: (d / "weights.safetensors").write_bytes(b"x")])
def test_a_folder_without_model_yaml_is_not_a_model_directory(tmp_path, make):
    make(tmp_path)
    with pytest.raises(ModelDirError, match=r"is not a model directory: it has no model.yaml"):
        load_model_dir(tmp_path)


def test_a_directory_of_the_first_format_is_refused_with_the_reason(model_copy):
    config = OmegaConf.load(model_copy / MODEL_CONFIG)
    del config["format"]
    config.trainable = ["ln_vision"]
    OmegaConf.save(config, model_copy / MODEL_CONFIG)
    with pytest.raises(ModelDirError, match="format 1; this version reads format 2"):
        load_model_dir(model_copy)


def test_an_unknown_key_in_model_yaml_is_named(model_copy):
    config = OmegaConf.load(model_copy / MODEL_CONFIG)
    config.connector.num_layer = 3
    OmegaConf.save(config, model_copy / MODEL_CONFIG)
    with pytest.raises(ModelDirError, match="num_layer"):
        load_model_dir(model_copy)


def test_frozen_parts_load_straight_into_the_compute_dtype(tiny_model_dir):
    model, _ = load_model_dir(tiny_model_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in model.vit.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.lm.parameters()} == {torch.bfloat16}
    for part in (model.connector, model.VL_proj, model.ln_vision, model.opt_proj):
        assert {p.dtype for p in part.parameters()} == {torch.float32}
    reference, _ = load_model_dir(tiny_model_dir)
    assert torch.equal(model.vit.blocks[0].attn.qkv.weight, reference.vit.blocks[0].attn.qkv.weight.bfloat16())


def test_a_meta_build_reads_no_weights(tiny_model_dir, tmp_path):
    """Names and shapes only: the LLM folder's weights may even be missing."""
    lm = shutil.copytree(tiny_model_dir / "lm", tmp_path / "lm")
    (lm / "model.safetensors").unlink()
    cfg = read_model_config(tiny_model_dir / MODEL_CONFIG)
    cfg.lm.path = str(lm)
    model = build_from_pointers(cfg, tiny_model_dir, meta=True)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    real = build_from_pointers(read_model_config(tiny_model_dir / MODEL_CONFIG), tiny_model_dir)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in real.state_dict().items()}
