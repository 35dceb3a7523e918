"""Checkpoints: complete or invisible, pruned to the last K plus the best, and a load restores the exact state."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from simvlg_video.train.checkpoint import STATE, CheckpointError, Checkpoints
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


def test_a_rank_the_checkpoint_did_not_have_gets_the_tensors_and_rng_streams_of_its_own(tmp_path: Path):
    """A checkpoint of one process loaded by rank 1 of 2: the same tensors and optimiser state; no saved state of
    its own, and RNG streams seeded from (seed, step, rank): the same on every such resume, not rank 0's."""
    model, optimizer = trained(seed=0)
    folder = save(Checkpoints(tmp_path, seed=5), 3, model, optimizer)
    draws = {}
    for rank in (0, 1, 1, 2):
        other, other_optimizer = trained(seed=1)
        state, mine = Checkpoints(tmp_path, world=World(rank=rank, world_size=3), seed=5).load(
            folder, other, other_optimizer
        )
        assert state["world_size"] == 1 and (mine is None) == (rank > 0)
        assert torch.equal(other.head.weight, model.head.weight)
        assert torch.equal(
            other_optimizer.state[other.head.weight]["exp_avg"], optimizer.state[model.head.weight]["exp_avg"]
        )
        drawn = (torch.rand(3), random.random(), np.random.rand())
        assert rank not in draws or all(np.array_equal(a, b) for a, b in zip(drawn, draws[rank])), rank
        draws[rank] = drawn
    assert not torch.equal(draws[1][0], draws[0][0]) and not torch.equal(draws[1][0], draws[2][0])
    assert draws[1][1:] != draws[2][1:]


def test_a_checkpoint_of_another_model_is_refused(tmp_path: Path):
    model, optimizer = trained()
    folder = save(Checkpoints(tmp_path), 1, model, optimizer)
    model.head = nn.Linear(3, 2, bias=False)
    with pytest.raises(CheckpointError, match=r"does not fit the model:\n  unexpected: head.bias"):
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
        CheckpointError,
        match=r"training_state\.pt holds objects besides tensors \(\S+\), which this toolkit never unpickles.*"
        "resume from a checkpoint this version wrote",
    ):
        checkpoints.load(folder, other, other_optimizer)
    assert not marker.exists()
    torch.save(state, folder / STATE)  # the same checkpoint without the object loads
    checkpoints.load(folder, other, other_optimizer)
    assert torch.equal(other.head.weight, weights_before)


def fd_path(descriptor: int) -> Path:
    return Path(os.readlink(f"/proc/self/fd/{descriptor}"))


def test_a_new_checkpoint_is_on_the_disk_before_an_older_one_goes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Every file and the folder are fsynced before the rename, the rename is fsynced (checkpoints/ after the new
    folder has its final name), and only then is the older checkpoint removed."""
    checkpoints = Checkpoints(tmp_path, keep_last=1)
    model, optimizer = trained()
    save(checkpoints, 2, model, optimizer)
    final = tmp_path / "checkpoints" / "00000004"
    events: list[tuple[str, str, bool]] = []
    fsync, rmtree = os.fsync, shutil.rmtree
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", str(fd_path(fd)), final.exists())), fsync(fd)))
    monkeypatch.setattr(
        shutil, "rmtree", lambda path, **kw: (events.append(("rmtree", str(path), True)), rmtree(path, **kw))
    )
    save(checkpoints, 4, model, optimizer)
    partial = f"{final}.partial"
    synced_before_rename = {path for kind, path, renamed in events if kind == "fsync" and not renamed}
    assert {f"{partial}/trainable.safetensors", f"{partial}/training_state.pt", partial} <= synced_before_rename
    removed = [index for index, (kind, path, _) in enumerate(events) if kind == "rmtree" and "00000002" in path]
    rename_synced = events.index(("fsync", str(tmp_path / "checkpoints"), True))
    assert removed and rename_synced < removed[0], events
    assert [p.name for p in checkpoints.complete()] == ["00000004"]


def test_a_save_that_cannot_reach_the_disk_leaves_the_older_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The disk reports an I/O error while the new checkpoint's files are flushed: the save fails, the older
    checkpoint is still there and complete, and nothing looks like a complete new one."""
    checkpoints = Checkpoints(tmp_path, keep_last=1)
    model, optimizer = trained()
    save(checkpoints, 2, model, optimizer)
    fsync = os.fsync

    def failing_fsync(descriptor: int) -> None:
        if fd_path(descriptor).parent.name == "00000004.partial":
            raise OSError(errno.EIO, "Input/output error")
        fsync(descriptor)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        save(checkpoints, 4, model, optimizer)
    assert [p.name for p in checkpoints.complete()] == ["00000002"]
    other, other_optimizer = trained(seed=1)
    checkpoints.load(checkpoints.latest(), other, other_optimizer)
    assert torch.equal(other.head.weight, model.head.weight)


