"""The synthetic motion set: shapes really move as captioned, captions parse back, and the generator writes
decodable, deterministic, balanced datasets."""

import json
from dataclasses import replace
from itertools import product

import av
import numpy as np
import pytest

from simvlg_video.data_tools.make_shapes import (
    MANIFEST_NAME,
    main,
    make_shapes_dataset,
    plan_clips,
    split_counts,
)
from simvlg_video.data_tools.shapes import (
    COLOUR_RGB,
    caption_corpus,
    image_captions,
    render_frames,
    render_image,
    sample_clip_spec,
    video_captions,
)
from simvlg_video.eval.shape_accuracy import (
    COLOUR_WORDS,
    COLOURS,
    MOTION_KEYWORDS,
    MOTIONS,
    SHAPE_WORDS,
    SHAPES,
    parse_motion,
    parse_object,
)

SIZE, FRAMES = 64, 16


def shape_mask(frames: np.ndarray, colour: str) -> np.ndarray:
    """Pixels close to the shape's colour (the background is near grey, so nothing else is)."""
    distance = np.linalg.norm(frames.astype(np.float32) - np.asarray(COLOUR_RGB[colour], np.float32), axis=-1)
    return distance < 80


def centroid_and_area(mask: np.ndarray) -> tuple[float, float, int]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean()), int(mask.sum())


def specs_for_all_combinations(seed: int = 0, per_combination: int = 2):
    rng = np.random.default_rng(seed)
    for shape, colour, motion in product(SHAPES, COLOURS, MOTIONS):
        for _ in range(per_combination):
            yield sample_clip_spec(rng, shape, colour, motion)


@pytest.mark.parametrize("motion", MOTIONS)
def test_shapes_move_as_their_motion_says(motion):
    rng = np.random.default_rng(1)
    for shape, colour in product(SHAPES, COLOURS):
        spec = sample_clip_spec(rng, shape, colour, motion)
        masks = shape_mask(render_frames(spec, SIZE, SIZE, FRAMES), colour)
        x0, y0, area0 = centroid_and_area(masks[0])
        x1, y1, area1 = centroid_and_area(masks[-1])
        moved_x, moved_y, growth = (x1 - x0) / SIZE, (y1 - y0) / SIZE, area1 / area0
        expected = {  # (sign of x move, sign of y move, growth direction); image y points down
            "still": (0, 0, 0),
            "left": (-1, 0, 0),
            "right": (1, 0, 0),
            "up": (0, -1, 0),
            "down": (0, 1, 0),
            "grow": (0, 0, 1),
            "shrink": (0, 0, -1),
        }[motion]
        for move, sign in ((moved_x, expected[0]), (moved_y, expected[1])):
            assert move >= 0.35 if sign > 0 else move <= -0.35 if sign < 0 else abs(move) < 0.03, spec
        if expected[2] == 0:
            assert 0.85 < growth < 1.15, spec
        else:  # at least x1.8 in size is x3.2 in area
            assert (growth if expected[2] > 0 else 1 / growth) > 3.2, spec


def test_shape_stays_inside_every_frame_at_any_aspect_ratio():
    for height, width in ((SIZE, SIZE), (48, 80), (80, 48)):
        for spec in specs_for_all_combinations(seed=2, per_combination=1):
            masks = shape_mask(render_frames(spec, height, width, 8), spec.colour)
            border = masks[:, [0, -1], :].any() or masks[:, :, [0, -1]].any()
            assert not border, (height, width, spec)
            assert masks.sum(axis=(1, 2)).min() >= 15, (height, width, spec)  # visible in every frame


def test_shapes_with_the_same_geometry_have_different_masks():
    spec = sample_clip_spec(np.random.default_rng(3), "circle", "blue", "still")
    masks = {shape: shape_mask(render_image(replace(spec, shape=shape), SIZE, SIZE), "blue") for shape in SHAPES}
    for a, b in ((a, b) for i, a in enumerate(SHAPES) for b in SHAPES[i + 1 :]):
        iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
        assert iou < 0.85, (a, b, iou)


def test_rendering_is_deterministic_and_seeded():
    spec = sample_clip_spec(np.random.default_rng(4), "triangle", "yellow", "left")
    again = sample_clip_spec(np.random.default_rng(4), "triangle", "yellow", "left")
    assert spec == again
    frames = render_frames(spec, 32, 32, 6)
    assert frames.dtype == np.uint8 and frames.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(frames, render_frames(again, 32, 32, 6))
    other_background = replace(spec, seed=spec.seed + 1)
    assert np.abs(frames.astype(int) - render_frames(other_background, 32, 32, 6)).mean() > 3
    # per-frame noise: frames differ even where nothing moves
    still = render_frames(sample_clip_spec(np.random.default_rng(4), "circle", "red", "still"), 32, 32, 2)
    assert not np.array_equal(still[0], still[1])


