"""Running the real commands in subprocesses, as users do, for the end-to-end tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

TINY_RUN = [
    "data.synthetic.num_clips=21",
    "data.synthetic.height=64",
    "data.synthetic.width=64",
    "data.synthetic.duration=1.0",
    "train.steps=3",
    "train.batch_size=4",
    "data.num_workers=0",
    "train.warmup_steps=1",
    "eval.batch_size=8",
    "eval.num_beams=2",
    "eval.max_new_tokens=6",
]
# A log record at every step, no dropout (its masks come from each process's RNG), a short evaluation: what runs
# compared step by step across interruptions and numbers of processes share.
STEP_BY_STEP = [
    "train.log_every=1",
    "train.dropout=0",
    "eval.before=false",
    "eval.visualize=0",
    "eval.num_beams=1",
    "eval.max_new_tokens=4",
]


def compose_adapt(*overrides: str, config: str = "adapt"):
    """adapt's config (or pretrain's) as Hydra composes it from the installed config package (`python -m
    simvlg_video.adapt --cfg job`), with these overrides."""
    from hydra import compose, initialize_config_module

    from simvlg_video.configs import register_schemas

    register_schemas()
    with initialize_config_module("simvlg_video.configs", version_base="1.3"):
        return compose(config, overrides=["run_dir=unused", *overrides])


def installed_wheel(work: Path) -> Path:
    """The package as users install it: a wheel built from a clean copy of the repository's files (the checkout's
    own build/ folder could hold stale modules) and installed into a folder of its own; returns that folder."""
    repo = Path(__file__).resolve().parents[1]
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    source = work / "source"
    for name in listed:
        if (repo / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(work / "wheel"),
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(work / "site"),
            str(next((work / "wheel").glob("*.whl"))),
        ],
        check=True,
        capture_output=True,
    )
    return work / "site"


def command_env(cwd: Path) -> dict[str, str]:
    return {**os.environ, "SIMVLG_VIDEO_CACHE": str(cwd / "cache"), "OMP_NUM_THREADS": "1"}


def run_module(module: str, *args: str, cwd: Path, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """`python -m module args` (or `launcher -m module args`, e.g. torchrun) with the test's own data cache."""
    command = [*(launcher or [sys.executable]), "-m", module, *args]
    return subprocess.run(command, cwd=cwd, env=command_env(cwd), capture_output=True, text=True, timeout=600)


def adapt_run(image_model: Path, work: Path, *overrides: str) -> tuple[Path, subprocess.CompletedProcess]:
    """`adapt --image-ckpt image_model` on the tiny set with `overrides`, into WORK/run: (run directory, result)."""
    result = run_module(
        "simvlg_video.adapt", "--image-ckpt", str(image_model), *overrides, f"hydra.run.dir={work / 'run'}", cwd=work
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "run", result


def records(run_dir: Path, phase: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record.get("phase") == phase]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {record["step"]: record["loss"] for record in records(run_dir, "train")}


def written_predictions(
    eval_dir: Path, manifest: str | Path, split: str = "test", name: str | None = None
) -> tuple[dict, dict]:
    """(clip_id -> caption) that a run wrote to eval_dir/<name or split>_predictions.json, and (clip_id ->
    attributes) of the split's clips in `manifest`: what its accuracies are recomputed from (the accuracy
    functions themselves are pinned on hand-written captions in test_shape_accuracy.py)."""
    from simvlg_video.data.manifest import read_manifest

    rows = json.loads((Path(eval_dir) / f"{name or split}_predictions.json").read_text())
    captions = {row["clip_id"]: row["caption"] for row in rows}
    return captions, {record.clip_id: record.attributes for record in read_manifest(manifest, split)}


def assert_caption_reproduces_predictions(run: Path, cwd: Path, count: int = 2) -> None:
    """`caption --ckpt RUN` gives the captions the run predicted for its first `count` test clips (the same frame
    sampling and decoding settings, read from the exported model)."""
    from omegaconf import OmegaConf

    predictions = json.loads((run / "eval/test_predictions.json").read_text())[:count]
    manifest = Path(OmegaConf.load(run / "config.yaml").data.manifest)
    rows = {json.loads(line)["clip_id"]: json.loads(line) for line in manifest.read_text().splitlines()}
    videos = [str(manifest.parent / rows[p["clip_id"]]["video"]) for p in predictions]
    captioned = run_module("simvlg_video.caption", "--ckpt", str(run), *videos, cwd=cwd)
    assert captioned.returncode == 0, captioned.stderr[-3000:]
    printed = dict(line.split("\t", 1) for line in captioned.stdout.strip().splitlines())
    assert [printed[v] for v in videos] == [p["caption"] for p in predictions]
