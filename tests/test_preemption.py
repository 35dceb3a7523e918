"""Preemption, a dying process and several nodes, with the real commands (torchrun, gloo, CPU): a run stopped by
SIGTERM or SIGUSR1 saves, exits with its status and resumes into the uninterrupted run; a process killed under
`torchrun --max-restarts 1` is restarted into the same run directory and finishes it; two torchrun agents joined
over localhost as two nodes train as one process with the same global batch does. Dropout is off: its masks come
from each process's own RNG."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from adapt_runs import STEP_BY_STEP, TINY_RUN, command_env, records, train_losses
from safetensors.torch import load_file

STEPS = 4
INTERRUPTED = 75  # the documented exit status of a run stopped by a signal
RUN = [
    *(item for item in TINY_RUN if not item.startswith(("train.steps=", "train.batch_size="))),
    f"train.steps={STEPS}",
    "train.checkpoint_every=2",
    *STEP_BY_STEP,
]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]

# Runs adapt; on rank $SIGNAL_RANK of the first attempt it sends itself $SIGNAL (SIGTERM, SIGUSR1, SIGKILL) right
# after optimiser step $SIGNAL_AT, so the signal lands inside that step as a cluster's would.
SIGNALLING_ADAPT = """
import os, runpy, signal, sys
from simvlg_video.train import loop
step = loop._optimiser_step
taken = []
def step_then_signal(*args, **kwargs):
    out = step(*args, **kwargs)
    taken.append(1)
    if (
        os.environ.get("SIGNAL")
        and str(len(taken)) == os.environ["SIGNAL_AT"]
        and os.environ.get("RANK", "0") == os.environ["SIGNAL_RANK"]
        and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    ):
        os.kill(os.getpid(), getattr(signal, os.environ["SIGNAL"]))
    return out
loop._optimiser_step = step_then_signal
sys.argv = ["adapt", *sys.argv[1:]]
runpy.run_module("simvlg_video.adapt", run_name="__main__")
"""


def adapt(work: Path, launcher: list[str], *args: str, signal: str | None = None, at: int = 3, rank: int = 0):
    script = work / "signalling_adapt.py"
    script.write_text(SIGNALLING_ADAPT)
    env = {**command_env(work), "SIGNAL_AT": str(at), "SIGNAL_RANK": str(rank)}
    if signal is not None:
        env["SIGNAL"] = signal
    return subprocess.run(
        [*launcher, str(script), *args], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """The losses at every step and the trained tensors of the last checkpoint match the reference run's."""
    losses, expected = train_losses(run_dir), train_losses(reference)
    assert sorted(losses) == list(range(1, STEPS + 1)) == sorted(expected)
    for step in expected:
        assert abs(losses[step] - expected[step]) <= 1e-5, f"step {step}: {losses[step]} vs {expected[step]}"
    last = Path("checkpoints") / f"{STEPS:08d}" / "trainable.safetensors"
    want, got = load_file(reference / last), load_file(run_dir / last)
    assert want.keys() == got.keys()
    for key in want:
        assert (got[key] - want[key]).abs().max() <= 1e-5, key