def test_render_image_is_a_frame_of_the_clip():
    spec = sample_clip_spec(np.random.default_rng(5), "square", "green", "down")
    frames = render_frames(spec, SIZE, SIZE, FRAMES)
    np.testing.assert_array_equal(render_image(spec, SIZE, SIZE), frames[0])
    last = centroid_and_area(shape_mask(frames[-1], "green"))  # same geometry, different pixel noise
    end = centroid_and_area(shape_mask(render_image(spec, SIZE, SIZE, time=1.0), "green"))
    assert end == pytest.approx(last, rel=0.03)
    with pytest.raises(ValueError, match="time"):
        render_image(spec, SIZE, SIZE, time=1.5)


def test_bad_vocabulary_and_sizes_are_rejected():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="hexagon"):
        sample_clip_spec(rng, "hexagon", "red", "still")
    with pytest.raises(ValueError, match="purple"):
        video_captions("circle", "purple", "left")
    with pytest.raises(ValueError, match="spin"):
        video_captions("circle", "red", "spin")
    spec = sample_clip_spec(rng, "circle", "red", "still")
    with pytest.raises(ValueError, match="num_frames"):
        render_frames(spec, 32, 32, 0)
    with pytest.raises(ValueError, match="8x8"):
        render_frames(spec, 4, 32, 2)


def test_every_video_caption_parses_back_to_its_motion_and_object():
    for shape, colour, motion in product(SHAPES, COLOURS, MOTIONS):
        captions = video_captions(shape, colour, motion)
        assert len(captions) >= 3 and len(set(captions)) == len(captions)
        for caption in captions:
            assert caption == caption.lower() and not caption.endswith(".")
            assert parse_motion(caption) == motion, caption
            assert parse_object(caption) == (shape, colour), caption


def test_image_captions_name_the_object_and_no_motion():
    for shape, colour in product(SHAPES, COLOURS):
        captions = image_captions(shape, colour)
        assert len(captions) >= 3 and len(set(captions)) == len(captions)
        for caption in captions:
            assert parse_motion(caption) is None, caption
            assert parse_object(caption) == (shape, colour), caption


def test_keyword_tables_do_not_overlap():
    tables = [MOTION_KEYWORDS, SHAPE_WORDS, COLOUR_WORDS]
    words = [word for table in tables for keywords in table.values() for word in keywords]
    assert len(words) == len(set(words))


def test_caption_corpus_holds_every_caption_once():
    corpus = caption_corpus()
    assert len(corpus) == len(set(corpus))
    expected = {c for s, k in product(SHAPES, COLOURS) for c in image_captions(s, k)}
    expected |= {c for s, k, m in product(SHAPES, COLOURS, MOTIONS) for c in video_captions(s, k, m)}
    assert set(corpus) == expected


# ---- the generator ---------------------------------------------------------------------------------------

GEN_SIZE, NUM_CLIPS = 48, 21  # 3 clips per motion: one for each split; at 48 px a nondeterministic encoder shows


def decode(path) -> tuple[str, np.ndarray]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return stream.codec_context.name, np.stack(frames)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    manifest = make_shapes_dataset(
        out, num_clips=NUM_CLIPS, seed=7, height=GEN_SIZE, width=GEN_SIZE, show_progress=False
    )
    return manifest, [json.loads(line) for line in manifest.read_text().splitlines()]


def test_manifest_rows_follow_the_schema(dataset):
    manifest, rows = dataset
    assert manifest.name == MANIFEST_NAME and len(rows) == NUM_CLIPS
    assert len({row["clip_id"] for row in rows}) == NUM_CLIPS
    keys = {
        "clip_id",
        "video",
        "start",
        "end",
        "captions",
        "split",
        "num_frames",
        "fps",
        "duration",
        "width",
        "height",
        "attributes",
    }
    for row in rows:
        assert set(row) == keys
        assert row["video"] == f"videos/{row['clip_id']}.mp4" and (manifest.parent / row["video"]).is_file()
        assert row["start"] is None and row["end"] is None
        assert (row["num_frames"], row["fps"], row["duration"]) == (16, 8, 2.0)
        assert (row["width"], row["height"]) == (GEN_SIZE, GEN_SIZE)
        attrs = row["attributes"]
        assert row["captions"] == video_captions(attrs["shape"], attrs["colour"], attrs["motion"])
    assert not list(manifest.parent.rglob("*.partial"))


