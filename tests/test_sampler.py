"""The training clip order: the same data at the same step whatever the number of processes, and mid-epoch resume."""

from __future__ import annotations

import functools
import operator

import pytest

from simvlg_video.train.batches import ShardedClipOrder


def batches(sampler: ShardedClipOrder) -> list[list[int]]:
    order = list(sampler)
    return [order[i : i + sampler.batch_size] for i in range(0, len(order), sampler.batch_size)]


@pytest.mark.parametrize(("num_items", "batch_size", "world_size"), [(50, 4, 2), (37, 3, 3), (64, 2, 4)])
@pytest.mark.parametrize("epoch", [0, 3])
def test_ranks_together_take_the_single_process_batch(num_items: int, batch_size: int, world_size: int, epoch: int):
    single = ShardedClipOrder(num_items, batch_size * world_size, seed=7)
    single.set_epoch(epoch)
    ranks = [ShardedClipOrder(num_items, batch_size, seed=7, rank=r, world_size=world_size) for r in range(world_size)]
    for sampler in ranks:
        sampler.set_epoch(epoch)
    per_rank = [batches(sampler) for sampler in ranks]
    assert len({len(b) for b in per_rank}) == 1, "every rank must take the same number of steps"
    for step, whole in enumerate(batches(single)):
        assert sorted(functools.reduce(operator.iadd, (b[step] for b in per_rank), [])) == sorted(whole)
    seen = [i for b in per_rank for batch in b for i in batch]
    assert len(seen) == len(set(seen)), "no clip twice in one epoch"


def test_accumulating_micro_batches_takes_the_same_steps_as_one_big_batch():
    big = ShardedClipOrder(23, 8, seed=5)
    micro = ShardedClipOrder(23, 2, seed=5, accumulation=4)
    for epoch in range(3):
        big.set_epoch(epoch)
        micro.set_epoch(epoch)
        micro_batches = batches(micro)
        steps = [functools.reduce(operator.iadd, micro_batches[i : i + 4], []) for i in range(0, len(micro_batches), 4)]
        assert steps == batches(big), "an epoch must end at the same step"


def test_epochs_reshuffle_and_seeds_differ():
    sampler = ShardedClipOrder(40, 4, seed=1)
    assert sampler.epoch_order(0) != sampler.epoch_order(1)
    assert sampler.epoch_order(0) == ShardedClipOrder(40, 4, seed=1).epoch_order(0)
    assert sampler.epoch_order(0) != ShardedClipOrder(40, 4, seed=2).epoch_order(0)


def test_a_resumed_epoch_continues_where_it_stopped():
    sampler = ShardedClipOrder(30, 4, seed=3, rank=1, world_size=2)
    sampler.set_epoch(2)
    whole = batches(sampler)
    sampler.set_epoch(2, start_batch=2)
    assert batches(sampler) == whole[2:]
    assert len(sampler) == len(whole[2:]) * 4


def test_too_little_data_for_one_global_batch_is_named():
    with pytest.raises(ValueError, match=r"cannot fill one step of 1 batch\(es\) of 8 on each of 2 processes"):
        ShardedClipOrder(10, 8, world_size=2)
    with pytest.raises(ValueError, match="start_batch"):
        ShardedClipOrder(10, 2).set_epoch(0, start_batch=6)