@pytest.fixture(scope="module")
def work(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """(work folder, the run's settings), the uninterrupted one-process run (4 clips a step) in work/whole."""
    work = tmp_path_factory.mktemp("preemption")
    settings = ["--image-ckpt", str(tiny_model_dir), *RUN]
    whole = adapt(work, [sys.executable], *settings, "train.batch_size=4", f"hydra.run.dir={work / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-4000:]
    return work, settings


@pytest.mark.slow
def test_sigterm_saves_exits_75_and_resume_auto_finishes_the_same_run(work):
    work, settings = work
    run_dir = work / "sigterm"
    args = [*settings, "train.batch_size=4", f"hydra.run.dir={run_dir}"]
    stopped = adapt(work, [sys.executable], *args, signal="SIGTERM", at=3)
    assert stopped.returncode == INTERRUPTED, stopped.stderr[-4000:]
    assert "SIGTERM received: stopped after step 3 of 4" in stopped.stderr and "resume=auto" in stopped.stderr
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == ["00000002", "00000003"]
    marker = json.loads((run_dir / "interrupted.json").read_text())
    assert marker == {**records(run_dir, "stopped")[0], "step": 3, "signal": "SIGTERM"}
    assert [r["step"] for r in records(run_dir, "train")] == [1, 2, 3] and not records(run_dir, "summary")

    resumed = adapt(work, [sys.executable], *args, "resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert records(run_dir, "resume")[-1]["step"] == 3 and not (run_dir / "interrupted.json").exists()
    assert_same_run(run_dir, work / "whole")


@pytest.mark.slow
def test_a_global_batch_that_cannot_be_kept_is_refused_at_once(work):
    """Killed in step 3 (checkpoint 2 is complete); train.batch_size=3 cannot cut the run's global batch of 4 into
    micro-batches: one line naming the numbers, not a checkpoint reported as unusable."""
    work, settings = work
    run_dir = work / "refused"
    args = [*settings, "train.batch_size=4", f"hydra.run.dir={run_dir}"]
    killed = adapt(work, [sys.executable], *args, signal="SIGKILL", at=3)
    assert killed.returncode == -9 and (run_dir / "checkpoints" / "00000002").is_dir()
    refused = adapt(work, [sys.executable], *args, "resume=auto", "train.batch_size=3")
    assert refused.returncode == 2
    assert f"error: cannot resume {run_dir}: the run's global batch of 4 clips is not a whole number" in refused.stderr
    assert "no checkpoint in" not in refused.stderr and not records(run_dir, "resume")


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(work):
    """SIGUSR1 reaches rank 1 alone (as a signal sent to one node would): both ranks save step 3 and stop."""
    work, settings = work
    run_dir = work / "sigusr1"
    launcher = [*TORCHRUN, "--standalone", "--nproc_per_node", "2"]
    args = [*settings, "train.batch_size=2", f"hydra.run.dir={run_dir}"]
    stopped = adapt(work, launcher, *args, signal="SIGUSR1", at=3, rank=1)
    assert stopped.returncode != 0  # torchrun's own status: 1 whatever its workers' were
    assert f"exitcode: {INTERRUPTED}" in stopped.stderr, stopped.stderr[-4000:]
    assert json.loads((run_dir / "interrupted.json").read_text())["step"] == 3
    assert [r["step"] for r in records(run_dir, "train")] == [1, 2, 3]
    resumed = adapt(work, launcher, *args, "resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert_same_run(run_dir, work / "whole")


@pytest.mark.slow
def test_a_killed_rank_is_restarted_by_torchrun_and_the_run_finishes(work):
    """Rank 1 SIGKILLs itself in step 3 of the first attempt; torchrun restarts both ranks, which continue the run
    from checkpoint 2 in the directory the first attempt chose (runs/<torchrun's run id>, none given)."""
    work, settings = work
    launcher = [*TORCHRUN, "--standalone", "--nproc_per_node", "2", "--max-restarts", "1"]
    finished = adapt(work, launcher, *settings, "train.batch_size=2", signal="SIGKILL", at=3, rank=1)
    assert finished.returncode == 0, finished.stderr[-4000:]
    [run_dir] = (work / "runs").iterdir()
    assert "torchrun restart 1: continuing the run from its newest checkpoint" in finished.stderr
    assert records(run_dir, "resume")[-1]["step"] == 2
    assert_same_run(run_dir, work / "whole")


@pytest.mark.slow
def test_two_single_process_nodes_over_localhost_train_as_one_process(work):
    """Two torchrun agents, one process each, rendezvous over 127.0.0.1 as two nodes (c10d)."""
    work, settings = work
    run_dir = work / "two_nodes"
    port = free_port()
    launcher = [*TORCHRUN, "--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d"]
    launcher += ["--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two_nodes"]
    args = [*settings, "train.batch_size=2", f"hydra.run.dir={run_dir}"]
    script = work / "signalling_adapt.py"
    script.write_text(SIGNALLING_ADAPT)
    env = {**command_env(work), "SIGNAL_AT": "0", "SIGNAL_RANK": "0"}
    nodes = [
        subprocess.Popen(
            [*launcher, str(script), *args],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    assert records(run_dir, "summary")[0]["world_size"] == 2
    assert_same_run(run_dir, work / "whole")
