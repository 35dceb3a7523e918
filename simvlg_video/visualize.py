"""Show what a video model does with one clip: sampled frames, ToMe merge groups, temporal attention, caption.

    python -m simvlg_video.visualize --ckpt RUN_DIR_OR_MODEL_DIR VIDEO [--out picture.png] [data.num_frames=8 ...]

The settings are caption's: the model's own, under overrides with the keys of adapt's config.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from simvlg_video.configs.commands import command_parser, open_for_command, split_overrides
from simvlg_video.data.manifest import ClipRecord
from simvlg_video.errors import exit_status
from simvlg_video.eval.visualize import draw_clip


def visualize(ckpt: Path, video: Path, overrides: Sequence[str] = (), out: Path = Path("visualization.png")) -> str:
    """Draw `video` as the model of `ckpt` sees it into `out`; returns its caption. A video that does not decode is
    a UserError (CannotDecode)."""
    opened = open_for_command("visualize", ckpt, overrides).opened
    caption = draw_clip(opened.model, opened.config, opened.inference, ClipRecord.for_file(video), out)
    print(f"{out}: {caption}")
    return caption


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser(__doc__, "visualize")
    parser.add_argument("--ckpt", type=Path, required=True, help="a run directory or a model directory")
    parser.add_argument("video", type=Path)
    parser.add_argument("--out", type=Path, default=Path("visualization.png"), help="the picture (PNG)")
    overrides, rest = split_overrides(sys.argv[1:] if argv is None else list(argv), parser)
    args = parser.parse_args(rest)
    return exit_status(lambda: visualize(args.ckpt, args.video, overrides, args.out) and None)


if __name__ == "__main__":
    sys.exit(main())
