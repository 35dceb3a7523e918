"""Show what a video model does with one clip: sampled frames, ToMe merge groups, temporal attention, caption.

    python -m simvlg_video.visualize --ckpt RUN_DIR_OR_MODEL_DIR VIDEO [--out picture.png] [num_frames=8 ...]

Settings after the video are those of eval.inference.InferenceConfig (frames, sampler, decoding, precision).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from simvlg_video.data.manifest import ClipRecord
from simvlg_video.eval.inference import open_model, split_settings
from simvlg_video.eval.visualize import CannotDecode, draw_clip
from simvlg_video.model.config import ModelDirError
from simvlg_video.world import pick_device


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True, help="a run directory or a model directory")
    parser.add_argument("video", type=Path)
    parser.add_argument("--out", type=Path, default=Path("visualization.png"))
    parser.add_argument("--device", default="auto")
    overrides, rest = split_settings(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(rest)
    try:
        opened = open_model(args.ckpt, overrides, pick_device(args.device))
        caption = draw_clip(opened.model, opened.config, opened.inference, ClipRecord.for_file(args.video), args.out)
    except (ModelDirError, CannotDecode, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"{args.out}: {caption}")
    return caption


if __name__ == "__main__":
    main()
