"""What torchrun's processes add to the user's overrides: one run directory for every process, node and restart
of a launch, and `resume=auto` once the agent has restarted them."""

from __future__ import annotations

import pytest

from simvlg_video.errors import UsageError
from simvlg_video.train.launch import launch_arguments
from simvlg_video.world import world_from_env


def torchrun_env(monkeypatch: pytest.MonkeyPatch, rank: int, restart: int, run_id: str) -> None:
    for key, value in {
        "RANK": rank,
        "LOCAL_RANK": rank,
        "WORLD_SIZE": 2,
        "TORCHELASTIC_RESTART_COUNT": restart,
        "TORCHELASTIC_RUN_ID": run_id,
    }.items():
        monkeypatch.setenv(key, str(value))


def test_a_restarted_process_continues_the_run_in_the_launchs_directory(monkeypatch: pytest.MonkeyPatch):
    torchrun_env(monkeypatch, rank=1, restart=1, run_id="job42")
    assert launch_arguments(["resume=null", "train.lr=0.1"], world_from_env()) == [
        "resume=auto",
        "hydra.output_subdir=null",
        "hydra.run.dir=runs/job42",
        "hydra.sweep.dir=multirun/job42",
        "hydra.job.name=adapt_rank1",
        "train.lr=0.1",
    ]


def test_the_first_attempt_keeps_the_users_choices(monkeypatch: pytest.MonkeyPatch):
    torchrun_env(monkeypatch, rank=0, restart=0, run_id="job42")
    given = ["hydra.run.dir=/shared/run", "train.lr=0.1"]
    assert launch_arguments(given, world_from_env()) == ["hydra.sweep.dir=multirun/job42", *given]


def test_without_a_run_id_the_run_directory_must_be_given(monkeypatch: pytest.MonkeyPatch):
    torchrun_env(monkeypatch, rank=0, restart=0, run_id="none")  # torchrun's value when --rdzv-id is left out
    with pytest.raises(UsageError, match=r"give hydra\.run\.dir=PATH"):
        launch_arguments(["train.lr=0.1"], world_from_env())
    assert launch_arguments(["hydra.run.dir=/shared/run"], world_from_env()) == [
        "hydra.sweep.dir=/shared/run",
        "hydra.run.dir=/shared/run",
    ]
