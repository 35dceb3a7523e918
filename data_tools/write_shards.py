"""Pack a manifest's image lines into WebDataset tar shards, in the layout img2dataset writes (so `data.shards` reads
both alike): `{key}.jpg` (the file's own bytes, whatever its format), `{key}.txt` and `{key}.json` per image and
caption.

    python -m simvlg_video.data_tools.write_shards MANIFEST OUT_DIR [--split train] [--per-shard 10000]

Shards are named 00000.tar, 00001.tar, ...; give the folder as `data.shards=OUT_DIR` (every .tar in it). Each is
written under a temporary name and renamed when complete, so an interrupted run leaves no half shard behind.
Samples are in manifest order: a run shuffles shards and samples as it streams them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from simvlg_video.data.manifest import read_manifest
from simvlg_video.errors import EXIT_STATUS_HELP, InputError, exit_status


def write_shards(
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    split: str = "train",
    per_shard: int = 10000,
    show_progress: bool = True,
) -> str:
    """Write one sample per (image, caption) of `split`'s image lines; returns their brace pattern."""
    from webdataset import TarWriter

    if per_shard < 1:
        raise ValueError(f"per_shard must be >= 1, got {per_shard}")
    records = [record for record in read_manifest(manifest, split) if record.is_image]
    pairs = [(record, caption) for record in records for caption in record.captions]
    if not pairs:
        raise ValueError(f"{manifest} has no captioned image lines in split {split!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    num_shards = (len(pairs) + per_shard - 1) // per_shard
    for shard in tqdm(range(num_shards), desc="shards", disable=not show_progress):
        final = out_dir / f"{shard:05d}.tar"
        partial = final.with_name(final.name + ".partial")
        with open(partial, "wb") as stream, TarWriter(stream) as writer:
            for number, (record, caption) in enumerate(
                pairs[shard * per_shard : (shard + 1) * per_shard], start=shard * per_shard
            ):
                key = f"{number:09d}"
                writer.write(
                    {
                        "__key__": key,
                        "jpg": record.video_path.read_bytes(),
                        "txt": caption,
                        "json": json.dumps({"key": key, "caption": caption, "clip_id": record.clip_id}),
                    }
                )
        partial.replace(final)
    return str(out_dir / ("00000.tar" if num_shards == 1 else f"{{00000..{num_shards - 1:05d}}}.tar"))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m simvlg_video.data_tools.write_shards",
        description=__doc__,
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("manifest", type=Path, help="a manifest with image lines (data_tools.convert coco ...)")
    parser.add_argument("out_dir", type=Path, help="folder the shards are written into")
    parser.add_argument("--split", default="train", help="which split's lines to pack (default: train)")
    parser.add_argument("--per-shard", type=int, default=10000, help="samples per shard (default: 10000)")
    args = parser.parse_args(argv)
    try:
        pattern = write_shards(args.manifest, args.out_dir, args.split, args.per_shard)
    except (ValueError, OSError) as error:  # a bad manifest line or split, a file that cannot be read or written
        raise InputError(str(error)) from None
    print(f"wrote {pattern}; train on them with data=webdataset data.shards={args.out_dir}")


if __name__ == "__main__":
    sys.exit(exit_status(main))
