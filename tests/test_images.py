"""Images as clips of one still frame: manifest lines, decoding (real JPEG/PNG/WebP files), loaders, check_videos."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from simvlg_video.data import sampling
from simvlg_video.data.dataset import VideoClipDataset
from simvlg_video.data.decode import VideoDecodeError
from simvlg_video.data.images import read_image
from simvlg_video.data.manifest import ClipRecord, ManifestError, parse_record, read_manifest, write_manifest
from simvlg_video.data.video_writer import write_video
from simvlg_video.data_tools.check_videos import main as check


def pixels(seed: int, height: int = 24, width: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def image_line(clip_id: str, image: str, split: str = "train") -> dict:
    return {"clip_id": clip_id, "image": image, "captions": [f"a photo {clip_id}"], "split": split}


def test_an_image_line_round_trips_and_refuses_video_keys(tmp_path):
    write_manifest(tmp_path / "m.jsonl", [image_line("a", "imgs/a.jpg")])
    line = json.loads((tmp_path / "m.jsonl").read_text())
    assert line == image_line("a", "imgs/a.jpg")  # no video, start or end written
    (record,) = read_manifest(tmp_path / "m.jsonl")
    assert record.is_image and record.video_path == tmp_path / "imgs" / "a.jpg"
    for key, value in (("video", "a.mp4"), ("start", 1.0), ("end", None)):
        with pytest.raises(ManifestError, match=f"x:3: key '{key}': an image line"):
            parse_record({**image_line("a", "a.jpg"), key: value}, tmp_path, "x:3")
    with pytest.raises(ManifestError, match=r"x:3: missing key 'captions' \(required keys: \['clip_id', 'image'"):
        parse_record({"clip_id": "a", "image": "a.jpg", "split": "train"}, tmp_path, "x:3")
    with pytest.raises(ManifestError, match="key 'image': expected a non-empty path string"):
        parse_record({**image_line("a", "a.jpg"), "image": ""}, tmp_path, "x:3")


def test_a_lone_file_is_an_image_by_its_suffix():
    assert ClipRecord.for_file("photo.JPG").is_image and ClipRecord.for_file("p.webp").is_image
    assert not ClipRecord.for_file("clip.mp4").is_image and not ClipRecord.for_file("animated.gif").is_image


@pytest.mark.parametrize(("suffix", "options"), [(".png", {}), (".webp", {"lossless": True})])
def test_lossless_images_decode_exactly(tmp_path, suffix, options):
    expected = pixels(1)
    Image.fromarray(expected).save(tmp_path / f"a{suffix}", **options)
    assert np.array_equal(read_image(tmp_path / f"a{suffix}"), expected)


def test_a_jpeg_decodes_close_to_its_pixels_and_is_turned_upright(tmp_path):
    smooth = np.repeat(np.linspace(0, 255, 40, dtype=np.uint8)[None, :, None], 24, axis=0).repeat(3, axis=2)
    Image.fromarray(smooth).save(tmp_path / "a.jpg", quality=95)
    decoded = read_image(tmp_path / "a.jpg")
    assert decoded.shape == (24, 40, 3) and np.abs(decoded.astype(int) - smooth).max() <= 4

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the stored picture must be turned 90 degrees clockwise to be upright
    Image.fromarray(smooth).save(tmp_path / "turned.jpg", quality=95, exif=exif)
    upright = read_image(tmp_path / "turned.jpg")
    assert upright.shape == (40, 24, 3)
    assert np.abs(upright.astype(int) - np.rot90(smooth, k=-1)).max() <= 4


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty"), (b"plain text, not a picture", "not a readable image"), (None, "not a readable image")],
)
def test_a_broken_image_is_an_error_naming_the_file(tmp_path, content, reason):
    path = tmp_path / "broken.png"
    if content is None:  # a real PNG cut short
        Image.fromarray(pixels(2)).save(path)
        content = path.read_bytes()[:80]
    path.write_bytes(content)
    with pytest.raises(VideoDecodeError, match=reason) as caught:
        read_image(path)
    assert caught.value.path == path and "cpp" not in caught.value.reason
    with pytest.raises(VideoDecodeError, match="file not found"):
        read_image(tmp_path / "absent.jpg")


def test_an_image_is_a_clip_of_identical_frames_and_a_broken_one_is_skipped(tmp_path):
    Image.fromarray(pixels(3)).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"nope")
    write_manifest(tmp_path / "m.jsonl", [image_line("good", "good.png"), image_line("bad", "bad.png")])
    records = read_manifest(tmp_path / "m.jsonl")
    dataset = VideoClipDataset(records, num_frames=3, sampler=sampling.uniform, train=True, seed=0, backend="pyav")
    item = dataset[0]
    assert item["frames"].shape == (3, 24, 40, 3) and item["frame_indices"] == [0, 0, 0]
    for frame in item["frames"]:
        assert torch.equal(frame, torch.from_numpy(pixels(3)))
    assert item["caption"] == "a photo good"
    assert "not a readable image" in dataset[1]["error"]


def test_check_videos_keeps_readable_images_beside_videos(tmp_path):
    Image.fromarray(pixels(4)).save(tmp_path / "good.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    write_video(tmp_path / "clip.mp4", np.stack([pixels(5, 48, 64)] * 8), 8)
    video_row = {
        "clip_id": "v",
        "video": "clip.mp4",
        "start": None,
        "end": None,
        "captions": ["a clip"],
        "split": "train",
    }
    write_manifest(
        tmp_path / "m.jsonl",
        [image_line("good", "good.jpg"), image_line("bad", "bad.jpg"), image_line("gone", "gone.jpg"), video_row],
    )
    report = check([str(tmp_path / "m.jsonl"), "--workers", "0", "--quiet"])
    assert (report["kept_clips"], report["unreadable_videos"], report["missing_videos"]) == (2, 1, 1)
    kept = {record.clip_id: record for record in read_manifest(tmp_path / "m.checked.jsonl")}
    assert kept["good"].is_image and kept["good"].num_frames is None and kept["v"].num_frames == 8


def test_caption_reads_images_and_names_a_broken_one(tmp_path):
    """The bundled image model captions a still image of a shape it knows (held-out stills: 100% colour, >= 95%
    shape); a broken file beside it is one line, and the exit status says that one failed."""
    from adapt_runs import run_module

    from simvlg_video.data_tools import shapes
    from simvlg_video.data_tools.build_tiny_image_model import BUNDLED

    spec = shapes.sample_clip_spec(np.random.default_rng(7), "square", "blue", "still")
    Image.fromarray(shapes.render_image(spec, 96, 96)).save(tmp_path / "square.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    result = run_module("simvlg_video.caption", "--ckpt", str(BUNDLED), str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    path, caption = result.stdout.strip().split("\t")
    assert path == str(tmp_path / "square.png") and "blue" in caption and "square" in caption
    assert f"{tmp_path / 'broken.jpg'}: not a readable image" in result.stderr
