"""A run killed with SIGKILL at any moment and continued with resume=auto ends exactly where an uninterrupted run
ends: trainable weights bit-identical (CPU, fp32) and the same loss at every logged step."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapt_runs import TINY_RUN, command_env, records, run_module, train_losses

STEPS = 8
# Dropout on and two loader workers: the RNG states and the data position must both come back exactly.
RESUMABLE = [*TINY_RUN, f"train.steps={STEPS}", "train.checkpoint_every=2", "train.log_every=1",
             "train.num_workers=2", "eval.before=false", "eval.num_beams=1", "eval.max_new_tokens=4"]


def adapt_args(tiny_model_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["--image-ckpt", str(tiny_model_dir), *RESUMABLE, f"hydra.run.dir={run_dir}", *extra]


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("uninterrupted")
    result = run_module("simvlg_video.adapt", *adapt_args(tiny_model_dir, work / "run"), cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "run"


def kill_when(args: list[str], cwd: Path, ready) -> None:
    """Start adapt and SIGKILL it the moment `ready()` holds (or let it finish if it never does)."""
    process = subprocess.Popen([sys.executable, "-m", "simvlg_video.adapt", *args], cwd=cwd, env=command_env(cwd),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while process.poll() is None and not ready():
            time.sleep(0.0002)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def assert_same_end(resumed: Path, uninterrupted: Path) -> None:
    final = f"checkpoints/{STEPS:08d}/trainable.safetensors"
    expected, got = load_file(uninterrupted / final), load_file(resumed / final)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), f"{name} differs after resume"
    assert train_losses(resumed) == train_losses(uninterrupted)
    assert sorted(train_losses(resumed)) == list(range(1, STEPS + 1))
    assert (resumed / "model" / "trainable.safetensors").is_file()


@pytest.mark.slow
def test_killed_while_writing_a_checkpoint(uninterrupted: Path, tiny_model_dir: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    partial = run_dir / "checkpoints" / "00000004.partial"
    kill_when(adapt_args(tiny_model_dir, run_dir), tmp_path, partial.exists)
    assert partial.exists() and not (run_dir / "checkpoints" / "00000004").exists(), "not killed mid-write"

    result = run_module("simvlg_video.adapt", *adapt_args(tiny_model_dir, run_dir, "resume=auto"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "00000002 at step 2" in result.stdout  # Hydra's log goes to stdout
    assert [r["step"] for r in records(run_dir, "resume")] == [2]
    assert_same_end(run_dir, uninterrupted)

    again = run_module("simvlg_video.adapt", *adapt_args(tiny_model_dir, run_dir, "resume=auto"), cwd=tmp_path)
    assert again.returncode == 0 and "already finished" in again.stdout  # a resumed sweep skips finished jobs
    assert len(records(run_dir, "summary")) == 1


@pytest.mark.slow
def test_killed_at_a_random_moment(uninterrupted: Path, tiny_model_dir: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    delay = random.uniform(2.0, 14.0)  # from start-up through training to the final evaluation
    deadline = time.monotonic() + delay
    kill_when(adapt_args(tiny_model_dir, run_dir), tmp_path, lambda: time.monotonic() > deadline)

    result = run_module("simvlg_video.adapt", *adapt_args(tiny_model_dir, run_dir, "resume=auto"), cwd=tmp_path)
    assert result.returncode == 0, f"killed after {delay:.2f} s: {result.stderr[-3000:]}"
    assert_same_end(run_dir, uninterrupted)


@pytest.mark.slow
def test_a_run_that_only_produces_nan_stops_with_its_last_good_state(tiny_model_dir: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    # An absurd learning rate: after one step every activation overflows and every later loss is NaN.
    result = run_module("simvlg_video.adapt", *adapt_args(tiny_model_dir, run_dir, "train.lr=1e30",
                                                          "train.warmup_steps=0", "train.max_nonfinite_in_a_row=3"),
                        cwd=tmp_path)
    assert result.returncode != 0
    assert "3 steps in a row had a non-finite loss or gradient" in result.stderr
    assert "Saved that state as" in result.stderr and "Traceback" not in result.stderr
    saved = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert saved[-1] == "00000004", saved  # step 1 updated the weights, steps 2-4 were skipped
    weights = load_file(run_dir / "checkpoints" / "00000004" / "trainable.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values()), "the saved state is the last finite one"


def test_resuming_with_other_settings_is_refused(uninterrupted: Path, tiny_model_dir: Path):
    result = run_module("simvlg_video.adapt", *adapt_args(tiny_model_dir, uninterrupted, "resume=auto",
                                                          "train.lr=0.1"), cwd=uninterrupted.parent)
    assert result.returncode != 0
    assert "other settings than its config.yaml:\n  train.lr: 0.0005 -> 0.1\nresume with" in result.stderr


def test_a_fresh_run_into_a_directory_with_checkpoints_is_refused(uninterrupted: Path, tiny_model_dir: Path,
                                                                   tmp_path: Path):
    result = run_module("simvlg_video.adapt", *adapt_args(tiny_model_dir, uninterrupted), cwd=tmp_path)
    assert result.returncode != 0
    assert "already holds checkpoints; continue it with resume=auto" in result.stderr
