"""A run killed with SIGKILL at any moment, or left with a damaged newest checkpoint, and continued with resume=auto
ends exactly where an uninterrupted run ends: trainable weights bit-identical (CPU, fp32) and the same loss at every
logged step. Also: resuming an older checkpoint, what a resume may change, the guard's advice, evaluate's files."""

from __future__ import annotations

import json
import math
import random
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from adapt_runs import TINY_RUN, command_env, records, run_module, train_losses
from omegaconf import OmegaConf
from safetensors.torch import load_file
from test_checkpoint import damage

STEPS = 8
# Dropout on and two loader workers: the RNG states and the data position must both come back exactly.
RESUMABLE = [
    *TINY_RUN,
    f"train.steps={STEPS}",
    "train.checkpoint_every=2",
    "train.log_every=1",
    "data.num_workers=2",
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


# Runs adapt and SIGKILLs itself right after the training state of checkpoint $KILL_AT is written into its `.partial`
# folder, before the folder is renamed: the last instant a crash can leave a complete-looking but unfinished folder.
KILLED_MID_CHECKPOINT = """
import os, runpy, signal, sys
from pathlib import Path
import torch
save = torch.save
def save_then_die(obj, path, *args, **kwargs):
    save(obj, path, *args, **kwargs)
    if Path(path).parent.name == os.environ["KILL_AT"] + ".partial":
        os.kill(os.getpid(), signal.SIGKILL)
torch.save = save_then_die
sys.argv = ["adapt", *sys.argv[1:]]
runpy.run_module("simvlg_video.adapt", run_name="__main__")
"""


def run_killed_writing(step: int, args: list[str], cwd: Path) -> None:
    """Run adapt and SIGKILL it while it writes checkpoint `step` (its training state written, the folder not yet
    renamed)."""
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_MID_CHECKPOINT, *args],
        cwd=cwd,
        env={**command_env(cwd), "KILL_AT": f"{step:08d}"},
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]


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
    run_killed_writing(4, adapt_args(tiny_model_dir, run_dir), tmp_path)
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
    """Settings a resume may not change are refused, each named, also when the command line names them."""
    before = {p: p.read_bytes() for p in uninterrupted.rglob("*") if p.is_file()}
    result = run_module(
        "simvlg_video.adapt",
        *adapt_args(tiny_model_dir, uninterrupted, "resume=auto", "train.weight_decay=0.1", "train.lr=0.1"),
        cwd=uninterrupted.parent,
    )
    assert result.returncode != 0
    assert "other settings than its config.yaml:\n  train.weight_decay: 0.05 -> 0.1\nresume with" in result.stderr
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
    assert "Traceback" not in resumed.stderr
    assert any(line.startswith("error: ") for line in lines)
    assert lines[-1].strip().startswith(f"{crafted} holds objects besides tensors")
    assert not marker.exists()
    assert {p: p.read_bytes() for p in (run_dir / "checkpoints" / "00000003").iterdir()} == last  # no step ran


