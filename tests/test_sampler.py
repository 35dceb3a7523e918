"""The training clip order: the same data at the same step whatever the number of processes, and mid-epoch resume,
also on another number of processes."""

from __future__ import annotations

import functools
import json
import operator
from pathlib import Path

import pytest
import torch

from simvlg_video.train.batches import EpochClipOrder, TrainBatches, accumulation_for


def batches(sampler: EpochClipOrder) -> list[list[int]]:
    order = list(sampler)
    return [order[i : i + sampler.batch_size] for i in range(0, len(order), sampler.batch_size)]


@pytest.mark.parametrize(("num_items", "batch_size", "world_size"), [(50, 4, 2), (37, 3, 3), (64, 2, 4)])
@pytest.mark.parametrize("epoch", [0, 3])
def test_ranks_together_take_the_single_process_batch(num_items: int, batch_size: int, world_size: int, epoch: int):
    single = EpochClipOrder(num_items, batch_size * world_size, seed=7)
    single.set_epoch(epoch)
    ranks = [EpochClipOrder(num_items, batch_size, seed=7, rank=r, world_size=world_size) for r in range(world_size)]
    for sampler in ranks:
        sampler.set_epoch(epoch)
    per_rank = [batches(sampler) for sampler in ranks]
    assert len({len(b) for b in per_rank}) == 1, "every rank must take the same number of steps"
    for step, whole in enumerate(batches(single)):
        assert sorted(functools.reduce(operator.iadd, (b[step] for b in per_rank), [])) == sorted(whole)
    seen = [i for b in per_rank for batch in b for i in batch]
    assert len(seen) == len(set(seen)), "no clip twice in one epoch"


def test_accumulating_micro_batches_takes_the_same_steps_as_one_big_batch():
    big = EpochClipOrder(23, 8, seed=5)
    micro = EpochClipOrder(23, 2, seed=5, accumulation=4)
    for epoch in range(3):
        big.set_epoch(epoch)
        micro.set_epoch(epoch)
        micro_batches = batches(micro)
        steps = [functools.reduce(operator.iadd, micro_batches[i : i + 4], []) for i in range(0, len(micro_batches), 4)]
        assert steps == batches(big), "an epoch must end at the same step"


def test_epochs_reshuffle_and_seeds_differ():
    sampler = EpochClipOrder(40, 4, seed=1)
    assert sampler.epoch_order(0) != sampler.epoch_order(1)
    assert sampler.epoch_order(0) == EpochClipOrder(40, 4, seed=1).epoch_order(0)
    assert sampler.epoch_order(0) != EpochClipOrder(40, 4, seed=2).epoch_order(0)


def test_a_resumed_epoch_continues_where_it_stopped():
    sampler = EpochClipOrder(30, 4, seed=3, rank=1, world_size=2)
    sampler.set_epoch(2)
    whole = batches(sampler)
    sampler.set_epoch(2, start_batch=2)
    assert batches(sampler) == whole[2:]
    assert len(sampler) == len(whole[2:]) * 4


def test_too_little_data_for_one_global_batch_is_named():
    with pytest.raises(ValueError, match=r"cannot fill one step of 1 batch\(es\) of 8 on each of 2 processes"):
        EpochClipOrder(10, 8, world_size=2)
    with pytest.raises(ValueError, match="start_batch"):
        EpochClipOrder(10, 2).set_epoch(0, start_batch=6)


def test_the_accumulation_keeps_the_global_batch_or_the_numbers_are_named():
    assert accumulation_for(6, 3, 2) == 1 and accumulation_for(6, 3, 1) == 2 and accumulation_for(6, 1, 3) == 2
    assert accumulation_for(32, 4, 4) == 2
    with pytest.raises(ValueError, match="global batch of 6 clips") as refused:
        accumulation_for(6, 3, 3)
    assert str(refused.value) == (
        "the run's global batch of 6 clips is not a whole number of micro-batches of train.batch_size=3 on each "
        "of 3 process(es): it continues on 1 or 2 process(es) with that batch size; on 3 with train.batch_size=1 or 2"
    )
    with pytest.raises(ValueError, match="no batch size fits 4 processes"):
        accumulation_for(6, 1, 4)


def train_batches(records, rank: int, world_size: int, batch_size: int, accumulation: int) -> TrainBatches:
    from simvlg_video.data.dataset import ClipReading, clip_loader
    from simvlg_video.data.sampling import headtail
    from simvlg_video.data.transforms import FrameTransform

    order = EpochClipOrder(
        len(records), batch_size, seed=4, rank=rank, world_size=world_size, accumulation=accumulation
    )
    loader = clip_loader(
        records,
        ClipReading(2, "pyav", decode_timeout=None),
        headtail,
        train=True,
        batch_size=batch_size,
        num_workers=0,
        seed=4,
        order=order,
        drop_last=True,
    )
    return TrainBatches(loader, order, FrameTransform(size=16, train=True), torch.device("cpu"), seed=4)


def steps_of(ranks: list[TrainBatches], keys: list[tuple], steps: int) -> list[dict[tuple, torch.Tensor]]:
    """`steps` optimiser steps of micro-batches from every rank: each step's clips as {(epoch, index): frames}.
    `keys` is where the spy on `clip_generator` appends every clip handed out."""
    iterators = [iter(rank) for rank in ranks]
    taken = []
    for _ in range(steps):
        clips = {}
        for iterator in iterators:
            for _ in range(ranks[0].order.accumulation):
                start = len(keys)
                frames, _ = next(iterator)
                clips.update(zip(keys[start:], frames))
        taken.append(clips)
    return taken


@pytest.mark.parametrize(("world_size", "batch_size"), [(1, 3), (3, 2), (3, 1)])
def test_a_run_resumed_on_another_number_of_processes_takes_the_same_clips_at_every_step(
    shapes_set: Path, monkeypatch, world_size: int, batch_size: int
):
    """2 processes x 3 clips (a global batch of 6; 21 clips: 3 steps an epoch) stop after step 2, mid-epoch, and
    continue on `world_size` processes of `batch_size` with the accumulation that keeps 6: steps 3-5 (across the
    epoch's end) hold the clips of the uninterrupted run, each with the same frames, crop and flip."""
    from simvlg_video.data.manifest import read_manifest
    from simvlg_video.train import batches as batches_module

    records = read_manifest(shapes_set)
    keys: list[tuple] = []  # (epoch, clip index) of every clip handed out, in order
    generator = batches_module.clip_generator
    monkeypatch.setattr(batches_module, "clip_generator", lambda seed, *key: keys.append(key) or generator(seed, *key))

    whole = steps_of([train_batches(records, rank, 2, 3, 1) for rank in range(2)], keys, 5)
    assert all(len(step) == 6 for step in whole) and {epoch for epoch, _ in whole[-1]} == {1}
    interrupted = [train_batches(records, rank, 2, 3, 1) for rank in range(2)]
    steps_of(interrupted, keys, 2)
    saved = json.loads(json.dumps([rank.state_dict() for rank in interrupted]))  # what a checkpoint keeps

    accumulation = accumulation_for(6, batch_size, world_size)
    resumed = [train_batches(records, rank, world_size, batch_size, accumulation) for rank in range(world_size)]
    for rank in resumed:
        rank.load_state_dicts(saved, accumulation)
    for step, (expected, got) in enumerate(zip(whole[2:], steps_of(resumed, keys, 3)), start=3):
        assert got.keys() == expected.keys(), f"step {step}: other clips"
        assert all(torch.equal(got[clip], expected[clip]) for clip in expected), f"step {step}: other frames"
