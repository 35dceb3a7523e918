"""A run killed with SIGKILL at any moment and continued with resume=auto ends exactly where an uninterrupted run
ends: trainable weights bit-identical (CPU, fp32) and the same loss at every logged step."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
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


# Runs a command (`python -c KILLED_AT_A_STEP MODULE ARGS...`) that SIGKILLs itself at a step, placed by the process
# itself, never by a parent polling its files: KILL_AT_STEP=N:logged dies right after step N's train record is in
# metrics.jsonl (before that step's checkpoint is written), N:saved right after step N ends, its checkpoint complete.
KILLED_AT_A_STEP = """
import os, runpy, signal, sys
from simvlg_video.train import loop
kill_step, moment = os.environ["KILL_AT_STEP"].split(":")
fit = loop.fit
def die_after(step, at):
    if (step, at) == (int(kill_step), moment):
        os.kill(os.getpid(), signal.SIGKILL)
def fit_that_dies(*args, hooks, **kwargs):
    def on_log(record):
        hooks.on_log(record)
        die_after(record["step"], "logged")
    def on_step_end(step):
        hooks.on_step_end(step)
        die_after(step, "saved")
    return fit(*args, hooks=loop.Hooks(on_log, on_step_end), **kwargs)
loop.fit = fit_that_dies  # before the trainer imports it
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__")
"""


def run_killed_at(args: list[str], cwd: Path, step: int, moment: str, module: str = "simvlg_video.adapt") -> None:
    """Run `module` (adapt) with `args` until it SIGKILLs itself at `step` (`moment`: logged or saved)."""
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_AT_A_STEP, module, *args],
        cwd=cwd,
        env={**command_env(cwd), "KILL_AT_STEP": f"{step}:{moment}"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]


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
@pytest.mark.parametrize(("seed", "moment"), [(0, "saved"), (1, "logged")])
def test_killed_at_a_random_step(uninterrupted: Path, tiny_model_dir: Path, tmp_path: Path, seed: int, moment: str):
    """Killed at a seeded random step k of training, after the first checkpoint and before the run's end: once step
    k's checkpoint is complete, or once step k is logged and before its checkpoint (the resumed run then trains
    again the steps the killed one had done past its last checkpoint)."""
    run_dir = tmp_path / "run"
    kill_step = random.Random(seed).randint(3, STEPS - 1)
    run_killed_at(adapt_args(tiny_model_dir, run_dir), tmp_path, kill_step, moment)
    assert max(train_losses(run_dir)) == kill_step and not records(run_dir, "summary")
    last_saved = kill_step if moment == "saved" else kill_step - 1
    resumed_from = last_saved - last_saved % 2  # train.checkpoint_every=2

    result = run_module("simvlg_video.adapt", *adapt_args(tiny_model_dir, run_dir, "resume=auto"), cwd=tmp_path)
    assert result.returncode == 0, f"killed after step {kill_step}: {result.stderr[-3000:]}"
    assert [r["step"] for r in records(run_dir, "resume")] == [resumed_from]
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
