"""What a resume may change: the keys of RESUME_MAY_CHANGE, named on the command line, take effect from the
checkpoint's step on (the restored optimiser and schedule hold the old learning rate); anything else is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from simvlg_video.train.config import TrainConfig
from simvlg_video.train.resume import ResumeRefused, check_same_config
from simvlg_video.train.session import Session


def run_config(**train) -> OmegaConf:
    return OmegaConf.create({"seed": 0, "resume": None, "train": {"lr": 1e-3, "weight_decay": 0.05, **train}})


def test_a_resume_changes_only_named_changeable_keys(tmp_path: Path):
    OmegaConf.save(run_config(), tmp_path / "config.yaml")
    resumed = run_config(lr=1e-4)
    resumed.resume = "auto"
    assert check_same_config(resumed, tmp_path, named={"resume", "train.lr"}) == {"train.lr": (1e-3, 1e-4)}

    with pytest.raises(ResumeRefused, match=r"other settings than its config.yaml:\n  train.lr: 0.001 -> 0.0001\n"):
        check_same_config(resumed, tmp_path, named={"resume"})  # not named: a default that differs from the run's

    other = run_config(lr=1e-4, weight_decay=0.1)
    with pytest.raises(ResumeRefused, match=r"\n  train.weight_decay: 0.05 -> 0.1\nresume with") as refused:
        check_same_config(other, tmp_path, named={"train.lr", "train.weight_decay"})
    assert "train.lr:" not in str(refused.value)  # the named changeable key is not among the refused


def test_a_run_configured_before_the_worker_count_moved_to_data_resumes(tmp_path: Path):
    """Its config.yaml holds `train.num_workers`; the same count under `data.num_workers` is the same run."""
    OmegaConf.save(
        OmegaConf.create({"train": {"lr": 1e-3, "num_workers": 2}, "data": {"num_frames": 4}}), tmp_path / "config.yaml"
    )
    same = OmegaConf.create({"train": {"lr": 1e-3}, "data": {"num_frames": 4, "num_workers": 2}})
    assert check_same_config(same, tmp_path) == {}
    other = OmegaConf.create({"train": {"lr": 1e-3}, "data": {"num_frames": 4, "num_workers": 1}})
    with pytest.raises(ResumeRefused, match=r"\n  data.num_workers: 2 -> 1\n"):
        check_same_config(other, tmp_path)


def create_session(lr: float, min_lr: float | None = None) -> Session:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    settings = TrainConfig(steps=10, lr=lr, warmup_steps=2, warmup_start_lr=1e-6, min_lr=min_lr)
    return Session.create(model, settings)


def test_a_changed_learning_rate_takes_effect_from_the_restored_step():
    saved = create_session(lr=1e-2, min_lr=1e-3)
    for _ in range(4):
        saved.optimizer.step()
        saved.scheduler.step()
    saved.guard.update(torch.tensor(True), step=4)
    state, optimizer_state = saved.state_dict(), saved.optimizer.state_dict()

    resumed = create_session(lr=1e-4, min_lr=1e-5)
    resumed.optimizer.load_state_dict(optimizer_state)
    resumed.load_state_dict(state)
    assert resumed.optimizer.param_groups[0]["lr"] == saved.optimizer.param_groups[0]["lr"]  # the checkpoint's
    resumed.set_learning_rate(1e-4, 1e-5)

    expected = create_session(lr=1e-4, min_lr=1e-5)
    for _ in range(4):
        expected.optimizer.step()  # no gradients: only the schedule moves
        expected.scheduler.step()
    for _ in range(6):
        assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(expected.optimizer.param_groups[0]["lr"])
        for session in (resumed, expected):
            session.optimizer.step()
            session.scheduler.step()
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)  # the new end of the schedule
    assert resumed.guard.state_dict() == {"skipped": 1, "current_run": 0, "longest_run": 0}
