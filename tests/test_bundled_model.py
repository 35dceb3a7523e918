"""The bundled tiny image model (the demo's starting point) loads and captions still frames it never saw; its builder
is deterministic."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from simvlg_video.adapt import BUNDLED_IMAGE_MODEL
from simvlg_video.data.images import read_image
from simvlg_video.data.manifest import read_manifest
from simvlg_video.data.transforms import FrameTransform
from simvlg_video.data_tools.build_tiny_image_model import build
from simvlg_video.data_tools.make_events import make_event_stills_dataset
from simvlg_video.data_tools.make_stills import make_stills_dataset
from simvlg_video.eval.shape_accuracy import parse_motion, parse_object
from simvlg_video.formats.model_dir import load_model_dir


@torch.no_grad()
def test_bundled_image_model_names_shape_and_colour_of_new_frames(tmp_path):
    """200 stills of another seed than the build's (0): at least 95% of shapes, at least 99% of colours."""
    model, cfg = load_model_dir(BUNDLED_IMAGE_MODEL)
    model.eval()
    records = read_manifest(make_stills_dataset(tmp_path, num_images=200, seed=1234, show_progress=False))
    images = torch.stack([torch.from_numpy(read_image(record.video_path)) for record in records])
    labels = [(record.attributes["shape"], record.attributes["colour"]) for record in records]
    frames = FrameTransform(size=cfg.image_size)(images.unsqueeze(1))
    captions = [
        caption
        for batch in frames.split(50)
        for caption in model.generate(batch, num_beams=3, min_new_tokens=1, max_new_tokens=8)
    ]
    parsed = [parse_object(caption) for caption in captions]
    shape_accuracy = sum(p[0] == label[0] for p, label in zip(parsed, labels)) / len(labels)
    colour_accuracy = sum(p[1] == label[1] for p, label in zip(parsed, labels)) / len(labels)
    assert colour_accuracy >= 0.99 and shape_accuracy >= 0.95, (shape_accuracy, colour_accuracy, captions[:6])
    assert not any(parse_motion(caption) for caption in captions), "an image model has no motion words to say"


@torch.no_grad()
def test_bundled_image_model_names_the_event_sets_objects_as_stills(tmp_path):
    """The event benchmark measures time only if its shapes are seen: each shape of 40 event clips of another seed
    than the set's, alone at the clip's first and last frame, named (shape and colour) at least 95% of the time."""
    model, cfg = load_model_dir(BUNDLED_IMAGE_MODEL)
    model.eval()
    manifest = make_event_stills_dataset(tmp_path, num_clips=40, seed=1234, splits=(1.0, 0.0, 0.0), show_progress=False)
    records = read_manifest(manifest)
    images = torch.stack([torch.from_numpy(read_image(record.video_path)) for record in records])
    frames = FrameTransform(size=cfg.image_size)(images.unsqueeze(1))
    captions = [
        c for batch in frames.split(50) for c in model.generate(batch, num_beams=3, min_new_tokens=1, max_new_tokens=8)
    ]
    named = [parse_object(c) == (r.attributes["shape"], r.attributes["colour"]) for c, r in zip(captions, records)]
    assert len(records) >= 80 and sum(named) / len(named) >= 0.95, (sum(named), len(named))


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_builder_is_deterministic(tmp_path: Path):
    """Two builds (LM, then the image stage through `pretrain`, with loader workers) give the same files."""
    small = [
        "train.warmup_steps=1",
        "train.batch_size=8",
        "eval.batch_size=16",
        "eval.num_beams=1",
        "eval.max_new_tokens=4",
        "data.synthetic.size=64",
    ]
    first = build(tmp_path / "a", steps=3, lm_steps=3, num_images=64, seed=0, show_progress=False, overrides=small)
    second = build(tmp_path / "b", steps=3, lm_steps=3, num_images=64, seed=0, show_progress=False, overrides=small)
    assert tree_digest(first) == tree_digest(second)
    assert {"model.yaml", "weights.safetensors", "lm/model.safetensors"} <= set(tree_digest(first))


@torch.no_grad()
def test_bundled_lm_knows_the_event_words_and_their_order():
    """`adapt data=events` starts from the bundled model: its LM has the event words as words of its own, and reads
    event captions as sentences (their own word order far likelier than the same words shuffled)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from simvlg_video.data_tools.event_text import caption_corpus

    tokenizer = AutoTokenizer.from_pretrained(BUNDLED_IMAGE_MODEL / "lm")
    lm = AutoModelForCausalLM.from_pretrained(BUNDLED_IMAGE_MODEL / "lm").eval()
    for word in ("then", "stops", "slowly", "quickly", "turns"):
        ids = tokenizer(word, add_special_tokens=False).input_ids
        assert len(ids) == 1 and ids[0] != tokenizer.unk_token_id, (word, ids)
    rng = np.random.default_rng(0)
    captions = [c for c in caption_corpus() if " then " in c or "slowly" in c or "quickly" in c]
    captions = [captions[i] for i in rng.choice(len(captions), size=40, replace=False)]
    shuffled = [" ".join(rng.permutation(c.split())) for c in captions]

    def loss(texts: list[str]) -> float:
        return float(
            np.mean(
                [
                    lm(**tokenizer(t, return_tensors="pt"), labels=tokenizer(t, return_tensors="pt").input_ids).loss
                    for t in texts
                ]
            )
        )

    assert loss(captions) < 0.5 * loss(shuffled), (loss(captions), loss(shuffled))
