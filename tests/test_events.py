"""The synthetic event set: clips show what their captions say, in order; speeds and windows are what they claim;
time reversal swaps the events; the set is deterministic, balanced, held out by seed, and real H.264."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from simvlg_video.data_tools import event_text, events
from simvlg_video.data_tools.make_events import draw_clip, make_events_dataset, plan_event_clips
from simvlg_video.data_tools.shapes import COLOUR_RGB
from simvlg_video.eval.event_accuracy import events_in_order, parse_speed

VARIANTS = [(kind, variant) for kind in events.KINDS for variant in events.VARIANTS[kind]]


def clip_of(kind: str, variant: str, seed: int, duration: float = 4.0) -> events.EventClip:
    return draw_clip(np.random.default_rng(seed), kind, variant, duration)


def centroid(frame: np.ndarray, colour: str) -> np.ndarray | None:
    """(x, y) in pixels of the pixels close to a shape colour; None when there are none."""
    near = np.abs(frame.astype(int) - np.array(COLOUR_RGB[colour])).sum(axis=-1) < 60
    ys, xs = np.nonzero(near)
    return np.array([xs.mean(), ys.mean()]) if len(xs) else None


@pytest.mark.parametrize(("kind", "variant"), VARIANTS)
def test_captions_name_the_events_in_order_and_the_reversed_clip_is_captioned_otherwise(kind, variant) -> None:
    for seed in range(6):
        clip = clip_of(kind, variant, seed)
        backwards = events.reverse(clip)
        captions = event_text.event_captions(clip)
        assert len(set(captions)) == 4
        assert all(events_in_order(caption, clip.events) for caption in captions)
        assert not any(events_in_order(caption, backwards.events) for caption in captions)
        assert set(captions).isdisjoint(event_text.event_captions(backwards))
        if len(clip.events) == 2:
            assert all(" then " in caption for caption in captions)
            assert (backwards.kind, backwards.variant in events.VARIANTS[kind]) == (kind, True)
        assert events.reverse(backwards).events == clip.events
        assert set(captions) <= set(event_text.caption_corpus())


@pytest.mark.parametrize(("kind", "variant"), VARIANTS)
def test_a_reversed_clip_shows_the_same_states_backwards(kind, variant) -> None:
    """What makes order-blind models sit at chance: a clip and its reversal hold the same set of frames."""
    clip = clip_of(kind, variant, seed=11)
    backwards = events.reverse(clip)
    for time in np.linspace(0.0, 1.0, 21):
        for actor, reversed_actor in zip(clip.actors, backwards.actors):
            ahead, behind = actor.state(float(time)), reversed_actor.state(float(1.0 - time))
            np.testing.assert_allclose(
                np.hstack([*ahead[:3], ahead[3]]), np.hstack([*behind[:3], behind[3]]), atol=1e-5
            )


def test_the_frames_show_each_event_in_its_own_phase() -> None:
    """Two shapes: the first moves before the boundary and rests after it, the second the other way round."""
    for seed in range(4):
        clip = clip_of("two_shapes", ("rows", "columns")[seed % 2], seed)
        frames = events.render_event_frames(clip, 64, 64, fps=10)
        boundary = round(clip.actors[0].poses[1].time * len(frames))
        for index, event in enumerate(clip.events):
            start, middle, end = (centroid(frames[i], event.colour) for i in (0, boundary, len(frames) - 1))
            first_phase, second_phase = np.abs(middle - start).max(), np.abs(end - middle).max()
            moving, resting = (first_phase, second_phase) if index == 0 else (second_phase, first_phase)
            assert moving > 10 and resting < 1.5, (seed, index, first_phase, second_phase)


def test_move_then_stop_moves_first_and_still_then_move_moves_last() -> None:
    for variant in ("move_first", "still_first"):
        clip = clip_of("move_stop", variant, seed=3)
        poses = clip.actors[0].poses
        first = np.hypot(poses[1].x - poses[0].x, poses[1].y - poses[0].y) + abs(poses[1].size - poses[0].size)
        second = np.hypot(poses[2].x - poses[1].x, poses[2].y - poses[1].y) + abs(poses[2].size - poses[1].size)
        assert (first > 0.1, second == 0.0) == ((True, True) if variant == "move_first" else (False, False))


def test_fast_clips_move_measurably_faster_in_pixels_per_second() -> None:
    size, fps = 64, 8
    measured: dict[str, list[float]] = {"slow": [], "fast": []}
    for seed in range(8):
        for speed in events.SPEEDS:
            clip = clip_of("speed", speed, seed)
            frames = events.render_event_frames(clip, size, size, fps)
            colour = clip.events[0].colour
            travelled = np.abs(centroid(frames[-1], colour) - centroid(frames[0], colour)).max()
            pixels_per_second = travelled / ((len(frames) - 1) / fps)
            assert pixels_per_second == pytest.approx(clip.speed_value * size, rel=0.15)
            assert parse_speed(event_text.event_captions(clip)[0]) == speed
            measured[speed].append(pixels_per_second)
    assert min(measured["fast"]) > 1.5 * max(measured["slow"])


def test_a_long_clips_event_fills_its_window_and_nothing_moves_outside_it() -> None:
    fps = 2
    for seed in range(3):
        clip = draw_clip(np.random.default_rng(seed), "long", "window", duration=30.0 + 10 * seed, window_fraction=0.2)
        start, end = clip.window
        assert 0.0 <= start < end <= 1.0 and end - start == pytest.approx(0.2)
        assert clip.attributes()["window"] == pytest.approx([start * clip.duration, end * clip.duration])
        frames = events.render_event_frames(clip, 32, 32, fps)
        times = np.arange(len(frames)) / fps / clip.duration
        colour = clip.events[0].colour
        places = [centroid(frame, colour) for frame in frames]
        before = [p for p, t in zip(places, times) if t <= start]
        after = [p for p, t in zip(places, times) if t >= end]
        inside = [p for p, t in zip(places, times) if start < t < end]
        assert before and after and inside
        assert max(np.abs(p - before[0]).max() for p in before) < 1.0
        assert max(np.abs(p - after[-1]).max() for p in after) < 1.0
        assert np.abs(after[-1] - before[0]).max() > 3 or clip.events[0].action in ("grow", "shrink")


@pytest.mark.parametrize(("kind", "variant"), VARIANTS)
def test_every_shape_is_drawn_at_a_size_the_image_model_names(kind, variant) -> None:
    """No shape of any kind, at any moment, is smaller than the smallest size the bundled model names as it names
    stills (item 1 of the event benchmark: it measures time, not eyesight)."""
    smallest = events.SHAPE_SIZE[0]
    for seed in range(8):
        clip = clip_of(kind, variant, seed, duration=30.0 if kind == "long" else 4.0)
        for actor in clip.actors:
            sizes = [actor.state(float(time))[2] for time in np.linspace(0.0, 1.0, 41)]
            assert min(sizes) >= smallest - 1e-9, (kind, variant, seed, min(sizes))


def test_object_stills_are_each_shape_alone_at_the_clips_first_and_last_frame() -> None:
    fps = 8
    one = clip_of("colour_move", "colour_first", seed=2)
    frames = events.render_event_frames(one, 64, 64, fps)
    stills = events.object_stills(one, 64, 64, fps)
    assert [(shape, colour) for _, shape, colour in stills] == [
        (one.actors[0].shape, one.events[0].colour),
        (one.actors[0].shape, one.events[0].to),  # it has turned by the last frame
    ]
    np.testing.assert_array_equal(stills[0][0], frames[0])
    np.testing.assert_array_equal(stills[1][0], frames[-1])
    two = clip_of("two_shapes", "rows", seed=5)
    stills = events.object_stills(two, 64, 64, fps)
    assert [(shape, colour) for _, shape, colour in stills] == 2 * [(e.shape, e.colour) for e in two.events]
    for pixels, _, colour in stills:  # only its own shape: no pixel of the other shape's colour
        others = [c for c in (e.colour for e in two.events) if c != colour]
        assert centroid(pixels, colour) is not None and centroid(pixels, others[0]) is None


def test_speeds_that_do_not_fit_the_clip_are_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        events.speed_clip(np.random.default_rng(0), "circle", "red", "left", "fast", duration=20.0)


def test_the_plan_is_deterministic_balanced_and_holds_test_seeds_out() -> None:
    plan = plan_event_clips(120, seed=4)
    assert plan == plan_event_clips(120, seed=4) and plan != plan_event_clips(120, seed=5)
    by_split = {split: [p for p in plan if p.split == split] for split in ("train", "val", "test")}
    assert [len(clips) for clips in by_split.values()] == [96, 12, 12]
    variants = Counter((p.clip.kind, p.clip.variant) for p in by_split["train"])
    assert len(variants) == 8 and max(variants.values()) - min(variants.values()) <= 1
    train_seeds = {p.clip.seed for p in by_split["train"]}
    assert train_seeds.isdisjoint(p.clip.seed for p in by_split["test"])
    # the test clips come from their own stream: a bigger training split leaves them as they are
    bigger = [p for p in plan_event_clips(240, seed=4) if p.split == "test"]
    assert [p.clip for p in bigger[:12]] == [p.clip for p in by_split["test"]]


def test_make_events_dataset_writes_real_h264_with_regular_keyframes(tmp_path: Path) -> None:
    manifest = make_events_dataset(
        tmp_path / "a",
        num_clips=10,
        seed=2,
        height=32,
        width=32,
        fps=8,
        duration=2.0,
        keyframe_interval=0.5,
        show_progress=False,
    )
    again = make_events_dataset(
        tmp_path / "b",
        num_clips=10,
        seed=2,
        height=32,
        width=32,
        fps=8,
        duration=2.0,
        keyframe_interval=0.5,
        show_progress=False,
    )
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [row["clip_id"] for row in rows] == [json.loads(line)["clip_id"] for line in again.read_text().splitlines()]
    plan = {p.clip_id: p.clip for p in plan_event_clips(10, seed=2, duration=(2.0, 2.0))}
    for row in rows:
        video = tmp_path / "a" / row["video"]
        assert video.read_bytes() == (tmp_path / "b" / row["video"]).read_bytes()
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            keyframes = [i for i, packet in enumerate(container.demux(stream)) if packet.size and packet.is_keyframe]
        with av.open(str(video)) as container:
            decoded = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
        clip = plan[row["clip_id"]]
        assert keyframes == [0, 4, 8, 12] and len(decoded) == row["num_frames"] == 16
        rendered = events.render_event_frames(clip, 32, 32, 8)
        assert np.abs(decoded.astype(int) - rendered).mean() < 8  # the per-pixel noise is what x264 loses
        poses = clip.actors[0].poses
        for index, colour in ((0, poses[0].colour), (len(decoded) - 1, poses[-1].colour)):  # shapes where drawn
            assert np.abs(centroid(decoded[index], colour) - centroid(rendered[index], colour)).max() < 1.0
        assert row["captions"] == event_text.event_captions(clip) and row["attributes"] == clip.attributes()


def test_unknown_kinds_and_bad_durations_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kinds"):
        make_events_dataset(tmp_path, num_clips=2, kinds=["jump"], show_progress=False)
    with pytest.raises(ValueError, match="duration"):
        make_events_dataset(tmp_path, num_clips=2, duration=[60.0, 20.0], show_progress=False)


def test_the_bundled_lm_and_the_tiny_lm_command_know_every_event_word(tmp_path: Path) -> None:
    """`adapt data=events` starts from the bundled model: its tokenizer has "then", "stops", "slowly", ..., as has
    the tokenizer the tiny LM command writes from the event corpus."""
    from transformers import AutoTokenizer

    from simvlg_video.data_tools.build_tiny_image_model import BUNDLED
    from simvlg_video.data_tools.tiny_lm import main as train_lm

    trained = train_lm(["--corpus", "events", "--out", str(tmp_path / "lm"), "--steps", "1"])
    for tokenizer in (AutoTokenizer.from_pretrained(BUNDLED / "lm"), AutoTokenizer.from_pretrained(trained)):
        unknown = tokenizer.unk_token_id
        assert all(unknown not in tokenizer(caption).input_ids for caption in event_text.caption_corpus())
