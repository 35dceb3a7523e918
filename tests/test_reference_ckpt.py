"""Import of the reference checkpoints (LAVIS-style image/video checkpoint + BLIP-2 EVA weights + HF LLM folder)."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from adapt_runs import run_module
from reference_layout import (
    IGNORED_EXTRAS,
    QK_DIM,
    TEMPORAL_HEADS,
    VIT,
    eva_vit_tensors,
    lavis_tensors,
    write_reference_files,
    write_tiny_lm,
)
from safetensors.torch import save_file

from simvlg_video.adapters.patch import TemporalEvaBlock
from simvlg_video.model.model_dir import load_model_dir, save_model_dir
from simvlg_video.model.reference_ckpt import import_reference, main, read_reference_checkpoint
from simvlg_video.model.state import StateDictMismatch


@pytest.fixture(scope="module")
def lm_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_lm(tmp_path_factory.mktemp("lm") / "lm")


def load(files, **kwargs):
    return import_reference(files.ckpt, files.vit_weights, files.lm_path, files.model_cfg, **kwargs)


def our_name(reference_name: str) -> str:
    """The mapping REFERENCE.md implies, written independently of the code under test."""
    if reference_name.startswith("VLconnector."):
        return "connector." + reference_name[len("VLconnector."):]
    if reference_name.startswith("visual_encoder."):
        return "vit." + reference_name[len("visual_encoder."):]
    return reference_name


def rewrite_checkpoint(files, state: dict) -> None:
    torch.save({"model": state, "iters": 1}, files.ckpt)


# --- loading: every tensor lands where it belongs ---


def test_image_checkpoint_loads_every_tensor_where_it_belongs(tmp_path, lm_path, caplog):
    files = write_reference_files(tmp_path, lm_path=lm_path)
    with caplog.at_level(logging.INFO):
        model, cfg = load(files)
    ours = model.state_dict()
    for name, tensor in files.state.items():
        if name not in IGNORED_EXTRAS:
            assert torch.equal(ours[our_name(name)], tensor), name
    for name, tensor in files.vit_state.items():
        if not name.startswith(f"blocks.{VIT['depth']}."):
            assert torch.equal(ours[f"vit.{name}"], tensor), name
    assert all(torch.equal(block.attn.k_bias, torch.zeros(VIT["width"])) for block in model.vit.blocks)
    assert cfg.adapter is None and list(cfg.trainable) == ["ln_vision", "VL_proj", "connector", "opt_proj"]
    assert Path(cfg.vit.weights) == files.vit_weights.resolve() and Path(cfg.lm.path) == lm_path.resolve()
    ignored = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(ignored) == 1 and all(name in ignored[0] for name in IGNORED_EXTRAS)
    assert any(f"dropped blocks {VIT['depth']}" in r.getMessage() for r in caplog.records)


def test_prefixed_vit_weights_and_a_bare_state_dict_load(tmp_path, lm_path):
    files = write_reference_files(tmp_path, vit_prefix=True, bare_state_dict=True, extras=False, lm_path=lm_path)
    model, _ = load(files)
    expected = files.vit_state["visual_encoder.blocks.2.attn.v_bias"]
    assert torch.equal(model.vit.blocks[2].attn.v_bias, expected)
    assert torch.equal(model.opt_proj.weight, files.state["opt_proj.weight"])


# --- refusals that name the tensors ---


def test_a_renamed_tensor_is_named_both_ways(tmp_path, lm_path):
    files = write_reference_files(tmp_path, lm_path=lm_path)
    state = dict(files.state)
    old = "VLconnector.encoder.layer.1.attention.self.query.weight"
    state[old.replace("query", "qry")] = state.pop(old)
    rewrite_checkpoint(files, state)
    with pytest.raises(StateDictMismatch) as error:
        load(files)
    assert error.value.missing == [old]
    assert error.value.unexpected == [old.replace("query", "qry")]
    assert str(files.ckpt) in str(error.value)


def test_a_dropped_tensor_is_named(tmp_path, lm_path):
    files = write_reference_files(tmp_path, lm_path=lm_path)
    state = dict(files.state)
    del state["ln_vision.bias"]
    rewrite_checkpoint(files, state)
    with pytest.raises(StateDictMismatch, match=r"missing: ln_vision\.bias"):
        load(files)


def test_a_dropped_vit_tensor_is_named_with_the_vit_file(tmp_path, lm_path):
    files = write_reference_files(tmp_path, lm_path=lm_path)
    vit = eva_vit_tensors(VIT["depth"])
    del vit["blocks.1.attn.v_bias"]
    torch.save(vit, files.vit_weights)
    with pytest.raises(StateDictMismatch, match=r"missing: blocks\.1\.attn\.v_bias") as error:
        load(files)
    assert str(files.vit_weights) in str(error.value)


def test_a_checkpoint_for_a_wider_llm_names_tensors_and_both_shapes(tmp_path, lm_path):
    """Like an OPT-6.7B checkpoint (width 4096) with an OPT-2.7B LLM (2560), at tiny widths 80 vs 40."""
    files = write_reference_files(tmp_path, lm_path=lm_path, extras=False)
    rewrite_checkpoint(files, lavis_tensors(lm_width=80))
    with pytest.raises(StateDictMismatch) as error:
        load(files)
    message = str(error.value)
    assert "opt_proj.weight (expected (40, 24), found (80, 24))" in message
    assert "opt_proj.bias (expected (40,), found (80,))" in message
    assert "an LLM of width 40" in message and not error.value.missing and not error.value.unexpected


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: p.write_text("not a checkpoint"), "not a reference checkpoint: torch.load failed"),
        (lambda p: save_file({"a": torch.zeros(2)}, p), "it is a safetensors file"),
        (lambda p: torch.save({"epoch": 3, "iters": 10}, p), r"holds a dict with keys \['epoch', 'iters'\]"),
        (lambda p: torch.save({"model": {"a": torch.zeros(2), "b": 3}}, p), r"not tensors: \['b'\]"),
        (lambda p: torch.save([torch.zeros(2)], p), "holds a list"),
    ],
)
def test_files_that_are_not_reference_checkpoints_are_explained(tmp_path, write, message):
    path = tmp_path / "ckpt.pth"
    write(path)
    with pytest.raises(ValueError, match=message) as error:
        read_reference_checkpoint(path)
    assert "our own format" in str(error.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_reference_checkpoint(tmp_path / "nope.pth")


def test_pickled_objects_need_the_unsafe_opt_in(tmp_path, lm_path):
    files = write_reference_files(tmp_path, lm_path=lm_path)
    torch.save({"model": files.state, "config": OmegaConf.create({"run": {"lr": 1e-4}})}, files.ckpt)
    with pytest.raises(ValueError, match=r"omegaconf\.dictconfig\.DictConfig.*allow_pickle=True \(UNSAFE"):
        load(files)
    model, _ = load(files, allow_pickle=True)
    assert torch.equal(model.ln_vision.weight, files.state["ln_vision.weight"])


# --- video checkpoints ---


@pytest.mark.parametrize("alpha_shape", [(), (1,)])
def test_video_checkpoint_gets_adapters_in_exactly_its_blocks(tmp_path, lm_path, alpha_shape):
    files = write_reference_files(tmp_path, temporal_blocks=[1, 2], alpha_shape=alpha_shape, lm_path=lm_path)
    model, cfg = load(files, temporal_heads=TEMPORAL_HEADS)
    assert [type(b) is TemporalEvaBlock for b in model.vit.blocks] == [False, True, True]
    module = model.vit.blocks[2].temporal_merge
    assert (module.qk_dim, module.num_heads) == (QK_DIM, TEMPORAL_HEADS)
    assert module.alpha.shape == () and module.alpha.item() == files.state[
        "visual_encoder.blocks.2.temporal_merge.alpha"].item()
    assert torch.equal(module.key.weight, files.state["visual_encoder.blocks.2.temporal_merge.key.weight"])
    assert list(cfg.adapter.blocks) == [1, 2] and cfg.adapter.qk_dim == QK_DIM
    assert cfg.trainable[0] == "adapters"


def test_video_checkpoint_with_every_block_says_all(tmp_path, lm_path):
    files = write_reference_files(tmp_path, temporal_blocks=list(range(VIT["depth"])), lm_path=lm_path)
    model, cfg = load(files, temporal_heads=TEMPORAL_HEADS)
    assert cfg.adapter.blocks == "all"
    assert all(type(b) is TemporalEvaBlock for b in model.vit.blocks)


def test_video_checkpoint_with_a_partial_temporal_module_names_what_is_missing(tmp_path, lm_path):
    files = write_reference_files(tmp_path, temporal_blocks=[1, 2], lm_path=lm_path)
    state = dict(files.state)
    del state["visual_encoder.blocks.2.temporal_merge.query.bias"]
    rewrite_checkpoint(files, state)
    with pytest.raises(StateDictMismatch, match=r"missing: visual_encoder\.blocks\.2\.temporal_merge\.query\.bias"):
        load(files, temporal_heads=TEMPORAL_HEADS)


# --- our own format: import -> export -> import ---


@pytest.mark.parametrize("temporal_blocks", [[], [0, 2]])
def test_import_export_import_is_bit_exact(tmp_path, lm_path, temporal_blocks):
    files = write_reference_files(tmp_path / "ref", temporal_blocks=temporal_blocks, vit_prefix=True, lm_path=lm_path)
    model, cfg = load(files, temporal_heads=TEMPORAL_HEADS)
    save_model_dir(model, cfg, tmp_path / "exported")
    loaded, loaded_cfg = load_model_dir(tmp_path / "exported")
    expected, actual = model.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    assert loaded_cfg.vit.weights == str(files.vit_weights.resolve())


def test_export_command_writes_a_loadable_model_directory(tmp_path, lm_path):
    files = write_reference_files(tmp_path / "ref", lm_path=lm_path)
    OmegaConf.save(files.model_cfg, tmp_path / "tiny.yaml")
    out = main([str(files.ckpt), "--vit-weights", str(files.vit_weights), "--lm-path", str(lm_path),
                "--model-config", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "exported")])
    model, _ = load_model_dir(out)
    assert torch.equal(model.VL_proj.weight, files.state["VL_proj.weight"])


# --- the adapt command ---


def run_adapt(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_module("simvlg_video.adapt", *args, f"hydra.run.dir={cwd / 'run'}", cwd=cwd)


def test_adapt_with_a_pth_needs_the_frozen_parts_in_one_line(tmp_path, lm_path):
    files = write_reference_files(tmp_path, lm_path=lm_path)
    result = run_adapt("--image-ckpt", str(files.ckpt), f"lm_path={lm_path}", cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"error: --image-ckpt {files.ckpt} is a reference checkpoint file and also needs vit_weights=PATH "
        "(the frozen ViT's weights, e.g. BLIP-2's eva_vit_g.pth)"
    ]


@pytest.mark.slow
def test_adapt_runs_from_a_reference_checkpoint(tmp_path, lm_path):
    files = write_reference_files(tmp_path / "ref", lm_path=lm_path)
    OmegaConf.save(files.model_cfg, tmp_path / "tiny.yaml")
    result = run_adapt(
        "--image-ckpt", str(files.ckpt), f"vit_weights={files.vit_weights}", f"lm_path={lm_path}",
        f"model_config={tmp_path / 'tiny.yaml'}", "adapter.qk_dim=16", "adapter.num_heads=4",
        "data.synthetic.num_clips=21", "data.synthetic.height=48", "data.synthetic.width=48",
        "data.synthetic.duration=1.0", "train.steps=2", "train.batch_size=4", "train.num_workers=0",
        "train.warmup_steps=1", "eval.batch_size=8", "eval.num_beams=1", "eval.max_new_tokens=4", "eval.before=false",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    model, cfg = load_model_dir(tmp_path / "run" / "model")
    assert cfg.vit.weights == str(files.vit_weights.resolve())
    assert torch.equal(model.vit.blocks[0].attn.q_bias, files.vit_state["blocks.0.attn.q_bias"])
    assert all(type(b) is TemporalEvaBlock for b in model.vit.blocks)
