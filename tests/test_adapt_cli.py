"""The main command end to end on a tiny model and a tiny synthetic set, then `caption` and `evaluate` on its run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from adapt_runs import TINY_RUN, run_module


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("adapt")
    result = run_module("simvlg_video.adapt", "--image-ckpt", str(tiny_model_dir), *TINY_RUN,
                        f"hydra.run.dir={work / 'run'}", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| image model |" in result.stdout and "| adapted |" in result.stdout
    return work / "run"


@pytest.mark.slow
def test_run_directory_layout(run_dir: Path):
    for name in ("config.yaml", "metrics.jsonl", "eval/test_predictions.json", "eval/test_metrics.json",
                 "eval/test_image_model_predictions.json", "model/model.yaml", "model/trainable.safetensors"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "checkpoints").iterdir())
    metrics = json.loads((run_dir / "eval/test_metrics.json").read_text())["metrics"]
    assert {"BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "motion_acc", "object_acc"} <= metrics.keys()
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "step" in r] == [3]


@pytest.mark.slow
def test_caption_reproduces_the_run_predictions(run_dir: Path):
    predictions = json.loads((run_dir / "eval/test_predictions.json").read_text())[:2]
    manifest = Path(OmegaConf.load(run_dir / "config.yaml").data.manifest)
    rows = {json.loads(line)["clip_id"]: json.loads(line) for line in manifest.read_text().splitlines()}
    videos = [str(manifest.parent / rows[p["clip_id"]]["video"]) for p in predictions]
    result = run_module("simvlg_video.caption", "--ckpt", str(run_dir), *videos, cwd=run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = dict(line.split("\t", 1) for line in result.stdout.strip().splitlines())
    assert [printed[v] for v in videos] == [p["caption"] for p in predictions]


@pytest.mark.slow
def test_evaluate_rescores_the_run(run_dir: Path):
    before = json.loads((run_dir / "eval/test_metrics.json").read_text())["metrics"]
    result = run_module("simvlg_video.evaluate", "--ckpt", str(run_dir), cwd=run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    after = json.loads((run_dir / "eval/test_metrics.json").read_text())["metrics"]
    assert after == before


@pytest.mark.slow
def test_adapter_none_trains_the_rest(tiny_model_dir: Path, tmp_path: Path):
    """The floor of an ablation: no adapter modules, so `adapters` in train.trainable has nothing to train."""
    result = run_module("simvlg_video.adapt", "--image-ckpt", str(tiny_model_dir), *TINY_RUN, "adapter=none",
                        "eval.before=false", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = OmegaConf.load(tmp_path / "run" / "model" / "model.yaml")
    assert list(saved.trainable) == ["ln_vision", "VL_proj", "connector", "opt_proj"]


def test_missing_image_checkpoint_is_one_line(tmp_path: Path):
    result = run_module("simvlg_video.adapt", "--image-ckpt", str(tmp_path / "nope"), cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [f"error: --image-ckpt {tmp_path / 'nope'}: no such file or directory"]


def test_unknown_config_key_is_hydras_error(tmp_path: Path):
    result = run_module("simvlg_video.adapt", "train.stepz=3", cwd=tmp_path)
    assert result.returncode != 0
    assert "Could not override 'train.stepz'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_visualize_writes_a_picture(run_dir: Path):
    manifest = Path(OmegaConf.load(run_dir / "config.yaml").data.manifest)
    video = manifest.parent / json.loads(manifest.read_text().splitlines()[0])["video"]
    out = run_dir / "picture.png"
    result = run_module("simvlg_video.visualize", "--ckpt", str(run_dir), str(video), "--out", str(out), cwd=run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


@pytest.mark.slow
def test_runs_table_lists_finished_and_unfinished_runs(run_dir: Path, tmp_path: Path):
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    (crashed / "config.yaml").write_text((run_dir / "config.yaml").read_text())  # died before its summary
    result = run_module("simvlg_video.eval.runs", str(run_dir), str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    summary = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    cider = 100 * summary["adapted"]["CIDEr"]
    assert rows[0].startswith(f"| run | reference (time: none) | {cider:.1f} |")
    assert f"| {summary['train_videos_per_s']:.1f} | " in rows[0] and "(process RSS) |" in rows[0]
    assert rows[1].startswith("| crashed | reference (time: none) | unfinished |")
