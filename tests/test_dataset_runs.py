"""The README's commands end to end on generated stand-ins for MSR-VTT, MSVD and ActivityNet Captions.

Each stand-in has annotation files in the official schema and small real videos named as in the real dataset (one
video left out, so the check step has something to filter). The commands are the documented ones: convert,
check_videos, adapt with `data=<dataset> data.root=ROOT` (plus overrides that make the run tiny), and for
ActivityNet also evaluate (on the run directory, and on its exported model directory with --manifest), whose metrics
must equal pycocoevalcap's on references read straight from the official files.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from adapt_runs import run_module
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from test_paragraph import METRICS, pycocoevalcap_scores

from simvlg_video.configs import register_schemas
from simvlg_video.data import sampling
from simvlg_video.data.clips import DataConfigError
from simvlg_video.data.samplers import sampler_from
from simvlg_video.data.video_writer import write_video
from simvlg_video.formats.model_dir import MODEL_CONFIG, WEIGHTS, read_model_config
from simvlg_video.stage import clip_data

FPS = 8
CONTAINERS = {".mp4": "mp4", ".avi": "avi", ".mkv": "matroska"}
TINY_RUN = [
    "train.steps=2",
    "train.batch_size=2",
    "data.num_workers=0",
    "train.warmup_steps=1",
    "precision=fp32",
    "eval.num_beams=1",
    "eval.min_new_tokens=1",
    "eval.max_new_tokens=4",
    "eval.batch_size=8",
    "eval.before=false",
]


def encode(path: Path, seconds: float, seed: int) -> None:
    """A small H.264 clip of a square drifting across a random background."""
    rng = np.random.default_rng(seed)
    count = round(seconds * FPS)
    frames = np.repeat(rng.integers(0, 256, (1, 48, 64, 3), dtype=np.uint8), count, axis=0)
    for t in range(count):
        frames[t, 10:26, 2 + 2 * t : 18 + 2 * t] = rng.integers(0, 256, 3, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, frames, FPS, codec="libx264", container_format=CONTAINERS[path.suffix])


def write_json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    return path


def msrvtt_standin(root: Path) -> list[str]:
    """video0-3 train, video4 validate, video5-6 test (video6 not downloaded); returns the convert arguments."""
    splits = ["train"] * 4 + ["validate"] + ["test"] * 2
    sentences = [
        {"caption": f"clip {i} shows a square, take {k}", "video_id": f"video{i}", "sen_id": 3 * i + k}
        for i in range(len(splits))
        for k in range(3)
    ]
    videos = [{"video_id": f"video{i}", "split": s, "id": i} for i, s in enumerate(splits)]
    files = []
    for name, chosen in (("train_val_videodatainfo.json", range(5)), ("test_videodatainfo.json", range(5, 7))):
        files.append(
            write_json(
                root / name,
                {
                    "videos": [videos[i] for i in chosen],
                    "sentences": [s for s in sentences if int(s["video_id"][5:]) in chosen],
                },
            )
        )
    for i in range(6):
        encode(root / ("TrainValVideo" if i < 5 else "TestVideo") / f"video{i}.mp4", 2.0, seed=i)
    return ["msrvtt", "--root", str(root), "--official", *map(str, files)]


def msvd_standin(root: Path) -> list[str]:
    """Seven clips named <youtube_id>_<start>_<end>.avi in the order of youtube_mapping.txt; split 4 / 1 / 2."""
    names = [
        f"{youtube_id}_{start}_{start + 6}"
        for youtube_id, start in (
            ("-4wsuPCjDBc", 5),
            ("_UqnTFs1BLc", 23),
            ("0lh_UWF9ZP4", 82),
            ("1dfR0A_BXjw", 6),
            ("3qqEY_9beSs", 12),
            ("5YJaS2Eswg0", 22),
            ("8MVo7fje_oE", 139),
        )
    ]
    lines = ["# Microsoft Research Video Description Corpus", "# Format: <VideoID>_<start>_<end> <description>"]
    lines += [
        f"{name} a square moves across number {i} {'ñandú' if k else ''}"
        for i, name in enumerate(names)
        for k in range(2)
    ]
    (root / "AllVideoDescriptions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "youtube_mapping.txt").write_text("".join(f"{name} vid{i + 1}\n" for i, name in enumerate(names)))
    for i, name in enumerate(names[:-1]):
        encode(root / "YouTubeClips" / f"{name}.avi", 2.0, seed=10 + i)
    return [
        "msvd",
        "--root",
        str(root),
        "--descriptions",
        str(root / "AllVideoDescriptions.txt"),
        "--mapping",
        str(root / "youtube_mapping.txt"),
        "--split-sizes",
        "4",
        "1",
        "2",
    ]


ANET_VAL_1 = {
    "v_valAAAAAAAA": {
        "duration": 3.0,
        "timestamps": [[1.5, 3.4], [0, 1.5]],
        "sentences": ["Then the square slows down.", "A square slides to the right."],
    },
    "v_valBBBBBBBB": {"duration": 3.0, "timestamps": [[0.2, 2.0]], "sentences": ["A square crosses the frame."]},
    "v_valMISSING": {"duration": 3.0, "timestamps": [[0, 1]], "sentences": ["Never downloaded."]},
}
ANET_VAL_2 = {
    "v_valAAAAAAAA": {"duration": 3.0, "timestamps": [[0, 3.0]], "sentences": ["A square moves right."]},
    "v_valBBBBBBBB": {
        "duration": 3.0,
        "timestamps": [[1.0, 2.5], [0.0, 1.0]],
        "sentences": ["It leaves.", "A square appears."],
    },
}


def activitynet_standin(root: Path) -> list[str]:
    """Videos v_<id>.mp4 (one saved without the v_ prefix, as .mkv); segments, one past the end of its video."""
    train = {
        f"v_train{c * 6}": {
            "duration": 3.0,
            "timestamps": [[0, 1.5], [1.0, 3.0]],
            "sentences": [f"A square starts {c}.", f"The square goes on {c}."],
        }
        for c in "CDE"
    }
    paths = [
        write_json(root / f"{name}.json", document)
        for name, document in (("train", train), ("val_1", ANET_VAL_1), ("val_2", ANET_VAL_2))
    ]
    for i, video_id in enumerate([*train, "v_valAAAAAAAA"]):
        encode(root / "videos" / f"{video_id}.mp4", 3.0, seed=20 + i)
    encode(root / "videos" / "valBBBBBBBB.mkv", 3.0, seed=30)
    return [
        "activitynet",
        "--root",
        str(root),
        "--train",
        str(paths[0]),
        "--val-1",
        str(paths[1]),
        "--val-2",
        str(paths[2]),
    ]


# dataset -> (stand-in writer returning the convert arguments, the split its recipe scores)
STANDINS = {
    "msrvtt": (msrvtt_standin, "test"),
    "msvd": (msvd_standin, "test"),
    "activitynet": (activitynet_standin, "val"),
}


def run_ok(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = run_module(module, *args, cwd=cwd)
    assert result.returncode == 0, f"{module} {args}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def documented_run(dataset: str, tiny_model_dir: Path, work: Path) -> Path:
    """convert -> check_videos -> adapt, as the README says; returns the run directory."""
    make_standin, _ = STANDINS[dataset]
    root = work / dataset
    root.mkdir()
    converted = run_ok("simvlg_video.data_tools.convert", *make_standin(root), cwd=work)
    assert "videos not found: 1" in converted.stdout
    checked = run_ok("simvlg_video.data_tools.check_videos", str(root / "manifest.jsonl"), "--workers", "2", cwd=work)
    assert "1 missing" in checked.stdout
    run_dir = work / f"run_{dataset}"
    run_ok(
        "simvlg_video.adapt",
        "--image-ckpt",
        str(tiny_model_dir),
        f"data={dataset}",
        f"data.root={root}",
        *TINY_RUN,
        f"hydra.run.dir={run_dir}",
        cwd=work,
    )
    return run_dir


@pytest.mark.slow
@pytest.mark.java
@pytest.mark.parametrize("dataset", ["msrvtt", "msvd"])
def test_documented_commands_complete(dataset: str, tiny_model_dir: Path, tmp_path: Path):
    run_dir = documented_run(dataset, tiny_model_dir, tmp_path)
    split = STANDINS[dataset][1]
    predictions = json.loads((run_dir / f"eval/{split}_predictions.json").read_text())
    metrics = json.loads((run_dir / f"eval/{split}_metrics.json").read_text())["metrics"]
    assert len(predictions) == metrics["clips"] == 1  # two test clips, one video never downloaded
    assert set(METRICS) <= metrics.keys() and not any(key.startswith("paragraph/") for key in metrics)
    config = (run_dir / "config.yaml").read_text()
    assert "steps: 2" in config and "lr: 1.0e-05" in config  # the recipe, with the tiny overrides on top
    # The exported model directory: its two files, the frozen LLM pointed at (not copied), the run's eval settings.
    assert sorted(p.name for p in (run_dir / "model").iterdir()) == sorted([MODEL_CONFIG, WEIGHTS])
    exported = read_model_config(run_dir / "model" / MODEL_CONFIG)
    assert exported.lm.path == str((tiny_model_dir / "lm").resolve()) and set(exported.frozen) == {"lm"}
    data, decoding = exported.inference["data"], exported.inference["eval"]  # under the keys of the run's config
    assert (data["num_frames"], decoding["num_beams"], decoding["max_new_tokens"]) == (4, 1, 4)
    inference = exported.inference
    assert inference["precision"] == "fp32" and inference["sampler"] == {"eval": {"name": "uniform"}}


@pytest.mark.slow
@pytest.mark.java
def test_activitynet_evaluate_equals_pycocoevalcap_on_the_official_files(tiny_model_dir: Path, tmp_path: Path):
    run_dir = documented_run("activitynet", tiny_model_dir, tmp_path)
    adapted = json.loads((run_dir / "eval/val_predictions.json").read_text())
    for name in ("val_predictions.json", "val_metrics.json"):  # evaluate must write them itself
        (run_dir / "eval" / name).unlink()
    run_ok("simvlg_video.evaluate", "--ckpt", str(run_dir), cwd=tmp_path)
    metrics = json.loads((run_dir / "eval/val_metrics.json").read_text())["metrics"]
    predictions = json.loads((run_dir / "eval/val_predictions.json").read_text())
    assert predictions == adapted  # the exported model, with the settings it stores, captions as the run did
    captions = {row["clip_id"]: row["caption"] for row in predictions}

    # Ground truth straight from val_1.json / val_2.json: every segment that lies in a downloaded video.
    segments = {
        (video, name, index): (max(stamp[0], 0.0), min(stamp[1], entry["duration"]), sentence)
        for name, document in (("val_1", ANET_VAL_1), ("val_2", ANET_VAL_2))
        for video, entry in document.items()
        if video != "v_valMISSING"
        for index, (stamp, sentence) in enumerate(zip(entry["timestamps"], entry["sentences"]))
    }
    assert sorted(captions) == sorted(f"{v}:{name}:{i}" for v, name, i in segments)
    references = {f"{v}:{name}:{i}": [sentence] for (v, name, i), (_, _, sentence) in segments.items()}
    paragraphs, predicted = {}, {}
    for video in ("v_valAAAAAAAA", "v_valBBBBBBBB"):
        for name in ("val_1", "val_2"):
            keys = sorted((k for k in segments if k[:2] == (video, name)), key=lambda k: segments[k][:2])
            paragraphs.setdefault(video, []).append(" ".join(segments[k][2] for k in keys))
            if name == "val_1":
                predicted[video] = " ".join(captions[f"{video}:val_1:{k[2]}"] for k in keys)
    clip_level, paragraph_level = pycocoevalcap_scores((references, captions), (paragraphs, predicted))
    assert {name: metrics[name] for name in METRICS} == clip_level
    assert {name: metrics[f"paragraph/{name}"] for name in METRICS} == paragraph_level
    assert metrics["paragraph/videos"] == 2

    # The model directory on its own: the clips come from --manifest, settings from model.yaml and the command line.
    manifest = tmp_path / "activitynet" / "manifest.checked.jsonl"
    run_ok(
        "simvlg_video.evaluate",
        "--ckpt",
        str(run_dir / "model"),
        "--manifest",
        str(manifest),
        "eval.split=val",
        "eval.num_beams=1",
        "eval.max_new_tokens=4",
        cwd=tmp_path,
    )
    model_eval = run_dir / "model" / "eval"
    assert json.loads((model_eval / "val_predictions.json").read_text()) == predictions
    assert json.loads((model_eval / "val_metrics.json").read_text())["metrics"] == metrics


def composed(*overrides: str) -> DictConfig:
    register_schemas()
    with initialize_config_module("simvlg_video.configs", version_base="1.3"):
        return compose("adapt", overrides=list(overrides))


@pytest.mark.parametrize("dataset", list(STANDINS))
def test_data_config_brings_the_published_recipe(dataset: str):
    cfg = composed(f"data={dataset}", "data.root=/datasets/x")
    assert cfg.data.manifest == "/datasets/x/manifest.checked.jsonl" and cfg.data.synthetic is None
    assert (cfg.data.num_frames, cfg.data.hflip, list(cfg.data.crop_scale)) == (4, True, [0.5, 1.0])
    assert (sampler_from(cfg.sampler.train).build().func, sampler_from(cfg.sampler.eval).build().func) == (
        sampling.uniform,
        sampling.uniform,
    )
    published = composed(f"data={dataset}", "data.root=/datasets/x", "sampler=headtail").sampler
    assert (sampler_from(published.train).build().func, sampler_from(published.eval).build().func) == (
        sampling.headtail,
        sampling.head,
    )
    assert cfg.adapter.name == "merged_tokens"  # the toolkit's placement
    paper = composed(f"data={dataset}", "data.root=/datasets/x", "adapter=reference").adapter
    assert (paper.name, paper.blocks, paper.time_encoding) == ("reference", "all", "none")  # the published module,
    # blind to frame order
    train = cfg.train
    assert (train.steps, train.batch_size, train.lr, train.weight_decay) == (50000, 4, 1e-5, 0.05)
    assert (train.warmup_steps, train.warmup_start_lr, train.min_lr, train.grad_clip) == (1000, 1e-8, 1e-6, None)
    assert (cfg.eval.num_beams, cfg.eval.min_new_tokens, cfg.eval.max_new_tokens) == (5, 5, 20)
    assert cfg.eval.split == STANDINS[dataset][1]
    assert cfg.precision == "bf16"


def test_command_line_beats_the_recipe_and_the_recipe_can_be_dropped():
    assert composed("data=msrvtt", "data.root=/r", "train.steps=2").train.steps == 2
    assert composed("data=msrvtt", "data.root=/r", "~experiment").train.steps == composed("~experiment").train.steps
    assert composed("data=msvd", "data.root=/r", "experiment=activitynet").eval.split == "val"
    assert composed().train.lr != 1e-5  # the shapes demo's recipe sets its steps and decoding, not msrvtt's rate


def test_missing_root_is_named():
    with pytest.raises(DataConfigError, match=r"^data\.root is not set; .*data\.root=/path/to/dataset"):
        clip_data(composed("data=msrvtt"))


def test_missing_checked_manifest_is_named(tmp_path: Path):
    data = clip_data(composed("data=activitynet", f"data.root={tmp_path}"))
    with pytest.raises(DataConfigError, match=r"data.manifest: .*manifest.checked.jsonl does not exist"):
        data.manifest_path()


def test_real_data_config_without_a_manifest_is_named():
    cfg = composed("data=msvd", "data.root=/r")
    cfg.data.manifest = None
    with pytest.raises(DataConfigError, match=r"data.manifest and data.synthetic are both null"):
        clip_data(cfg).manifest_path()
    cfg.data.manifest = "???"
    with pytest.raises(DataConfigError, match=r"^data\.manifest is not set; give it on the command line"):
        clip_data(cfg)
