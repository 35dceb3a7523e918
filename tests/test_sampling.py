"""Frame samplers: exact indices on small cases, edge cases, determinism."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from adapt_runs import compose_adapt

from simvlg_video.data.samplers import sampler_from
from simvlg_video.data.sampling import (
    ClipWindowError,
    at_rate,
    frame_window,
    head,
    headtail,
    keyframe,
    random,
    random_segment,
    sample_window,
    uniform,
)

# every sampler, with the clip facts the dataset passes (a 25 fps video with a keyframe every 10 frames)
CLIP = {"fps": 25.0, "keyframes": list(range(0, 1000, 10))}
SAMPLERS = [
    uniform,
    head,
    headtail,
    random_segment,
    random,
    partial(at_rate, **CLIP, rate=5.0),
    partial(keyframe, keyframes=CLIP["keyframes"]),
]
SAMPLER_CONFIGS = ["uniform", "head", "headtail", "random_segment", "random", "fps", "keyframe"]


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


@pytest.mark.parametrize("sampler", SAMPLERS[:5])  # at_rate and keyframe choose among fewer frames by design
def test_short_clips_repeat_frames_but_use_all_of_them(sampler) -> None:
    indices = sampler(3, 9, np.random.default_rng(0))
    assert set(indices) == {0, 1, 2}


def test_short_clip_repeats_are_spread_evenly() -> None:
    assert random_segment(3, 6, np.random.default_rng(0)) == [0, 0, 1, 1, 2, 2]
    assert uniform(3, 6) == [0, 0, 1, 1, 2, 2]
    assert head(2, 4) == [0, 0, 1, 1]
    assert headtail(1, 4) == [0, 0, 0, 0]


@pytest.mark.parametrize("sampler", SAMPLERS[:5])
@pytest.mark.parametrize(
    ("available", "wanted", "message"),
    [
        (0, 4, "num_available must be >= 1"),
        (10, 0, "num_frames must be >= 1"),
        (-3, 4, "num_available must be >= 1"),
        (10, 2.5, "num_frames must be a positive integer"),
        (True, 4, "num_available must be a positive integer"),
    ],
)
def test_bad_counts_raise_a_clear_error(sampler, available, wanted, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sampler(available, wanted)


def test_numpy_integers_are_accepted() -> None:
    assert uniform(np.int64(8), np.int32(4)) == [1, 3, 5, 7]


def test_random_segment_draws_one_frame_inside_each_segment() -> None:
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        indices = random_segment(40, 4, rng)
        assert [i // 10 for i in indices] == [0, 1, 2, 3]
        seen.update(indices)
    assert seen == set(range(40))
    assert random_segment(40, 4) == uniform(40, 4)  # evaluation: segment middles


def test_random_draws_distinct_sorted_frames_anywhere() -> None:
    rng = np.random.default_rng(0)
    draws = [random(50, 6, rng) for _ in range(100)]
    assert all(len(set(d)) == 6 for d in draws)
    assert min(min(d) for d in draws) < 5 and max(max(d) for d in draws) > 44
    assert random(50, 6) == uniform(50, 6)


def test_at_rate_keeps_equal_time_between_frames() -> None:
    # 25 fps video sampled at 5 fps: every 5th frame; 100 frames hold 20 such frames, 8 wanted -> centred run
    assert at_rate(100, 8, fps=25.0, rate=5.0) == [30, 35, 40, 45, 50, 55, 60, 65]
    rng = np.random.default_rng(0)
    for _ in range(20):
        run = at_rate(100, 8, rng, fps=25.0, rate=5.0)
        assert np.diff(run).tolist() == [5] * 7 and run[0] >= 0 and run[-1] < 100
    # a short clip at that rate has 3 frames (0, 5, 10): they repeat up to 8, in order
    assert at_rate(12, 8, fps=25.0, rate=5.0) == [0, 0, 0, 5, 5, 10, 10, 10]
    # a rate above the video's: every frame
    assert at_rate(10, 4, fps=10.0, rate=30.0) == [3, 4, 5, 6]


def test_at_rate_needs_the_frame_rate() -> None:
    with pytest.raises(ValueError, match="needs the video's frame rate"):
        at_rate(100, 4, rate=2.0)
    with pytest.raises(ValueError, match="rate must be > 0"):
        at_rate(100, 4, fps=25.0, rate=0.0)


def test_keyframe_picks_the_keyframe_nearest_each_target() -> None:
    keyframes = [0, 30, 60, 90]
    assert uniform(120, 4) == [15, 45, 75, 105]
    assert keyframe(120, 4, keyframes=keyframes) == [0, 30, 60, 90]  # ties go to the earlier keyframe
    assert keyframe(120, 4, keyframes=[0, 100]) == [0, 0, 100, 100]  # sparse keyframes repeat
    rng = np.random.default_rng(0)
    assert all(set(keyframe(120, 4, rng, keyframes=keyframes)) <= set(keyframes) for _ in range(50))


def test_keyframe_without_a_keyframe_in_the_clip_decodes_the_targets() -> None:
    assert keyframe(40, 4, keyframes=[]) == uniform(40, 4)


def test_keyframe_without_probed_keyframes_says_how_to_get_them() -> None:
    with pytest.raises(ValueError, match="probe_videos"):
        keyframe(100, 4)


def test_frame_window_maps_seconds_to_frames() -> None:
    assert frame_window(300, 30.0, None, None) == (0, 300)
    assert frame_window(300, 30.0, 2.0, 4.0) == (60, 120)
    assert frame_window(300, 30.0, 9.9, None) == (297, 300)  # a window at the very end
    assert frame_window(300, 30.0, 9.0, 60.0) == (270, 300)  # an end past the video is clipped


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ((2.0, 2.0), "end=2.0 s must be after start=2.0 s"),  # zero length
        ((3.0, 2.0), "must be after start"),
        ((10.0, None), "holds no frames of a video with 300 frames"),
        ((2.01, 2.02), "holds no frames"),  # shorter than a frame, between two frame starts
    ],
)
def test_empty_windows_are_rejected_with_a_clear_error(window, message: str) -> None:
    with pytest.raises(ClipWindowError, match=message):
        frame_window(300, 30.0, *window)


def test_a_window_needs_the_frame_rate() -> None:
    with pytest.raises(ClipWindowError, match="needs the video's frame rate"):
        frame_window(300, None, 1.0, None)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sample_window_keeps_every_sampler_inside_the_window(sampler) -> None:
    for rng in (None, np.random.default_rng(1)):
        indices = sample_window(sampler, 4, 1000, fps=25.0, window=(10.0, 12.0), keyframes=CLIP["keyframes"], rng=rng)
        assert len(indices) == 4 and indices == sorted(indices) and all(250 <= i < 300 for i in indices)
        end = sample_window(sampler, 4, 1000, fps=25.0, window=(39.9, None), keyframes=CLIP["keyframes"], rng=rng)
        assert all(997 <= i < 1000 for i in end)  # the last three frames, repeated


def test_sample_window_shifts_keyframes_into_the_clip() -> None:
    indices = sample_window(keyframe, 2, 1000, fps=25.0, window=(10.0, 12.0), keyframes=[0, 255, 290, 500])
    assert indices == [255, 290]


def test_sample_window_rejects_a_sampler_that_breaks_the_contract() -> None:
    with pytest.raises(ValueError, match="expected 4 indices in range"):
        sample_window(lambda n, k, rng, **_: [0, 1, 2, n], 4, 100)


# What each config's eval sampler must pick from a 200-frame, 25 fps clip with keyframes at 0, 30, 80, 130 and 190,
# worked out by hand from the configs' comments: four segments of 50 frames, their middles 25, 75, 125, 175 and first
# frames 0, 50, 100, 150; at 2 frames/s a frame every 12.5 (16 of them, the centred four are numbers 6-9); the
# keyframe nearest each segment middle.
EVAL_INDICES = {
    "uniform": [25, 75, 125, 175],
    "head": [0, 50, 100, 150],
    "headtail": [0, 50, 100, 150],  # the reference evaluates on the first frame of each segment
    "random_segment": [25, 75, 125, 175],
    "random": [25, 75, 125, 175],
    "fps": [75, 87, 100, 112],
    "keyframe": [30, 80, 130, 190],
}


@pytest.mark.parametrize("name", SAMPLER_CONFIGS)
def test_every_sampler_config_composes_and_samples(name: str) -> None:
    cfg = compose_adapt(f"sampler={name}")
    clip = {"fps": 25.0, "keyframes": [0, 30, 80, 130, 190]}
    indices = sampler_from(cfg.sampler.train).build()(200, 4, np.random.default_rng(0), **clip)
    assert len(indices) == 4 and indices == sorted(indices) and all(0 <= i < 200 for i in indices)
    assert sampler_from(cfg.sampler.eval).build()(200, 4, None, **clip) == EVAL_INDICES[name]
