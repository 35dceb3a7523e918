"""A run continues on another number of processes (torchrun, gloo, CPU): 2 processes killed after step 1 and
resumed on 1 and on 3, under DDP and under FSDP, train at every step on the clips of the uninterrupted run's step
and end within 1e-5 of its losses and 0.3% of each weight tensor's norm. Dropout is off: its masks come from each
process's own RNG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from adapt_runs import STEP_BY_STEP, TINY_RUN, command_env, records, train_losses
from safetensors.torch import load_file

STEPS = 4
GLOBAL_BATCH = 6  # 3 clips x 2 processes; 12 training clips: 2 steps an epoch, so step 1 ends mid-epoch
RUN = [
    *(item for item in TINY_RUN if not item.startswith(("data.synthetic.num_clips=", "train.steps=", "train.batch"))),
    "data.synthetic.num_clips=36",
    f"train.steps={STEPS}",
    "train.batch_size=3",
    "train.checkpoint_every=1",
    *STEP_BY_STEP,
]

# Runs adapt, appending (epoch, clip index) of every training clip it hands out to $CLIP_LOG.<rank>, and SIGKILLs
# itself on every rank once checkpoint $KILL_AFTER is complete.
RECORDING_ADAPT = """
import json, os, runpy, signal, sys
from simvlg_video.train import batches, checkpoint
clips = open(os.environ["CLIP_LOG"] + "." + os.environ.get("RANK", "0"), "a")
generator = batches.clip_generator
def recording(seed, *key):
    clips.write(json.dumps(key) + "\\n")
    clips.flush()
    return generator(seed, *key)
batches.clip_generator = recording
save = checkpoint.Checkpoints.save
def save_then_die(self, step, *args, **kwargs):
    folder = save(self, step, *args, **kwargs)
    if str(step) == os.environ.get("KILL_AFTER"):
        os.kill(os.getpid(), signal.SIGKILL)
    return folder
checkpoint.Checkpoints.save = save_then_die
sys.argv = ["adapt", *sys.argv[1:]]
runpy.run_module("simvlg_video.adapt", run_name="__main__")
"""


def adapt(work: Path, name: str, processes: int, *extra: str, kill_after: int | None = None):
    """Run adapt on `processes` processes (torchrun beyond one) into work/run_<name>'s shared run directory,
    logging its clips to work/clips_<name>.<rank>."""
    script = work / "recording_adapt.py"
    script.write_text(RECORDING_ADAPT)
    launcher = [sys.executable]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    env = {**command_env(work), "CLIP_LOG": str(work / f"clips_{name}")}
    if kill_after is not None:
        env["KILL_AFTER"] = str(kill_after)
    return subprocess.run(
        [*launcher, str(script), *extra], cwd=work, env=env, capture_output=True, text=True, timeout=900
    )


def steps_of(work: Path, name: str, processes: int, first_step: int, clips_per_step: int) -> dict[int, set]:
    """{step: the (epoch, clip) pairs all processes of attempt `name` trained on}, each process's log cut into steps
    of `clips_per_step`."""
    steps: dict[int, set] = {}
    for rank in range(processes):
        clips = [tuple(json.loads(line)) for line in (work / f"clips_{name}.{rank}").read_text().splitlines()]
        for offset in range(0, len(clips), clips_per_step):
            steps.setdefault(first_step + offset // clips_per_step, set()).update(
                clips[offset : offset + clips_per_step]
            )
    return steps


@pytest.fixture(scope="module", params=["ddp", "fsdp"])
def uninterrupted(request, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """(work folder, the run's settings, strategy), the 2-process run through in work/whole."""
    strategy = request.param
    work = tmp_path_factory.mktemp(f"any_world_{strategy}")
    settings = ["--image-ckpt", str(tiny_model_dir), *RUN, f"train.strategy={strategy}"]
    whole = adapt(work, "whole", 2, *settings, f"hydra.run.dir={work / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-4000:]
    return work, settings, strategy


@pytest.mark.slow
@pytest.mark.parametrize(("processes", "batch_size", "accumulation"), [(1, 3, 2), (3, 2, 1)])
def test_a_run_resumed_on_another_number_of_processes_is_the_same_run(
    uninterrupted, processes: int, batch_size: int, accumulation: int
):
    """Killed on both processes once checkpoint 1 is complete, resumed on `processes` with `batch_size` (on 3, the
    run's 3 cannot keep the global batch of 6: refused, naming the numbers, then train.batch_size=2 is named)."""
    work, settings, strategy = uninterrupted
    name = f"on{processes}"
    run_dir = work / name
    killed = adapt(work, f"killed_{name}", 2, *settings, f"hydra.run.dir={run_dir}", kill_after=1)
    assert killed.returncode != 0 and not records(run_dir, "summary")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["00000001"]
    if batch_size != 3 and strategy == "ddp":
        refused = adapt(work, "refused", processes, *settings, f"hydra.run.dir={run_dir}", "resume=auto")
        assert refused.returncode != 0 and f"error: cannot resume {run_dir}: " in refused.stderr  # at once
        assert "no checkpoint in" not in refused.stderr  # not a damaged checkpoint: older ones are not tried
        assert (
            "the run's global batch of 6 clips is not a whole number of micro-batches of train.batch_size=3 on each "
            "of 3 process(es): it continues on 1 or 2 process(es) with that batch size; on 3 with "
            "train.batch_size=1 or 2"
        ) in refused.stderr
        assert not records(run_dir, "resume") and not (work / "clips_refused.0").read_text()
    extra = [f"train.batch_size={batch_size}"] if batch_size != 3 else []
    resumed = adapt(work, name, processes, *settings, f"hydra.run.dir={run_dir}", "resume=auto", *extra)
    assert resumed.returncode == 0, resumed.stderr[-4000:]

    whole = steps_of(work, "whole", 2, 1, 3)
    assert sorted(whole) == list(range(1, STEPS + 1)) and all(len(clips) == GLOBAL_BATCH for clips in whole.values())
    assert {epoch for epoch, _ in whole[STEPS]} == {1}
    assert steps_of(work, f"killed_{name}", 2, 1, 3) == {1: whole[1]}
    again = steps_of(work, name, processes, 2, batch_size * accumulation)
    assert again == {step: whole[step] for step in range(2, STEPS + 1)}, "other clips at some step"

    expected = load_file(work / "whole" / "checkpoints" / f"{STEPS:08d}" / "trainable.safetensors")
    got = load_file(run_dir / "checkpoints" / f"{STEPS:08d}" / "trainable.safetensors")
    assert expected.keys() == got.keys()
    losses, expected_losses = train_losses(run_dir), train_losses(work / "whole")
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert all(abs(losses[step] - expected_losses[step]) <= 1e-5 for step in losses)
    for key in expected:
        # Adam scales each coordinate's update by that coordinate's own gradient: where a gradient sits at rounding
        # level (the pool's attention behind its zero-initialised gate), reduction order can move a weight by up to
        # lr (1e-3) either way. So tensors are compared as wholes: a lost optimiser state moves every coordinate.
        assert (got[key] - expected[key]).norm() <= 3e-3 * expected[key].norm() + 1e-6, key

    seam = records(run_dir, "resume")[-1]
    assert seam["step"] == 1 and seam["processes"] == [2, processes]
    assert seam.get("accumulation") == ([1, accumulation] if accumulation != 1 else None)
    log = (run_dir / "adapt.log").read_text()
    assert f"global batch: 6 clips per step ({batch_size} per process x {accumulation} accumulation" in log
    assert "accumulation: 1\n" in (run_dir / "config.yaml").read_text()  # the run's own setting