def damage(folder: Path, how: str) -> None:
    """What a power loss leaves of an unsynced file: nothing, or its first part."""
    name, cut = how.split(":")
    path = folder / name
    data = path.read_bytes()
    path.write_bytes(b"" if cut == "empty" else data[: len(data) // 2])


DAMAGE = [
    "trainable.safetensors:empty",
    "trainable.safetensors:half",
    "training_state.pt:empty",
    "training_state.pt:half",
]


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_newest_checkpoint_is_reported_and_the_one_before_is_restored(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
):
    checkpoints = Checkpoints(tmp_path, keep_last=3)
    for seed, step in enumerate((2, 4)):
        model, optimizer = trained(seed=seed)
        save(checkpoints, step, model, optimizer)
    good, _ = trained(seed=0)
    damage(tmp_path / "checkpoints" / "00000004", how)

    other, other_optimizer = trained(seed=5)
    path, state, mine = checkpoints.restore(checkpoints.newest_first(), other, other_optimizer)
    assert path.name == "00000002" and state["step"] == 2 and mine["position"] == 20
    assert torch.equal(other.head.weight, good.head.weight)
    damaged = str(tmp_path / "checkpoints" / "00000004" / how.split(":")[0])
    assert f"cannot resume from {tmp_path / 'checkpoints' / '00000004'}: {damaged}" in caplog.text

    damage(tmp_path / "checkpoints" / "00000002", how)
    with pytest.raises(
        CheckpointError, match=r"no checkpoint in .* can be resumed from:\n  .*00000004.*\n  .*00000002"
    ):
        checkpoints.restore(checkpoints.newest_first(), other, other_optimizer)


def test_newer_checkpoints_are_set_aside_not_deleted(tmp_path: Path):
    checkpoints = Checkpoints(tmp_path, keep_last=3)
    model, optimizer = trained()
    save(checkpoints, 2, model, optimizer, best={"metric": "CIDEr", "value": 0.5})
    save(checkpoints, 4, model, optimizer)
    save(checkpoints, 6, model, optimizer, best={"metric": "CIDEr", "value": 0.9})
    moved_to = checkpoints.set_aside_newer(tmp_path / "checkpoints" / "00000002")
    assert moved_to.parent == tmp_path / "checkpoints" / "abandoned"
    assert sorted(p.name for p in moved_to.iterdir()) == ["00000004", "00000006"]
    assert [p.name for p in checkpoints.complete()] == ["00000002"]
    checkpoints.record_best({"step": 2, "metric": "CIDEr", "value": 0.5})
    assert checkpoints.best() == {"step": 2, "metric": "CIDEr", "value": 0.5}
    save(checkpoints, 4, model, optimizer)  # the new branch's own step 4 beside the set-aside one
    assert (moved_to / "00000004" / "trainable.safetensors").is_file()
    assert checkpoints.set_aside_newer(tmp_path / "checkpoints" / "00000004") is None


def restore_on_rank(rank: int, folder: str, port: int) -> None:
    """One of two gloo processes: save checkpoints 2 and 4, then restore with rank 1 alone unable to use 4."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    checkpoints = Checkpoints(Path(folder), world=World(rank=rank, world_size=2), keep_last=3)
    model, optimizer = trained()
    for step in (2, 4):
        checkpoints.save(step, model, optimizer, {"note": step}, {"position": step * 10 + rank})

    def restore_local(state: dict, mine: dict) -> None:
        if rank == 1 and state["step"] == 4:
            raise ValueError(f"data position {mine['position']} does not fit this rank's data")

    path, _, mine = checkpoints.restore(checkpoints.newest_first(), model, optimizer, restore_local)
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps([path.name, mine["position"]]))
    dist.destroy_process_group()


def test_every_rank_continues_from_the_same_checkpoint(tmp_path: Path):
    """A checkpoint one rank cannot use is skipped by all of them: the ranks agree before any is applied."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.multiprocessing.spawn(restore_on_rank, args=(str(tmp_path), port), nprocs=2)
    chosen = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert chosen == [["00000002", 20], ["00000002", 21]]
