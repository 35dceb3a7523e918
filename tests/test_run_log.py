"""The run log: JSON lines and TensorBoard scalars, with a killed run's records past its checkpoint dropped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from simvlg_video.train.run_log import RunLog
from simvlg_video.world import World


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_reach_both_the_jsonl_and_tensorboard(tmp_path: Path):
    log = RunLog(tmp_path)
    for step in (1, 2):
        log({"phase": "train", "step": step, "loss": 3.0 - step, "lr": 0.1, "grad_norm_spike": False})
    log({"phase": "val", "step": 2, "CIDEr": 0.5, "direction_acc": float("nan")})
    log.close()
    assert [r["step"] for r in lines(tmp_path / "metrics.jsonl")] == [1, 2, 2]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 2.0), (2, 1.0)]
    assert [e.value for e in events.Scalars("val/CIDEr")] == [0.5]
    assert (
        "val/direction_acc" not in events.Tags()["scalars"] and "train/grad_norm_spike" not in events.Tags()["scalars"]
    )


def test_resume_drops_records_past_the_checkpoint_and_marks_the_seam(tmp_path: Path):
    log = RunLog(tmp_path, tensorboard=False)
    log({"phase": "eval", "model": "image", "CIDEr": 0.1})
    for step in range(1, 6):
        log({"phase": "train", "step": step, "loss": 1.0})
    log({"phase": "val", "step": 4, "CIDEr": 0.2})
    RunLog(tmp_path, tensorboard=False, resume_step=3)({"phase": "train", "step": 4, "loss": 0.5})
    kept = lines(tmp_path / "metrics.jsonl")
    assert [(r["phase"], r.get("step")) for r in kept] == [
        ("eval", None),
        ("train", 1),
        ("train", 2),
        ("train", 3),
        ("resume", 3),
        ("train", 4),
    ]


def test_only_rank_zero_writes(tmp_path: Path):
    log = RunLog(tmp_path, world=World(rank=1, world_size=2))
    log({"phase": "train", "step": 1, "loss": 1.0})
    log.close()
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "tensorboard").exists()


def test_a_torn_last_line_is_dropped_but_damage_elsewhere_is_named(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"phase": "train", "step": 1, "loss": 1.0}\n{"phase": "train", "st')
    RunLog(tmp_path, tensorboard=False, resume_step=1)
    assert [r["phase"] for r in lines(path)] == ["train", "resume"]
    path.write_text('{"phase": "tr\n{"phase": "train", "step": 1, "loss": 1.0}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:1: not a JSON line"):
        RunLog(tmp_path, tensorboard=False, resume_step=1)
