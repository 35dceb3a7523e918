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
from adapt_runs import TINY_RUN, command_env, records, run_module, train_losses
from safetensors.torch import load_file

STEPS = 8
# Dropout on and two loader workers: the RNG states and the data position must both come back exactly.
RESUMABLE = [
    *TINY_RUN,
    f"train.steps={STEPS}",
    "train.checkpoint_every=2",
    "train.log_every=1",
    "train.num_workers=2",
    "eval.before=false",
    "eval.num_beams=1",
    "eval.max_new_tokens=4",
]


def adapt_args(tiny_model_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["--image-ckpt", str(tiny_model_dir), *RESUMABLE, f"hydra.run.dir={run_dir}", *extra]


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("uninterrupted")
    result = run_module("simvlg_video.adapt", *adapt_args(tiny_model_dir, work / "run"), cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "run"


def kill_when(args: list[str], cwd: Path, ready, module: str = "simvlg_video.adapt") -> None:
    """Start `module` (adapt) and SIGKILL it the moment `ready()` holds (polled every 10 ms), or let it end if it
    never does."""
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=command_env(cwd),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while process.poll() is None and not ready():
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


# Runs adapt and SIGKILLs itself right after the training state of checkpoint 4 is written into its `.partial`
# folder, before the folder is renamed: the last instant a crash can leave a complete-looking but unfinished folder.
KILLED_MID_CHECKPOINT = """
import os, runpy, signal, sys
from pathlib import Path
import torch
save = torch.save
def save_then_die(obj, path, *args, **kwargs):
    save(obj, path, *args, **kwargs)
    if Path(path).parent.name == "00000004.partial":
        os.kill(os.getpid(), signal.SIGKILL)
torch.save = save_then_die
sys.argv = ["adapt", *sys.argv[1:]]
runpy.run_module("simvlg_video.adapt", run_name="__main__")
"""


def assert_same_end(resumed: Path, uninterrupted: Path) -> None:
    final = f"checkpoints/{STEPS:08d}/trainable.safetensors"
    expected, got = load_file(uninterrupted / final), load_file(resumed / final)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), f"{name} differs after resume"
    assert train_losses(resumed) == train_losses(uninterrupted)
    assert sorted(train_losses(resumed)) == list(range(1, STEPS + 1))
    assert (resumed / "model" / "weights.safetensors").is_file()


@pytest.mark.slow
def test_killed_while_writing_a_checkpoint(uninterrupted: Path, tiny_model_dir: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_MID_CHECKPOINT, *adapt_args(tiny_model_dir, run_dir)],
        cwd=tmp_path,
        env=command_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    partial = run_dir / "checkpoints" / "00000004.partial"
    assert (partial / "training_state.pt").is_file() and not (run_dir / "checkpoints" / "00000004").exists()

    result = run_module("simvlg_video.adapt", *adapt_args(tiny_model_dir, run_dir, "resume=auto"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "00000002 at step 2" in result.stdout  # Hydra's log goes to stdout
    assert [r["step"] for r in records(run_dir, "resume")] == [2]
    assert_same_end(run_dir, uninterrupted)

    again = run_module("simvlg_video.adapt", *adapt_args(tiny_model_dir, run_dir, "resume=auto"), cwd=tmp_path)
    assert again.returncode == 0 and "already finished" in again.stdout  # a resumed sweep skips finished jobs
    assert len(records(run_dir, "summary")) == 1


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_killed_at_a_random_step(uninterrupted: Path, tiny_model_dir: Path, tmp_path: Path, seed: int):
    """Killed at a seeded random moment of training (once the log shows step k: mid-step, in a checkpoint write or
    logging, wherever the process happens to be), after the first checkpoint and before the run's end."""
    run_dir = tmp_path / "run"
    kill_step = random.Random(seed).randint(3, STEPS - 1)

    def reached() -> bool:
        log = run_dir / "metrics.jsonl"
        return log.is_file() and f'"step": {kill_step},' in log.read_text()

    kill_when(adapt_args(tiny_model_dir, run_dir), tmp_path, reached)
    assert reached() and not records(run_dir, "summary"), "the kill did not land during training"
    # at least one complete checkpoint (which: how far the run got past step k before the signal, on a busy machine)
    assert any(folder.name.isdigit() for folder in (run_dir / "checkpoints").iterdir())

    result = run_module("simvlg_video.adapt", *adapt_args(tiny_model_dir, run_dir, "resume=auto"), cwd=tmp_path)
    assert result.returncode == 0, f"killed after step {kill_step}: {result.stderr[-3000:]}"
    assert_same_end(run_dir, uninterrupted)


@pytest.mark.slow
def test_a_run_that_only_produces_nan_stops_with_its_last_good_state(tiny_model_dir: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    # An absurd learning rate: after one step every activation overflows and every later loss is NaN.
    result = run_module(
        "simvlg_video.adapt",
        *adapt_args(tiny_model_dir, run_dir, "train.lr=1e30", "train.warmup_steps=0", "train.max_nonfinite_in_a_row=3"),
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "3 steps in a row had a non-finite loss or gradient" in result.stderr
    assert "Saved that state as" in result.stderr and "Traceback" not in result.stderr
    saved = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert saved[-1] == "00000004", saved  # step 1 updated the weights, steps 2-4 were skipped
    weights = load_file(run_dir / "checkpoints" / "00000004" / "trainable.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values()), "the saved state is the last finite one"


def test_resuming_with_other_settings_is_refused_and_touches_nothing(uninterrupted: Path, tiny_model_dir: Path):
    before = {p: p.read_bytes() for p in uninterrupted.rglob("*") if p.is_file()}
    result = run_module(
        "simvlg_video.adapt",
        *adapt_args(tiny_model_dir, uninterrupted, "resume=auto", "train.lr=0.1"),
        cwd=uninterrupted.parent,
    )
    assert result.returncode != 0
    assert "other settings than its config.yaml:\n  train.lr: 0.001 -> 0.1\nresume with" in result.stderr
    after = {p: p.read_bytes() for p in uninterrupted.rglob("*") if p.is_file()}
    assert after == before and (uninterrupted / ".hydra" / "overrides.yaml") in after


def test_a_fresh_run_into_a_directory_with_checkpoints_is_refused(
    uninterrupted: Path, tiny_model_dir: Path, tmp_path: Path
):
    result = run_module("simvlg_video.adapt", *adapt_args(tiny_model_dir, uninterrupted), cwd=tmp_path)
    assert result.returncode != 0
    assert "already holds checkpoints; continue it with resume=auto" in result.stderr


class TouchOnLoad:
    """An object whose unpickling creates a file: what a crafted training_state.pt could hold."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.mark.slow
def test_a_crafted_training_state_is_refused_on_resume_and_nothing_runs(tiny_model_dir: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    short = ("train.steps=3", "train.checkpoint_every=1")
    result = run_module("simvlg_video.adapt", *adapt_args(tiny_model_dir, run_dir, *short), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    crafted = run_dir / "checkpoints" / "00000002" / "training_state.pt"
    marker = tmp_path / "touched"
    torch.save({**torch.load(crafted, weights_only=True), "extra": TouchOnLoad(marker)}, crafted)
    last = {p: p.read_bytes() for p in (run_dir / "checkpoints" / "00000003").iterdir()}

    resumed = run_module(
        "simvlg_video.adapt",
        *adapt_args(tiny_model_dir, run_dir, *short, f"resume={crafted.parent}"),
        cwd=tmp_path,
    )
    assert resumed.returncode != 0
    lines = resumed.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: {crafted} holds objects besides tensors") and "Traceback" not in resumed.stderr
    assert not marker.exists()
    assert {p: p.read_bytes() for p in (run_dir / "checkpoints" / "00000003").iterdir()} == last  # no step ran
