"""What a user meets when something is wrong: broken videos among good ones, wrong files given as checkpoints,
malformed manifests, samplers that need probed facts. One line each that names the problem, never a traceback."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from adapt_runs import TINY_RUN, run_module

from simvlg_video.data.manifest import read_manifest
from simvlg_video.data_tools.make_broken_videos import make_broken_set


@pytest.fixture(scope="module")
def video_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A video model directory (what `adapt` exports), from a short run."""
    work = tmp_path_factory.mktemp("video_model")
    result = run_module(
        "simvlg_video.adapt",
        "--image-ckpt",
        str(tiny_model_dir),
        *TINY_RUN,
        "eval.before=false",
        "eval.visualize=0",
        f"hydra.run.dir={work / 'run'}",
        cwd=work,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "run" / "model"


@pytest.mark.slow
def test_caption_captions_every_good_file_and_names_each_bad_one(video_model: Path, tmp_path: Path):
    folder = tmp_path / "broken"
    records = {r.clip_id: r for r in read_manifest(make_broken_set(folder, num_good=2))}
    good = [records["good_0"].video_path, records["good_1"].video_path]
    bad = [records[name].video_path for name in ("missing", "empty", "not_a_video", "audio_only")]
    result = run_module(
        "simvlg_video.caption", "--ckpt", str(video_model), str(good[0]), *map(str, bad), str(good[1]), cwd=tmp_path
    )
    assert result.returncode == 1  # documented: some file could not be captioned
    captioned = dict(line.split("\t", 1) for line in result.stdout.strip().splitlines())
    assert sorted(captioned) == sorted(str(p.resolve()) for p in good)
    assert all(caption.strip() for caption in captioned.values())
    problems = [line for line in result.stderr.splitlines() if line.startswith(str(folder))]
    assert sorted(line.split(": ", 1)[0] for line in problems) == sorted(str(p.resolve()) for p in bad)
    assert "Traceback" not in result.stderr

    only_good = run_module("simvlg_video.caption", "--ckpt", str(video_model), *map(str, good), cwd=tmp_path)
    assert (
        only_good.returncode == 0 and dict(line.split("\t", 1) for line in only_good.stdout.splitlines()) == captioned
    )


def not_a_checkpoint(kind: str, path: Path) -> Path:
    if kind == "random bytes":
        path.write_bytes(os.urandom(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.write_text("model = 'opt-2.7b'\n")
    return path


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("random bytes", "neither the zip header nor the pickle header"),
        ("empty", "is empty (0 bytes)"),
        ("text", "neither the zip header nor the pickle header"),
    ],
)
def test_a_file_that_is_no_checkpoint_is_one_line(tiny_model_dir: Path, tmp_path: Path, kind: str, reason: str):
    weights = not_a_checkpoint(kind, tmp_path / "simvlg_image.pth")
    result = run_module(
        "simvlg_video.adapt",
        "--image-ckpt",
        str(weights),
        f"vit_weights={weights}",
        f"lm_path={tiny_model_dir / 'lm'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --image-ckpt {weights}:") and reason in lines[0], lines
    assert "weights_only" not in result.stderr  # no advice to unpickle what is not a checkpoint


def test_an_empty_directory_as_image_model_is_one_line(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    result = run_module("simvlg_video.adapt", "--image-ckpt", str(tmp_path / "empty"), cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"error: --image-ckpt {tmp_path / 'empty'}: not a model directory (it has no model.yaml) nor a Hugging Face "
        "BLIP-2 folder (no config.json with model_type blip-2); give one written by adapt, lavis_checkpoint or "
        "blip2_checkpoint, a BLIP-2 folder, or a checkpoint file (.pth)"
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"clip_id": "a", "video": "a.mp4", ', "manifest.jsonl:2: not valid JSON (Expecting property name enclosed"),
        ('{"clip_id": "a", "video": "a.mp4", "start": null, "end": null, "captions": ["x"]}', "manifest.jsonl:2:"),
        ('{"clip_id": "a", "video": "a.mp4 ', "manifest.jsonl:2: not valid JSON (Unterminated string starting at col"),
    ],
)
def test_a_broken_manifest_line_is_named_without_a_traceback(
    tiny_model_dir: Path, tmp_path: Path, line: str, message: str
):
    good = json.dumps(
        {"clip_id": "b", "video": "b.mp4", "start": None, "end": None, "captions": ["y"], "split": "train"}
    )
    (tmp_path / "manifest.jsonl").write_text(good + "\n" + line)  # the last line without its newline
    result = run_module(
        "simvlg_video.adapt",
        "--image-ckpt",
        str(tiny_model_dir),
        f"data.manifest={tmp_path / 'manifest.jsonl'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert "at at" not in lines[0]


def probing_passes(stderr: str) -> list[int]:
    """How many videos each probing pass that a command started was to probe, read from its progress bars."""
    return [int(total) for total in re.findall(r"probe: +0%\|[^|\n\r]*\| *0/(\d+) ", stderr)]


@pytest.mark.slow
def test_the_keyframe_sampler_runs_on_a_set_without_probed_keyframes(tiny_model_dir: Path, tmp_path: Path):
    """The synthetic set's manifest has frame counts but no keyframes: they are probed once, beside it, and reused."""
    run = tmp_path / "run"
    result = run_module(
        "simvlg_video.adapt",
        "--image-ckpt",
        str(tiny_model_dir),
        *TINY_RUN,
        "sampler=keyframe",
        "eval.before=false",
        "eval.visualize=0",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert probing_passes(result.stderr) == [21]  # every video of the set, once: what the check below must not see
    config = (run / "config.yaml").read_text()
    manifest = Path(next(line.split(": ", 1)[1] for line in config.splitlines() if "manifest: " in line))
    assert ".probed-" in manifest.name and all(r.keyframes for r in read_manifest(manifest))
    again = run_module(
        "simvlg_video.adapt",
        "--image-ckpt",
        str(tiny_model_dir),
        *TINY_RUN,
        "sampler=keyframe",
        "eval.before=false",
        "eval.visualize=0",
        "train.steps=1",
        f"hydra.run.dir={tmp_path / 'again'}",
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert probing_passes(again.stderr) == []  # the probed copy is reused, no second pass


def test_a_sampler_whose_facts_cannot_be_had_is_refused_before_training(tiny_model_dir: Path, tmp_path: Path):
    folder = tmp_path / "broken"
    manifest = make_broken_set(folder, num_good=2)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    kept = [row for row in rows if row["clip_id"] in ("good_0", "good_1", "not_a_video")]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in kept))
    result = run_module(
        "simvlg_video.adapt",
        "--image-ckpt",
        str(tiny_model_dir),
        "sampler=keyframe",
        f"data.manifest={manifest}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert "sampler keyframe needs `keyframes`" in error and "not_a_video" in error and "check_videos" in error
    assert not (tmp_path / "run" / "checkpoints").exists()
    shutil.rmtree(folder)
