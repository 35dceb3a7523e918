"""The LAVIS checkpoint import and adapt as commands: a loadable model directory, refusals as one line, a run that
starts from a reference checkpoint file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from adapt_runs import command_env, run_module
from omegaconf import OmegaConf
from reference_layout import lavis_tensors, write_reference_files, write_tiny_lm

from simvlg_video.adapters.patch import TemporalEvaBlock
from simvlg_video.formats.lavis_checkpoint import main
from simvlg_video.formats.model_dir import load_model_dir

REFERENCE_PLACEMENT = "reference"


@pytest.fixture(scope="module")
def lm_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_lm(tmp_path_factory.mktemp("lm") / "lm")


def rewrite_checkpoint(files, state: dict) -> None:
    torch.save({"model": state, "iters": 1}, files.ckpt)


def export_args(files, tmp_path: Path) -> list[str]:
    OmegaConf.save(OmegaConf.structured(files.model_cfg), tmp_path / "tiny.yaml")
    return [
        str(files.ckpt),
        "--vit-weights",
        str(files.vit_weights),
        "--lm-path",
        str(files.lm_path),
        "--model-config",
        str(tmp_path / "tiny.yaml"),
        "--out",
        str(tmp_path / "exported"),
    ]


def test_export_command_writes_a_loadable_model_directory(tmp_path, lm_path):
    files = write_reference_files(tmp_path / "ref", lm_path=lm_path)
    out = main(export_args(files, tmp_path))
    model, _ = load_model_dir(out)
    assert torch.equal(model.VL_proj.weight, files.state["VL_proj.weight"])


def test_export_command_runs_as_a_module_and_refuses_without_a_traceback(tmp_path, lm_path):
    files = write_reference_files(tmp_path / "ref", lm_path=lm_path)
    command = [sys.executable, "-m", "simvlg_video.formats.lavis_checkpoint", *export_args(files, tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=command_env(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"wrote {tmp_path / 'exported'}"
    model, _ = load_model_dir(tmp_path / "exported")
    assert torch.equal(model.connector.embeddings.LayerNorm.bias, files.state["VLconnector.embeddings.LayerNorm.bias"])

    rewrite_checkpoint(files, lavis_tensors(lm_width=80))
    command[command.index("--out") + 1] = str(tmp_path / "refused")
    refused = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=command_env(tmp_path))
    assert refused.returncode == 2  # bad input
    assert f"\nerror: checkpoint {files.ckpt} " in refused.stderr and "Traceback" not in refused.stderr
    assert "opt_proj.weight (expected (40, 24), found (80, 24))" in refused.stderr
    assert not (tmp_path / "refused").exists()


# --- the adapt command ---


# A small synthetic set, so that a run that wrongly gets as far as generating data still ends soon.
SMALL_DATA = [
    "data.synthetic.num_clips=21",
    "data.synthetic.height=48",
    "data.synthetic.width=48",
    "data.synthetic.duration=1.0",
]


def run_adapt(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_module("simvlg_video.adapt", *args, f"hydra.run.dir={cwd / 'run'}", cwd=cwd)


def test_adapt_with_a_pth_needs_the_frozen_parts_in_one_line(tmp_path, lm_path):
    """Checked before anything else happens: the error is the only output."""
    files = write_reference_files(tmp_path, lm_path=lm_path)
    result = run_adapt("--image-ckpt", str(files.ckpt), f"lm_path={lm_path}", *SMALL_DATA, cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"error: --image-ckpt {files.ckpt} is a SimVLG reference checkpoint file and also needs vit_weights=PATH "
        "(the frozen ViT's weights, e.g. BLIP-2's eva_vit_g.pth)"
    ]


def test_adapt_refuses_a_video_checkpoint_before_training(tmp_path, lm_path):
    """adapt starts from an image model: a video checkpoint (temporal modules already in the ViT) is refused with
    an error naming it, not a traceback when the adapters are added, nor a failure to save after training."""
    files = write_reference_files(tmp_path / "ref", temporal_blocks=[0, 1, 2], lm_path=lm_path)
    OmegaConf.save(OmegaConf.structured(files.model_cfg), tmp_path / "tiny.yaml")
    result = run_adapt(
        "--image-ckpt",
        str(files.ckpt),
        f"vit_weights={files.vit_weights}",
        f"lm_path={lm_path}",
        f"model_config={tmp_path / 'tiny.yaml'}",
        "adapter=reference",
        "adapter.qk_dim=16",
        "adapter.num_heads=4",
        *SMALL_DATA,
        "train.steps=1",
        "train.batch_size=4",
        "data.num_workers=0",
        "train.warmup_steps=1",
        "eval.before=false",
        "eval.visualize=0",
        cwd=tmp_path,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --image-ckpt {files.ckpt}") and "video checkpoint" in last
    assert not list((tmp_path / "run").glob("checkpoints/0*")) and not (tmp_path / "run" / "model").exists()


@pytest.mark.slow
def test_adapt_runs_from_a_reference_checkpoint(tmp_path, lm_path):
    files = write_reference_files(tmp_path / "ref", lm_path=lm_path)
    OmegaConf.save(OmegaConf.structured(files.model_cfg), tmp_path / "tiny.yaml")
    result = run_adapt(
        "--image-ckpt",
        str(files.ckpt),
        f"vit_weights={files.vit_weights}",
        f"lm_path={lm_path}",
        f"model_config={tmp_path / 'tiny.yaml'}",
        "adapter=reference",
        "adapter.qk_dim=16",
        "adapter.num_heads=4",
        "data.synthetic.num_clips=21",
        "data.synthetic.height=48",
        "data.synthetic.width=48",
        "data.synthetic.duration=1.0",
        "train.steps=2",
        "train.batch_size=4",
        "data.num_workers=0",
        "train.warmup_steps=1",
        "eval.batch_size=8",
        "eval.num_beams=1",
        "eval.max_new_tokens=4",
        "eval.before=false",
        "eval.visualize=0",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    imported, imported_cfg = load_model_dir(tmp_path / "run" / "image_model")
    assert imported_cfg.adapter is None
    assert torch.equal(imported.opt_proj.weight, files.state["opt_proj.weight"])
    model, cfg = load_model_dir(tmp_path / "run" / "model")
    assert cfg.vit.weights == str(files.vit_weights.resolve()) and cfg.frozen == imported_cfg.frozen
    assert torch.equal(model.vit.blocks[0].attn.q_bias, files.vit_state["blocks.0.attn.q_bias"])
    assert all(type(b) is TemporalEvaBlock for b in model.vit.blocks)
    assert cfg.adapter["name"] == REFERENCE_PLACEMENT and cfg.adapter["qk_dim"] == 16
