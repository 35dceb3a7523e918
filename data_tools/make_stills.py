"""Write the synthetic still-image set: JPEG files of coloured shapes plus a manifest of image lines.

    python -m simvlg_video.data_tools.make_stills --out data/stills [--num-images 4000 --seed 0 --size 96]

What the image stage's demo (`python -m simvlg_video.pretrain`) trains and scores on: one frame of a shapes clip
(any motion, any moment), captioned without motion words ("a red circle"). Every shape and colour pair appears
equally often (give or take one) and is split train/val/test on its own. The same arguments give the same files;
the manifest is written last, so a set whose manifest exists is complete.
"""

from __future__ import annotations

import argparse
import os
from itertools import product
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from simvlg_video.data.manifest import write_manifest
from simvlg_video.data_tools.shapes import COLOURS, MOTIONS, SHAPES, image_captions, render_image, sample_clip_spec

MANIFEST_NAME = "manifest.jsonl"
SPLITS = (("train", 0.8), ("val", 0.1), ("test", 0.1))


def split_of(position: int, count: int) -> str:
    """The split of the `position`-th of `count` images of one shape and colour: the first 80% train, then val,
    then test."""
    edge = 0.0
    for name, share in SPLITS:
        edge += share * count
        if position < round(edge):
            return name
    return SPLITS[-1][0]


def make_stills_dataset(
    out_dir: str | os.PathLike,
    num_images: int = 4000,
    seed: int = 0,
    size: int = 96,
    quality: int = 95,
    show_progress: bool = True,
) -> Path:
    """Render and write the set into `out_dir`; returns the manifest path."""
    if num_images < len(SHAPES) * len(COLOURS):
        raise ValueError(
            f"num_images must be >= {len(SHAPES) * len(COLOURS)} (every shape and colour), got {num_images}"
        )
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pairs = list(product(SHAPES, COLOURS))
    per_pair = [num_images // len(pairs) + (k < num_images % len(pairs)) for k in range(len(pairs))]
    lines, seen = [], dict.fromkeys(pairs, 0)
    for index in tqdm(range(num_images), desc="render stills", unit="image", disable=not show_progress):
        shape, colour = pair = pairs[index % len(pairs)]
        motion = MOTIONS[int(rng.integers(len(MOTIONS)))]
        spec = sample_clip_spec(rng, shape, colour, motion)
        pixels = render_image(spec, size, size, time=float(rng.uniform(0.0, 1.0)))  # any moment of the motion
        name = f"images/still_{index:05d}.jpg"
        Image.fromarray(pixels).save(out_dir / name, quality=quality)
        split = split_of(seen[pair], per_pair[pairs.index(pair)])
        seen[pair] += 1
        lines.append(
            {
                "clip_id": f"still_{index:05d}",
                "image": name,
                "captions": image_captions(shape, colour),
                "split": split,
                "attributes": {"shape": shape, "colour": colour},
            }
        )
    manifest = out_dir / MANIFEST_NAME
    write_manifest(manifest, lines)
    return manifest


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to write (images/ and manifest.jsonl)")
    parser.add_argument("--num-images", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=96, help="image width and height in pixels")
    args = parser.parse_args(argv)
    manifest = make_stills_dataset(args.out, args.num_images, args.seed, args.size)
    print(f"wrote {manifest}")
    return manifest


if __name__ == "__main__":
    main()
