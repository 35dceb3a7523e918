"""Convert a dataset's official annotation files into our manifest (`simvlg_video.data.manifest`); print a summary.

    python -m simvlg_video.data_tools.convert msrvtt --root ROOT \
        --official train_val_videodatainfo.json test_videodatainfo.json
    python -m simvlg_video.data_tools.convert msvd --root ROOT \
        --descriptions AllVideoDescriptions.txt --mapping youtube_mapping.txt
    python -m simvlg_video.data_tools.convert activitynet --root ROOT \
        --train train.json --val-1 val_1.json --val-2 val_2.json
    python -m simvlg_video.data_tools.convert coco --root ROOT --karpathy dataset_coco.json
        (image lines; or --official / --lavis files: see `convert coco --help`)

Videos and images are looked up by name anywhere under ROOT (or --videos); the manifest goes to ROOT/manifest.jsonl
(or --out) with paths relative to it. Clips whose file is not found are kept and counted: run
``python -m simvlg_video.data_tools.check_videos ROOT/manifest.jsonl`` next, which writes the manifest a run uses.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from simvlg_video.data_tools import convert_activitynet, convert_coco, convert_msrvtt, convert_msvd
from simvlg_video.data_tools.conversion import ConversionSummary, MediaIndex, write_conversion
from simvlg_video.errors import EXIT_STATUS_HELP, exit_status

MANIFEST_NAME = "manifest.jsonl"
# dataset name -> module with add_arguments(parser), from_arguments(args) -> Conversion, and VIDEO_SUFFIX
CONVERTERS: dict[str, ModuleType] = {
    "msrvtt": convert_msrvtt,
    "msvd": convert_msvd,
    "activitynet": convert_activitynet,
    "coco": convert_coco,
}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", type=Path, required=True, help="dataset folder: holds the videos, gets the manifest")
    common.add_argument(
        "--videos", type=Path, help="folder searched (recursively) for the videos or images; default: ROOT"
    )
    common.add_argument("--out", type=Path, help=f"manifest to write; default: ROOT/{MANIFEST_NAME}")
    parser = argparse.ArgumentParser(
        prog="python -m simvlg_video.data_tools.convert",
        description=__doc__,
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    datasets = parser.add_subparsers(dest="dataset", required=True, metavar="{" + ",".join(CONVERTERS) + "}")
    for name, module in CONVERTERS.items():
        sub = datasets.add_parser(
            name,
            parents=[common],
            help=module.__doc__.splitlines()[0],
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> ConversionSummary:
    """Convert as the command line says; a file that does not convert is a ConversionError naming it."""
    args = build_parser().parse_args(argv)
    module = CONVERTERS[args.dataset]
    conversion = module.from_arguments(args)
    videos = MediaIndex(args.videos or args.root)
    summary = write_conversion(conversion, videos, args.out or args.root / MANIFEST_NAME, module.VIDEO_SUFFIX)
    print(summary.format())
    return summary


def cli() -> int:
    """`python -m simvlg_video.data_tools.convert` and the `simvlg-convert` script: the exit status."""
    return exit_status(main)


if __name__ == "__main__":
    sys.exit(cli())
