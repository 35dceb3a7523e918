"""Shared fixtures: a tiny model directory (random vision weights, a briefly trained tiny LM) and a tiny shapes set."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory in our format, built like the bundled one but without its (slow) image stage."""
    from simvlg_video.data_tools import shapes
    from simvlg_video.data_tools.build_tiny_image_model import tiny_model_config
    from simvlg_video.data_tools.tiny_lm import train_tiny_lm
    from simvlg_video.formats.model_dir import build_from_pointers, save_model_dir

    out = tmp_path_factory.mktemp("tiny_model")
    torch.manual_seed(0)
    train_tiny_lm(shapes.caption_groups(), out / "lm", steps=3, batch_size=8, show_progress=False)
    cfg = tiny_model_config()
    save_model_dir(build_from_pointers(cfg, out), cfg, out)
    return out


@pytest.fixture(scope="session")
def shapes_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic motion set (real H.264 files) and its manifest."""
    from simvlg_video.data_tools.make_shapes import make_shapes_dataset

    out = tmp_path_factory.mktemp("shapes")
    return make_shapes_dataset(out, num_clips=21, seed=3, height=64, width=64, fps=8, duration=1.0, show_progress=False)


@pytest.fixture
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model directory that a test may modify."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


@pytest.fixture(scope="session")
def blip2_files(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random BLIP-2 OPT in both published layouts: a Hugging Face folder and LAVIS checkpoints
    (`tests/blip2_layout.py`)."""
    from blip2_layout import write_blip2_files

    return write_blip2_files(tmp_path_factory.mktemp("blip2"))


@pytest.fixture(scope="session")
def blip2_model_dirs(blip2_files, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny BLIP-2 imported from each layout: {"hf": ..., "lavis": ... (eva_vit.pth beside it),
    "lavis_with_vit": ... (the ViT inside the checkpoint)}."""
    from simvlg_video.formats.blip2_checkpoint import import_hf_blip2, import_lavis_blip2

    out = tmp_path_factory.mktemp("blip2_models")
    files = blip2_files
    return {
        "hf": import_hf_blip2(files.folder, out / "hf"),
        "lavis": import_lavis_blip2(
            files.ckpt, files.lm_path, files.model_cfg, out / "lavis", vit_weights=files.vit_weights
        ),
        "lavis_with_vit": import_lavis_blip2(
            files.ckpt_with_vit, files.lm_path, files.model_cfg, out / "lavis_with_vit"
        ),
    }
