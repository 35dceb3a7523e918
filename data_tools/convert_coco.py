"""COCO Captions to a manifest of image lines: the official files, the Karpathy split, or LAVIS caption files.

* ``--official SPLIT=FILE ...``: ``annotations/captions_train2017.json`` / ``captions_val2017.json`` (``images`` with
  ``id`` and ``file_name``, ``annotations`` with ``image_id`` and ``caption``);
* ``--karpathy dataset_coco.json``: the Karpathy split that COCO captioning is scored on (``images`` with
  ``filepath``, ``filename``, ``split`` in train / restval / val / test and ``sentences[].raw``); restval trains;
* ``--lavis SPLIT=FILE ...``: LAVIS's ``coco_karpathy_{train,val,test}.json`` (lists of ``{"image", "caption"}``,
  one entry per caption or one with a list).

Images are found by file name anywhere under ROOT (``train2017/``, ``val2014/`` ...). The clip id is the image's
file stem. An image listed in two splits is an error; one without a non-empty caption is dropped and counted.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any

from simvlg_video.data_tools.conversion import (
    Clip,
    Conversion,
    ConversionError,
    clean_captions,
    drop_uncaptioned,
    field_of,
    lavis_entries,
    load_json,
    parse_split_files,
)

VIDEO_SUFFIX = ""  # image lines name their file; no video suffix is ever assumed
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--official",
        nargs="+",
        metavar="SPLIT=FILE",
        help="official caption files, e.g. train=annotations/captions_train2017.json "
        "val=annotations/captions_val2017.json",
    )
    source.add_argument("--karpathy", type=Path, metavar="FILE", help="the Karpathy split file dataset_coco.json")
    source.add_argument(
        "--lavis",
        nargs="+",
        metavar="SPLIT=FILE",
        help="LAVIS caption files, e.g. train=coco_karpathy_train.json val=... test=...",
    )


def from_arguments(args: argparse.Namespace) -> Conversion:
    if args.official:
        return read_official(parse_split_files(args.official, "--official"))
    if args.karpathy:
        return read_karpathy(args.karpathy)
    return read_lavis_images(parse_split_files(args.lavis, "--lavis"))


class _ImageClips:
    """Clips keyed by image file name, each in one split, captions gathered from every entry that names it."""

    def __init__(self) -> None:
        self.clips: dict[str, Clip] = {}
        self.source: dict[str, str] = {}
        self.counts: Counter[str] = Counter()

    def add(self, image: str, split: str, captions: list[Any], where: str) -> None:
        name = PurePosixPath(image).name
        if not name or not PurePosixPath(name).suffix:
            raise ConversionError(f"{where}: expected an image file name, got {image!r}")
        if not all(isinstance(text, str) for text in captions):
            raise ConversionError(f"{where}: expected caption strings, got {captions!r}")
        clip = self.clips.get(name)
        if clip is not None and clip.split != split:
            raise ConversionError(
                f"{where}: image {name!r} is in split {split!r} and also in {clip.split!r} ({self.source[name]})"
            )
        if clip is None:
            clip = self.clips[name] = Clip(PurePosixPath(name).stem, (), split, [], image=image)
            self.source[name] = where
        clip.captions.extend(clean_captions(captions, self.counts))

    def conversion(self) -> Conversion:
        return Conversion(drop_uncaptioned(self.clips.values(), self.counts), self.counts)


def read_official(files: dict[str, Path]) -> Conversion:
    """``captions_*.json`` per split: every annotation's caption joins its image; images with none are counted."""
    clips = _ImageClips()
    for split, path in files.items():
        data = load_json(path)
        where = f"{path}"
        images = field_of(data, "images", list, where)
        annotations = field_of(data, "annotations", list, where)
        names: dict[int, str] = {}
        for position, image in enumerate(images):
            image_id = field_of(image, "id", int, f"{path}: images[{position}]")
            names[image_id] = field_of(image, "file_name", str, f"{path}: images[{position}]")
        captions: dict[int, list[str]] = {image_id: [] for image_id in names}
        for position, annotation in enumerate(annotations):
            at = f"{path}: annotations[{position}]"
            image_id = field_of(annotation, "image_id", int, at)
            if image_id not in names:
                raise ConversionError(f"{at}.image_id: {image_id} is not the id of any entry of 'images'")
            captions[image_id].append(field_of(annotation, "caption", str, at))
        for image_id, name in names.items():
            clips.add(name, split, captions[image_id], f"{path}: image {image_id}")
    return clips.conversion()


def read_karpathy(path: Path) -> Conversion:
    """``dataset_coco.json``: each image with its split and sentences; restval joins train."""
    clips = _ImageClips()
    images = field_of(load_json(path), "images", list, str(path))
    for position, image in enumerate(images):
        at = f"{path}: images[{position}]"
        split = field_of(image, "split", str, at)
        if split not in KARPATHY_SPLITS:
            raise ConversionError(f"{at}.split: expected one of {list(KARPATHY_SPLITS)}, got {split!r}")
        folder, name = field_of(image, "filepath", str, at), field_of(image, "filename", str, at)
        sentences = field_of(image, "sentences", list, at)
        texts = [field_of(sentence, "raw", str, f"{at}.sentences[{k}]") for k, sentence in enumerate(sentences)]
        clips.add(f"{folder}/{name}" if folder else name, KARPATHY_SPLITS[split], texts, at)
    return clips.conversion()


def read_lavis_images(files: dict[str, Path]) -> Conversion:
    """LAVIS caption files of images: ``[{"image": "val2014/x.jpg", "caption": str | [str]}, ...]``."""
    clips = _ImageClips()
    for split, path in files.items():
        for at, image, caption in lavis_entries(path, "image"):
            clips.add(image, split, [caption] if isinstance(caption, str) else caption, f"{at}.caption")
    return clips.conversion()
