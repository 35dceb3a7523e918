"""The main command end to end on a tiny model and a tiny synthetic set, then `caption` and `evaluate` on its run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from adapt_runs import TINY_RUN, assert_caption_reproduces_predictions, records, run_module, written_predictions
from omegaconf import OmegaConf

from simvlg_video.eval.shape_accuracy import shape_accuracy
from simvlg_video.formats.model_dir import load_model_dir


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("adapt")
    result = run_module(
        "simvlg_video.adapt", "--image-ckpt", str(tiny_model_dir), *TINY_RUN, f"hydra.run.dir={work / 'run'}", cwd=work
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| image model |" in result.stdout and "| adapted |" in result.stdout
    return work / "run"


@pytest.mark.slow
def test_run_directory_layout(run_dir: Path):
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "eval/test_predictions.json",
        "eval/test_metrics.json",
        "eval/test_image_model_predictions.json",
        "model/model.yaml",
        "model/weights.safetensors",
    ):
        assert (run_dir / name).is_file(), name
    pictures = sorted((run_dir / "visualize").glob("*.png"))
    assert len(pictures) == 3 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pictures)
    assert any((run_dir / "checkpoints").iterdir())
    metrics = json.loads((run_dir / "eval/test_metrics.json").read_text())["metrics"]
    assert {"BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "motion_acc", "object_acc"} <= metrics.keys()
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "step" in r] == [3]


@pytest.mark.slow
def test_caption_reproduces_the_run_predictions(run_dir: Path):
    assert_caption_reproduces_predictions(run_dir, cwd=run_dir)


@pytest.mark.slow
def test_evaluate_rescores_the_run(run_dir: Path):
    before = json.loads((run_dir / "eval/test_metrics.json").read_text())["metrics"]
    result = run_module("simvlg_video.evaluate", "--ckpt", str(run_dir), cwd=run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    after = json.loads((run_dir / "eval/test_metrics.json").read_text())["metrics"]
    assert after == before


@pytest.mark.slow
def test_evaluate_runs_a_four_frame_run_at_more_frames(run_dir: Path):
    """Frames beyond training (docs/experiments.md, "Time beyond direction"): a run trained at T = 4 is scored at 8 and
    16 frames, its pool's time codes read as moments of the clip (adapters/position_codes.py)."""
    manifest = OmegaConf.load(run_dir / "config.yaml").data.manifest
    assert OmegaConf.load(run_dir / "config.yaml").data.num_frames == 4
    for num_frames in (8, 16):
        result = run_module(
            "simvlg_video.evaluate",
            "--ckpt",
            str(run_dir / "model"),
            "--manifest",
            manifest,
            f"data.num_frames={num_frames}",
            cwd=run_dir,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        written = f"test_data.num_frames={num_frames}"
        metrics = json.loads((run_dir / "model" / "eval" / f"{written}_metrics.json").read_text())
        assert metrics["metrics"]["clips"] == len(records_of(manifest)) and not metrics["skipped"]
        captions, attributes = written_predictions(run_dir / "model" / "eval", manifest, name=written)
        assert captions.keys() == attributes.keys()
        assert metrics["metrics"]["motion_acc"] == shape_accuracy(captions, attributes)["motion_acc"]


def records_of(manifest: str) -> list:
    from simvlg_video.data.manifest import read_manifest

    return read_manifest(manifest, "test")


@pytest.mark.slow
def test_adapter_none_trains_the_rest(tiny_model_dir: Path, tmp_path: Path):
    """The floor of an ablation: no adapter modules, so `adapters` in train.trainable has nothing to train."""
    result = run_module(
        "simvlg_video.adapt",
        "--image-ckpt",
        str(tiny_model_dir),
        *TINY_RUN,
        "adapter=none",
        "eval.before=false",
        "eval.visualize=0",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = OmegaConf.load(tmp_path / "run" / "model" / "model.yaml")
    assert saved.adapter.name == "none"
    image_model, _ = load_model_dir(tiny_model_dir)
    expected = sum(
        p.numel()
        for name in ("ln_vision", "VL_proj", "connector", "opt_proj")
        for p in getattr(image_model, name).parameters()
    )
    assert records(tmp_path / "run", "summary")[-1]["trainable"] == expected


@pytest.mark.slow
def test_a_narrowed_trainable_set_exports_a_whole_model(tiny_model_dir: Path, tmp_path: Path):
    """Only the adapters train, yet the exported model holds the image model's connector and projections and
    captions exactly as the run's own predictions."""
    run = tmp_path / "run"
    result = run_module(
        "simvlg_video.adapt",
        "--image-ckpt",
        str(tiny_model_dir),
        *TINY_RUN,
        "train.trainable=[adapters]",
        "eval.before=false",
        "eval.visualize=0",
        "train.lr=0.05",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    exported, _ = load_model_dir(run / "model")
    image_model, _ = load_model_dir(tiny_model_dir)
    for name in ("connector", "opt_proj", "VL_proj", "ln_vision", "vit"):
        for key, tensor in getattr(image_model, name).state_dict().items():
            assert torch.equal(getattr(exported, name).state_dict()[key], tensor), f"{name}.{key}"
    assert not torch.equal(exported.time_pool.out.weight, torch.zeros_like(exported.time_pool.out.weight))

    predictions = json.loads((run / "eval/test_predictions.json").read_text())
    manifest = Path(OmegaConf.load(run / "config.yaml").data.manifest)
    rows = {json.loads(line)["clip_id"]: json.loads(line) for line in manifest.read_text().splitlines()}
    videos = [str(manifest.parent / rows[p["clip_id"]]["video"]) for p in predictions]
    captioned = run_module("simvlg_video.caption", "--ckpt", str(run / "model"), *videos, cwd=tmp_path)
    assert captioned.returncode == 0, captioned.stderr[-3000:]
    printed = dict(line.split("\t", 1) for line in captioned.stdout.strip().splitlines())
    assert [printed[v] for v in videos] == [p["caption"] for p in predictions]


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
    header, *rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    summary = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    placement = "merged_tokens (queries: clip_view, time: clip_time, space: sinusoidal)"
    assert cells[:2] == ["run", placement]
    assert cells[columns.index("CIDEr")] == f"{100 * summary['trained']['CIDEr']:.1f}"
    assert f"| {summary['train_clips_per_s']:.1f} | " in rows[0] and "(process RSS) |" in rows[0]
    assert rows[1].startswith(f"| crashed | {placement} | unfinished |")


@pytest.mark.slow
def test_runs_table_shows_event_columns_only_where_a_run_has_them(run_dir: Path, tmp_path: Path):
    from simvlg_video.eval.runs import runs_table

    assert "event_order_acc" not in runs_table([run_dir])
    events_run = tmp_path / "events"
    events_run.mkdir()
    (events_run / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    summary = json.loads(lines[-1])
    summary["trained"] |= {"event_order_acc": 0.925, "speed_acc": 0.5}
    (events_run / "metrics.jsonl").write_text("\n".join([*lines[:-1], json.dumps(summary)]) + "\n")
    header, _, plain, with_events = runs_table([run_dir, events_run]).splitlines()
    assert header.endswith("| event_order_acc | speed_acc | train clips/s | peak memory (GiB) |")
    assert " | 92.5 | 50.0 | " in with_events and " | - | - | " in plain
