"""Frame samplers: exact indices on small cases, edge cases, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from simvlg_video.data.sampling import head, headtail, uniform

SAMPLERS = [uniform, head, headtail]


def test_uniform_takes_the_middle_of_each_segment() -> None:
    assert uniform(8, 4) == [1, 3, 5, 7]
    assert uniform(10, 4) == [1, 3, 6, 8]
    assert uniform(100, 1) == [50]


def test_head_takes_the_first_frame_of_each_segment() -> None:
    assert head(8, 4) == [0, 2, 4, 6]
    assert head(10, 4) == [0, 2, 5, 7]
    assert head(100, 1) == [0]


def test_headtail_without_rng_spreads_within_each_half() -> None:
    # halves [0, 5) and [5, 10); two frames from each, middle of equal segments
    assert headtail(10, 4) == [1, 3, 6, 8]
    # odd count: one from the first half, two from the second
    assert headtail(10, 3) == [2, 6, 8]


def test_headtail_with_rng_draws_distinct_frames_from_each_half() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        indices = headtail(20, 4, rng)
        assert indices == sorted(indices)
        assert len(set(indices)) == 4
        assert all(0 <= i < 10 for i in indices[:2])
        assert all(10 <= i < 20 for i in indices[2:])


def test_headtail_with_rng_covers_both_halves_fully() -> None:
    rng = np.random.default_rng(1)
    seen = {i for _ in range(300) for i in headtail(12, 4, rng)}
    assert seen == set(range(12))


def test_headtail_is_deterministic_given_the_seed() -> None:
    draws_a = [headtail(50, 8, np.random.default_rng(7)) for _ in range(3)]
    draws_b = [headtail(50, 8, np.random.default_rng(7)) for _ in range(3)]
    assert draws_a == draws_b
    assert headtail(50, 8, np.random.default_rng(7)) != headtail(50, 8, np.random.default_rng(8))


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize(("available", "wanted"), [(1, 1), (1, 4), (3, 8), (5, 5), (7, 4), (1000, 16)])
def test_indices_are_sorted_in_range_and_counted(sampler, available: int, wanted: int) -> None:
    for rng in (None, np.random.default_rng(3)):
        indices = sampler(available, wanted, rng)
        assert len(indices) == wanted
        assert indices == sorted(indices)
        assert all(isinstance(i, int) and 0 <= i < available for i in indices)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_short_clips_repeat_frames_but_use_all_of_them(sampler) -> None:
    indices = sampler(3, 9, np.random.default_rng(0))
    assert set(indices) == {0, 1, 2}


def test_short_clip_repeats_are_spread_evenly() -> None:
    assert uniform(3, 6) == [0, 0, 1, 1, 2, 2]
    assert head(2, 4) == [0, 0, 1, 1]
    assert headtail(1, 4) == [0, 0, 0, 0]


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize(("available", "wanted", "message"), [
    (0, 4, "num_available must be >= 1"),
    (10, 0, "num_frames must be >= 1"),
    (-3, 4, "num_available must be >= 1"),
    (10, 2.5, "num_frames must be a positive integer"),
    (True, 4, "num_available must be a positive integer"),
])
def test_bad_counts_raise_a_clear_error(sampler, available, wanted, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sampler(available, wanted)


def test_numpy_integers_are_accepted() -> None:
    assert uniform(np.int64(8), np.int32(4)) == [1, 3, 5, 7]
