"""COCO conversion: the official caption files, the Karpathy split and LAVIS files, to exact image lines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simvlg_video.data.manifest import read_manifest
from simvlg_video.data_tools.check_videos import main as check
from simvlg_video.data_tools.conversion import ConversionError
from simvlg_video.data_tools.convert import main as convert

UNICODE = "un café crème – 日本語"


def write_json(path: Path, value: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    return path


def write_images(root: Path, names: list[str]) -> None:
    """Real JPEG files where COCO puts them."""
    for seed, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(seed).integers(0, 256, (16, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / name)


def rows(manifest: Path) -> list[tuple]:
    return [(r.clip_id, r.split, r.video, r.captions, r.is_image) for r in read_manifest(manifest)]


def test_official_files_become_image_lines(tmp_path):
    root = tmp_path / "coco"
    train = {
        "images": [
            {"id": 9, "file_name": "000000000009.jpg", "height": 480},
            {"id": 25, "file_name": "000000000025.jpg"},
            {"id": 30, "file_name": "000000000030.jpg"},
        ],
        "annotations": [
            {"image_id": 9, "id": 1, "caption": "A plate of food. "},
            {"image_id": 25, "id": 2, "caption": UNICODE},
            {"image_id": 9, "id": 3, "caption": "food"},
            {"image_id": 30, "id": 4, "caption": "   "},
        ],
    }
    val = {
        "images": [{"id": 139, "file_name": "000000000139.jpg"}],
        "annotations": [{"image_id": 139, "id": 5, "caption": "a living room"}],
    }
    files = [
        write_json(root / "annotations/captions_train2017.json", train),
        write_json(root / "annotations/captions_val2017.json", val),
    ]
    write_images(root, ["train2017/000000000009.jpg", "train2017/000000000025.jpg", "val2017/000000000139.jpg"])
    summary = convert(["coco", "--root", str(root), "--official", f"train={files[0]}", f"val={files[1]}"])
    assert rows(root / "manifest.jsonl") == [
        ("000000000009", "train", "train2017/000000000009.jpg", ("A plate of food.", "food"), True),
        ("000000000025", "train", "train2017/000000000025.jpg", (UNICODE,), True),
        ("000000000139", "val", "val2017/000000000139.jpg", ("a living room",), True),
    ]
    assert summary.counts == {"captions dropped (empty)": 1, "clips dropped (no non-empty caption)": 1}
    assert summary.videos_not_found == [] and "images not found: 0" in summary.format()


def test_the_karpathy_split_trains_on_restval_and_finds_images_anywhere(tmp_path):
    root = tmp_path / "coco"
    images = [
        {
            "filepath": "val2014",
            "filename": "COCO_val2014_000000000042.jpg",
            "split": "restval",
            "cocoid": 42,
            "sentences": [{"raw": "a dog", "tokens": ["a", "dog"]}, {"raw": "a brown dog"}],
        },
        {
            "filepath": "val2014",
            "filename": "COCO_val2014_000000000073.jpg",
            "split": "test",
            "cocoid": 73,
            "sentences": [{"raw": "two cats"}],
        },
        {
            "filepath": "train2014",
            "filename": "COCO_train2014_000000000077.jpg",
            "split": "train",
            "sentences": [{"raw": "a bus"}],
        },
        {
            "filepath": "val2014",
            "filename": "COCO_val2014_000000000088.jpg",
            "split": "val",
            "sentences": [{"raw": "a tree"}],
        },
    ]
    path = write_json(root / "dataset_coco.json", {"images": images, "dataset": "coco"})
    # the user keeps all images in one folder: they are found by name; image 88 is not there
    write_images(
        root,
        [
            "all/COCO_val2014_000000000042.jpg",
            "all/COCO_val2014_000000000073.jpg",
            "all/COCO_train2014_000000000077.jpg",
        ],
    )
    summary = convert(["coco", "--root", str(root), "--karpathy", str(path)])
    assert rows(root / "manifest.jsonl") == [
        ("COCO_val2014_000000000042", "train", "all/COCO_val2014_000000000042.jpg", ("a dog", "a brown dog"), True),
        ("COCO_val2014_000000000073", "test", "all/COCO_val2014_000000000073.jpg", ("two cats",), True),
        ("COCO_train2014_000000000077", "train", "all/COCO_train2014_000000000077.jpg", ("a bus",), True),
        ("COCO_val2014_000000000088", "val", "val2014/COCO_val2014_000000000088.jpg", ("a tree",), True),
    ]
    assert summary.videos_not_found == ["val2014/COCO_val2014_000000000088.jpg"]
    report = check([str(root / "manifest.jsonl"), "--workers", "0", "--quiet"])  # the next step drops it
    assert (report["kept_clips"], report["missing_videos"]) == (3, 1)


def test_lavis_files_merge_one_entry_per_caption(tmp_path):
    root = tmp_path / "coco"
    train = [
        {"image": "val2014/COCO_val2014_000000000042.jpg", "caption": "a dog", "image_id": "coco_42"},
        {"image": "val2014/COCO_val2014_000000000042.jpg", "caption": "a brown dog", "image_id": "coco_42"},
    ]
    test = [{"image": "val2014/COCO_val2014_000000000073.jpg", "caption": ["two cats", "cats on a bed"]}]
    files = [write_json(root / "coco_karpathy_train.json", train), write_json(root / "coco_karpathy_test.json", test)]
    write_images(root, ["val2014/COCO_val2014_000000000042.jpg", "val2014/COCO_val2014_000000000073.jpg"])
    convert(["coco", "--root", str(root), "--lavis", f"train={files[0]}", f"test={files[1]}"])
    assert rows(root / "manifest.jsonl") == [
        ("COCO_val2014_000000000042", "train", "val2014/COCO_val2014_000000000042.jpg", ("a dog", "a brown dog"), True),
        (
            "COCO_val2014_000000000073",
            "test",
            "val2014/COCO_val2014_000000000073.jpg",
            ("two cats", "cats on a bed"),
            True,
        ),
    ]


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        (
            {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 2, "caption": "x"}]},
            r"annotations\[0\]\.image_id: 2 is not the id of any entry of 'images'",
        ),
        ({"images": [{"id": 1}], "annotations": []}, r"images\[0\]: missing key 'file_name'"),
        ({"images": [{"id": "1", "file_name": "a.jpg"}], "annotations": []}, r"images\[0\]\.id: expected int"),
        ({"annotations": []}, "missing key 'images'"),
    ],
)
def test_a_malformed_official_file_is_named(tmp_path, annotation, message):
    path = write_json(tmp_path / "captions_train2017.json", annotation)
    with pytest.raises(ConversionError, match=message):
        convert(["coco", "--root", str(tmp_path), "--official", f"train={path}"])


def test_an_image_in_two_splits_is_refused(tmp_path):
    images = [
        {"filepath": "val2014", "filename": "x.jpg", "split": split, "sentences": [{"raw": "a"}]}
        for split in ("train", "test")
    ]
    path = write_json(tmp_path / "dataset_coco.json", {"images": images})
    with pytest.raises(ConversionError, match=r"image 'x.jpg' is in split 'test' and also in 'train'"):
        convert(["coco", "--root", str(tmp_path), "--karpathy", str(path)])
    bad_split = write_json(tmp_path / "bad.json", {"images": [{**images[0], "split": "holdout"}]})
    with pytest.raises(ConversionError, match=r"images\[0\]\.split: expected one of"):
        convert(["coco", "--root", str(tmp_path), "--karpathy", str(bad_split)])
