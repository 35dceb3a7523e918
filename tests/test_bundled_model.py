"""The bundled tiny image model (the demo's starting point) loads and captions still frames it never saw; its builder
is deterministic."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from simvlg_video.adapt import BUNDLED_IMAGE_MODEL
from simvlg_video.data.transforms import FrameTransform
from simvlg_video.data_tools.build_tiny_image_model import build, render_image_set
from simvlg_video.eval.shape_accuracy import parse_motion, parse_object
from simvlg_video.model.model_dir import load_model_dir


@torch.no_grad()
def test_bundled_image_model_names_shape_and_colour_of_new_frames():
    """200 held-out stills (the build rendered its own with seed 0): at least 95% of shapes, every colour."""
    model, cfg = load_model_dir(BUNDLED_IMAGE_MODEL)
    model.eval()
    images, labels = render_image_set(200, 96, seed=1234)
    frames = FrameTransform(size=cfg.image_size)(images.unsqueeze(1))
    captions = [caption for batch in frames.split(50) for caption in
                model.generate(batch, num_beams=3, min_new_tokens=1, max_new_tokens=8)]
    parsed = [parse_object(caption) for caption in captions]
    shape_accuracy = sum(p[0] == label[0] for p, label in zip(parsed, labels)) / len(labels)
    colour_accuracy = sum(p[1] == label[1] for p, label in zip(parsed, labels)) / len(labels)
    assert colour_accuracy == 1.0 and shape_accuracy >= 0.95, (shape_accuracy, colour_accuracy, captions[:6])
    assert not any(parse_motion(caption) for caption in captions), "an image model has no motion words to say"


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_builder_is_deterministic(tmp_path: Path):
    first = build(tmp_path / "a", steps=3, lm_steps=3, num_images=64, seed=0, show_progress=False)
    second = build(tmp_path / "b", steps=3, lm_steps=3, num_images=64, seed=0, show_progress=False)
    assert tree_digest(first) == tree_digest(second)
    assert {"model.yaml", "weights.safetensors", "lm/model.safetensors"} <= set(tree_digest(first))
