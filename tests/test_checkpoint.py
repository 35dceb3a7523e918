"""Checkpoints: complete or invisible, pruned to the last K plus the best, and a load restores the exact state."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from simvlg_video.model.tensor_io import NotATensorFile
from simvlg_video.train.checkpoint import STATE, Checkpoints
from simvlg_video.train.optim import build_optimizer
from simvlg_video.world import World


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3, 2)
        self.frozen = nn.Linear(3, 3).requires_grad_(False)


def trained(seed: int = 0) -> tuple[Tiny, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = Tiny()
    optimizer = build_optimizer(model, lr=0.1)
    model.head(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return model, optimizer


def save(checkpoints: Checkpoints, step: int, model: Tiny, optimizer, best: dict | None = None) -> Path:
    return checkpoints.save(step, model, optimizer, {"note": step}, {"position": step * 10}, best=best)


def test_keeps_the_newest_and_the_best(tmp_path: Path):
    checkpoints = Checkpoints(tmp_path, keep_last=2)
    model, optimizer = trained()
    save(checkpoints, 2, model, optimizer, best={"metric": "CIDEr", "value": 0.9})
    for step in (4, 6, 8):
        save(checkpoints, step, model, optimizer)
    assert [p.name for p in checkpoints.complete()] == ["00000002", "00000006", "00000008"]
    assert checkpoints.best() == {"step": 2, "metric": "CIDEr", "value": 0.9}
    save(checkpoints, 10, model, optimizer, best={"metric": "CIDEr", "value": 1.1})
    assert [p.name for p in checkpoints.complete()] == ["00000008", "00000010"]


def test_half_written_and_half_deleted_folders_are_never_chosen(tmp_path: Path):
    checkpoints = Checkpoints(tmp_path)
    model, optimizer = trained()
    save(checkpoints, 4, model, optimizer)
    partial = tmp_path / "checkpoints" / "00000006.partial"
    partial.mkdir()
    (partial / "trainable.safetensors").write_bytes(b"trunc")
    (tmp_path / "checkpoints" / "00000009.deleting").mkdir()
    copied = tmp_path / "checkpoints" / "00000007"  # a folder that lost its state file
    copied.mkdir()
    (copied / "trainable.safetensors").write_bytes((checkpoints.latest() / "trainable.safetensors").read_bytes())
    assert checkpoints.latest().name == "00000004"
    save(checkpoints, 6, model, optimizer)  # rewriting a step replaces its leftover partial folder
    assert checkpoints.latest().name == "00000006" and not partial.exists()


def test_load_restores_tensors_optimiser_and_rng(tmp_path: Path):
    checkpoints = Checkpoints(tmp_path)
    model, optimizer = trained(seed=0)
    folder = save(checkpoints, 3, model, optimizer)
    expected_draw = torch.rand(5)
    expected_python, expected_numpy = random.random(), np.random.rand(3)
    expected_state = {k: v.clone() for k, v in optimizer.state[model.head.weight].items()}

    other, other_optimizer = trained(seed=1)
    frozen_before = other.frozen.weight.clone()
    state, mine = checkpoints.load(folder, other, other_optimizer)

    assert state["note"] == 3 and state["step"] == 3 and mine["position"] == 30
    assert torch.equal(other.head.weight, model.head.weight) and torch.equal(other.head.bias, model.head.bias)
    assert torch.equal(other.frozen.weight, frozen_before), "frozen tensors are not part of a checkpoint"
    for key, value in other_optimizer.state[other.head.weight].items():
        assert torch.equal(value, expected_state[key]), key
    assert torch.equal(torch.rand(5), expected_draw), "torch's RNG continues where the saved run was"
    assert random.random() == expected_python and np.array_equal(np.random.rand(3), expected_numpy)


def test_a_checkpoint_of_another_world_size_or_model_is_refused(tmp_path: Path):
    model, optimizer = trained()
    folder = save(Checkpoints(tmp_path), 1, model, optimizer)
    two = Checkpoints(tmp_path, world=World(rank=0, world_size=2))
    with pytest.raises(SystemExit, match=r"written by 1 processes.*got 2"):
        two.load(folder, model, optimizer)
    model.head = nn.Linear(3, 2, bias=False)
    with pytest.raises(SystemExit, match=r"missing \[\].*unexpected \['head.bias'\]"):
        Checkpoints(tmp_path).load(folder, model, optimizer)


class TouchOnLoad:
    """An object whose unpickling creates a file: what a crafted training_state.pt could hold instead."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_state_file_that_holds_other_objects_is_refused_and_runs_nothing(tmp_path: Path):
    checkpoints = Checkpoints(tmp_path)
    model, optimizer = trained()
    folder = save(checkpoints, 3, model, optimizer)
    state = torch.load(folder / STATE, weights_only=True)  # what this toolkit writes loads without unpickling
    marker = tmp_path / "touched"
    torch.save({**state, "extra": TouchOnLoad(marker)}, folder / STATE)
    weights_before = model.head.weight.clone()
    other, other_optimizer = trained(seed=1)
    with pytest.raises(
        NotATensorFile,
        match=r"training_state\.pt holds objects besides tensors \(\S+\), which this toolkit never unpickles.*"
        "resume from a checkpoint this version wrote",
    ):
        checkpoints.load(folder, other, other_optimizer)
    assert not marker.exists()
    torch.save(state, folder / STATE)  # the same checkpoint without the object loads
    checkpoints.load(folder, other, other_optimizer)
    assert torch.equal(other.head.weight, weights_before)