@pytest.mark.slow
@pytest.mark.parametrize("how", ["trainable.safetensors:empty", "training_state.pt:half"])
def test_a_damaged_newest_checkpoint_is_reported_and_the_run_continues_from_the_one_before(
    uninterrupted: Path, tiny_model_dir: Path, tmp_path: Path, how: str
):
    """What a power loss can leave of files that were never flushed (nothing, or their first part): resume=auto names
    the damaged checkpoint, continues from the one before, and ends where the uninterrupted run ends."""
    run_dir = tmp_path / "run"
    run_killed_writing(6, adapt_args(tiny_model_dir, run_dir), tmp_path)  # complete: 2 and 4
    damage(run_dir / "checkpoints" / "00000004", how)

    result = run_module("simvlg_video.adapt", *adapt_args(tiny_model_dir, run_dir, "resume=auto"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    damaged = run_dir / "checkpoints" / "00000004"
    assert f"cannot resume from {damaged}: {damaged / how.split(':')[0]}" in result.stdout
    assert "00000002 at step 2" in result.stdout
    assert_same_end(run_dir, uninterrupted)
    set_aside = list((run_dir / "checkpoints" / "abandoned").glob("*/00000004"))
    assert len(set_aside) == 1 and (set_aside[0] / how.split(":")[0]).is_file()  # set aside, not deleted


@pytest.mark.slow
def test_resuming_an_older_checkpoint_sets_the_newer_ones_aside(
    uninterrupted: Path, tiny_model_dir: Path, tmp_path: Path
):
    """resume=PATH to an older checkpoint moves the newer ones aside (kept); a later resume=auto continues the new
    branch, not the abandoned one, and ends where the uninterrupted run ends."""
    run_dir = tmp_path / "run"
    args = adapt_args(tiny_model_dir, run_dir, "train.keep_checkpoints=3")
    run_killed_writing(8, args, tmp_path)  # complete: 2, 4, 6
    older = run_dir / "checkpoints" / "00000002"
    run_killed_writing(6, [*args, f"resume={older}"], tmp_path)  # the new branch writes its own 4, dies writing its 6
    abandoned = list((run_dir / "checkpoints" / "abandoned").iterdir())
    assert len(abandoned) == 1 and sorted(p.name for p in abandoned[0].iterdir()) == ["00000004", "00000006"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == ["00000002", "00000004"]
    assert records(run_dir, "resume")[0]["set_aside"] == str(abandoned[0])

    result = run_module("simvlg_video.adapt", *args, "resume=auto", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {run_dir / 'checkpoints' / '00000004'} at step 4" in result.stdout
    assert [r["step"] for r in records(run_dir, "resume")] == [2, 4]
    assert_same_end(run_dir, uninterrupted)
    assert (abandoned[0] / "00000006" / "trainable.safetensors").is_file()


@pytest.mark.slow
def test_the_guards_advice_followed_as_printed_finishes_the_run(tiny_model_dir: Path, tmp_path: Path):
    """The learning rate warms up from 1e-4 to 1e30: step 2 blows the weights up and every later step is non-finite,
    so the guard stops the run. Its saves prune nothing, and the first command it prints, with a rate of our
    choosing in place of its tenth of 1e30 (which would diverge too), continues from the last good checkpoint and
    finishes at the new rate; the stopped run's newer checkpoints are set aside, not deleted."""
    run_dir = tmp_path / "run"
    diverging = [
        "train.lr=1e30",
        "train.warmup_steps=8",
        "train.warmup_start_lr=1e-4",
        "train.checkpoint_every=1",
        "train.max_nonfinite_in_a_row=3",
    ]
    stopped = run_module("simvlg_video.adapt", *adapt_args(tiny_model_dir, run_dir, *diverging), cwd=tmp_path)
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    left = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert left == [f"{step:08d}" for step in range(1, 6)]  # keep_checkpoints=2, yet nothing was pruned
    advice = [line[2:] for line in stopped.stderr.splitlines() if line.startswith("  python -m simvlg_video.adapt ")]
    assert len(advice) == 2 and f"resume={run_dir / 'checkpoints' / '00000001'} train.lr=1e+29" in advice[0]

    command = shlex.split(advice[0].replace("train.lr=1e+29", "train.lr=0.001"))
    assert command[:3] == ["python", "-m", "simvlg_video.adapt"]
    resumed = run_module(command[2], *command[3:], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    train = records(run_dir, "train")
    assert [r["step"] for r in train] == list(range(1, STEPS + 1)) and all(math.isfinite(r["loss"]) for r in train)
    lrs = {r["step"]: r["lr"] for r in train}  # the warm-up now climbs from 1e-4 to 1e-3
    assert lrs[2] == pytest.approx(1e-4 + (1e-3 - 1e-4) * 2 / 8) and lrs[STEPS] == pytest.approx(1e-3)
    assert OmegaConf.load(run_dir / "config.yaml").train.lr == 1e-3
    assert records(run_dir, "resume")[-1]["changed"] == {"train.lr": [1e30, 1e-3]}
    set_aside = {p.name for p in (run_dir / "checkpoints" / "abandoned").glob("*/0*")}
    assert set_aside == set(left[1:])  # the stopped branch is kept; 1, resumed from, is pruned as the run moves on
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == ["00000007", "00000008"]


def test_evaluate_with_other_settings_leaves_the_runs_own_eval_files(uninterrupted: Path):
    own = {p.name: p.read_bytes() for p in (uninterrupted / "eval").iterdir()}
    result = run_module(
        "simvlg_video.evaluate", "--ckpt", str(uninterrupted), "eval.max_new_tokens=2", cwd=uninterrupted.parent
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert {name: (uninterrupted / "eval" / name).read_bytes() for name in own} == own
    written = json.loads((uninterrupted / "eval" / "test_eval.max_new_tokens=2_metrics.json").read_text())
    assert (
        written["settings"]["eval"]["max_new_tokens"] == 2
        and written["metrics"]["clips"] == json.loads(own["test_metrics.json"])["metrics"]["clips"]
    )