def test_every_split_sees_every_motion_equally_often(dataset):
    _, rows = dataset
    for split in ("train", "val", "test"):
        motions = sorted(row["attributes"]["motion"] for row in rows if row["split"] == split)
        assert motions == sorted(MOTIONS), split


def test_videos_are_h264_and_decode_to_the_rendered_frames(dataset):
    manifest, rows = dataset
    planned = {clip.clip_id: clip for clip in plan_clips(NUM_CLIPS, seed=7)}
    for row in rows[:3]:
        codec, frames = decode(manifest.parent / row["video"])
        assert codec == "h264"
        assert frames.shape == (16, GEN_SIZE, GEN_SIZE, 3)
        clip = planned[row["clip_id"]]
        assert clip.split == row["split"] and clip.spec.motion == row["attributes"]["motion"]
        rendered = render_frames(clip.spec, GEN_SIZE, GEN_SIZE, 16)
        assert np.abs(frames.astype(int) - rendered).mean() < 12


def test_same_seed_gives_the_same_dataset_and_another_seed_does_not(dataset, tmp_path):
    manifest, rows = dataset
    (tmp_path / MANIFEST_NAME).write_text("stale\n")  # replaced, never left behind
    again = make_shapes_dataset(
        tmp_path, num_clips=NUM_CLIPS, seed=7, height=GEN_SIZE, width=GEN_SIZE, show_progress=False
    )
    assert again.read_text() == manifest.read_text()
    for row in rows:  # byte-identical files (a flaky encoder setting once broke this for a third of the clips)
        assert (tmp_path / row["video"]).read_bytes() == (manifest.parent / row["video"]).read_bytes(), row["video"]
    video = rows[0]["video"]
    np.testing.assert_array_equal(decode(tmp_path / video)[1], decode(manifest.parent / video)[1])
    other = make_shapes_dataset(
        tmp_path / "other", num_clips=NUM_CLIPS, seed=8, height=GEN_SIZE, width=GEN_SIZE, show_progress=False
    )
    assert other.read_text() != manifest.read_text()


def test_vp9_webm_option_writes_decodable_clips(tmp_path):
    manifest = make_shapes_dataset(
        tmp_path,
        num_clips=2,
        seed=1,
        height=24,
        width=40,
        fps=4,
        duration=1.5,
        codec="libvpx-vp9",
        container="webm",
        show_progress=False,
    )
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    planned = plan_clips(2, seed=1)
    for row, clip in zip(rows, planned):
        assert row["video"].endswith(".webm") and row["num_frames"] == 6
        codec, frames = decode(tmp_path / row["video"])
        assert codec == "vp9" and frames.shape == (6, 24, 40, 3)
        assert np.abs(frames.astype(int) - render_frames(clip.spec, 24, 40, 6)).mean() < 12


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"height": 33}, "even"),
        ({"width": 6}, "even"),
        ({"codec": "libvpx-vp9"}, "container"),
        ({"codec": "mjpeg"}, "unsupported codec"),
        ({"splits": (0.5, 0.5)}, "splits"),
        ({"fps": 1, "duration": 1}, "2 frames"),
    ],
)
def test_bad_arguments_are_rejected_before_writing(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_shapes_dataset(tmp_path / "out", **{"num_clips": 2, "height": 32, "width": 32, **overrides})
    assert not (tmp_path / "out").exists()


def test_split_counts_cover_every_split_when_possible():
    assert split_counts(100, (0.8, 0.1, 0.1)) == [80, 10, 10]
    assert split_counts(3, (0.8, 0.1, 0.1)) == [1, 1, 1]
    assert split_counts(2, (0.8, 0.1, 0.1)) == [2, 0, 0]
    assert split_counts(7, (1.0, 0.0, 0.0)) == [7, 0, 0]
    assert split_counts(11, (0.5, 0.3, 0.2)) == [6, 3, 2]


def test_cli_prints_a_summary_and_rejects_odd_sizes(tmp_path, capsys):
    main(["--out", str(tmp_path), "--num-clips", "7", "--size", "16", "--fps", "4", "--duration", "1"])
    assert capsys.readouterr().out.startswith("wrote 7 clips (train 7, val 0, test 0)")
    assert len((tmp_path / MANIFEST_NAME).read_text().splitlines()) == 7
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "odd"), "--size", "16", "--height", "17"])
    assert exit_info.value.code == 2
    assert "even" in capsys.readouterr().err
