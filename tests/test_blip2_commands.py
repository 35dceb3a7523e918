"""BLIP-2 as the image model, as users run it: the import command, then `adapt --image-ckpt` from the Hugging Face
folder and from the LAVIS checkpoint, and `evaluate` and `caption` on the runs; refusals are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from adapt_runs import assert_caption_reproduces_predictions, run_module
from blip2_layout import PROMPT
from omegaconf import OmegaConf

from simvlg_video.adapters.token_pool import TemporalTokenPool
from simvlg_video.formats.model_dir import load_model_dir

# A small synthetic set at the tiny BLIP-2's 32 px, and a short run.
SMALL_RUN = [
    "data.synthetic.num_clips=21",
    "data.synthetic.height=48",
    "data.synthetic.width=48",
    "data.synthetic.duration=1.0",
    "train.steps=2",
    "train.batch_size=4",
    "data.num_workers=0",
    "train.warmup_steps=1",
    "eval.batch_size=8",
    "eval.num_beams=2",
    "eval.max_new_tokens=4",
]


def adapt(cwd: Path, *args: str):
    return run_module("simvlg_video.adapt", *args, f"hydra.run.dir={cwd / 'run'}", cwd=cwd)


def one_line_error(result) -> str:
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_the_import_command_writes_a_loadable_model_directory(blip2_files, tmp_path):
    result = run_module(
        "simvlg_video.formats.blip2_checkpoint",
        str(blip2_files.folder),
        "--prompt",
        PROMPT,
        "--out",
        str(tmp_path / "blip2_model"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"wrote {tmp_path / 'blip2_model'}"
    model, cfg = load_model_dir(tmp_path / "blip2_model")
    assert cfg.lm.prompt == PROMPT and torch.equal(model.connector.query_tokens, blip2_files.hf_state["query_tokens"])

    result = run_module(
        "simvlg_video.formats.blip2_checkpoint",
        str(blip2_files.ckpt),
        "--lm-path",
        str(blip2_files.lm_path),
        "--out",
        str(tmp_path / "refused"),
        cwd=tmp_path,
    )
    assert one_line_error(result) == (
        f"error: {blip2_files.ckpt.resolve()} holds no ViT (visual_encoder.*): give "
        "the ViT weights (BLIP-2's eva_vit_g.pth)"
    )
    result = run_module(
        "simvlg_video.formats.blip2_checkpoint",
        str(blip2_files.folder),
        "--lm-path",
        str(blip2_files.lm_path),
        "--out",
        str(tmp_path / "refused"),
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "--lm-path do not apply to a Hugging Face folder" in result.stderr
    assert not (tmp_path / "refused").exists()


def test_caption_asks_for_a_blip2_folder_to_be_imported_first(blip2_files, tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"")
    result = run_module(
        "simvlg_video.caption", "--ckpt", str(blip2_files.folder), str(tmp_path / "clip.mp4"), cwd=tmp_path
    )
    assert one_line_error(result) == (
        f"error: {blip2_files.folder} is a Hugging Face BLIP-2 folder; import it as a model directory first: "
        f"python -m simvlg_video.formats.blip2_checkpoint {blip2_files.folder} --out MODEL_DIR"
    )


@pytest.mark.parametrize(
    ("kind", "extra", "message"),
    [
        (
            "folder",
            ["lm_path=LM"],
            "is a Hugging Face BLIP-2 folder, which holds its ViT, LLM and architecture: leave out lm_path",
        ),
        (
            "with_vit",
            ["lm_path=LM", "vit_weights=VIT"],
            "is a LAVIS BLIP-2 OPT checkpoint file that holds its ViT: leave out vit_weights",
        ),
        (
            "ckpt",
            ["vit_weights=VIT"],
            "is a LAVIS BLIP-2 OPT checkpoint file and also needs lm_path=PATH (the LLM's Hugging Face folder)",
        ),
        ("ckpt", [], "is a LAVIS BLIP-2 OPT checkpoint file and also needs vit_weights=PATH"),
    ],
)
def test_adapt_says_which_frozen_parts_a_blip2_source_needs(blip2_files, tmp_path, kind, extra, message):
    source = {"folder": blip2_files.folder, "with_vit": blip2_files.ckpt_with_vit, "ckpt": blip2_files.ckpt}[kind]
    places = {"LM": str(blip2_files.lm_path), "VIT": str(blip2_files.vit_weights)}
    given = [key + "=" + places[value] for key, value in (item.split("=") for item in extra)]
    line = one_line_error(adapt(tmp_path, "--image-ckpt", str(source), *given))
    assert line.startswith(f"error: --image-ckpt {source} {message}"), line
    assert not (tmp_path / "run" / "image_model").exists()


def captions_and_scores(run: Path, cwd: Path) -> None:
    """`caption` reproduces the run's predictions of two clips; `evaluate` gives the run's scores again."""
    assert_caption_reproduces_predictions(run, cwd)
    before = json.loads((run / "eval/test_metrics.json").read_text())["metrics"]
    evaluated = run_module("simvlg_video.evaluate", "--ckpt", str(run), cwd=cwd)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads((run / "eval/test_metrics.json").read_text())["metrics"] == before


@pytest.mark.slow
def test_adapt_evaluate_and_caption_from_a_hugging_face_folder(blip2_files, tmp_path):
    """The default placement (the merged-token pool over each frame's Q-Former outputs) with BLIP-2's prompt; the
    run draws a picture of what the queries read."""
    result = adapt(
        tmp_path, "--image-ckpt", str(blip2_files.folder), f"prompt={PROMPT}", *SMALL_RUN, "eval.visualize=1"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    imported, image_cfg = load_model_dir(run / "image_model")
    assert image_cfg.connector.kind == "qformer" and image_cfg.lm.prompt == PROMPT and image_cfg.adapter is None
    model, cfg = load_model_dir(run / "model")
    assert isinstance(model.time_pool, TemporalTokenPool) and cfg.frozen == image_cfg.frozen
    assert cfg.vit.weights == cfg.lm.path == str(blip2_files.folder.resolve())
    assert not torch.equal(model.connector.query_tokens, imported.connector.query_tokens)  # the Q-Former trained
    assert [p.read_bytes()[:4] for p in (run / "visualize").glob("*.png")] == [b"\x89PNG"]
    captions_and_scores(run, tmp_path)


@pytest.mark.slow
def test_adapt_evaluate_and_caption_from_a_lavis_checkpoint(blip2_files, tmp_path):
    """The reference placement (temporal modules in the ViT) on a LAVIS blip2_opt checkpoint with its frozen files."""
    OmegaConf.save(OmegaConf.structured(blip2_files.model_cfg), tmp_path / "tiny_blip2.yaml")
    result = adapt(
        tmp_path,
        "--image-ckpt",
        str(blip2_files.ckpt),
        f"lm_path={blip2_files.lm_path}",
        f"vit_weights={blip2_files.vit_weights}",
        f"model_config={tmp_path / 'tiny_blip2.yaml'}",
        "adapter=reference",
        "adapter.qk_dim=16",
        "adapter.num_heads=4",
        "eval.before=false",
        "eval.visualize=0",
        *SMALL_RUN,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    model, cfg = load_model_dir(run / "model")
    assert cfg.vit.weights == str(blip2_files.vit_weights.resolve())
    assert cfg.adapter["name"] == "reference"
    assert all(hasattr(block, "temporal_merge") for block in model.vit.blocks)
    assert any(block.temporal_merge.alpha.item() != 0 for block in model.vit.blocks)  # the gates opened
    captions_and_scores(run, tmp_path)
