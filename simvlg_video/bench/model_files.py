"""Cost of the model files at full size: importing a reference checkpoint as a model directory, and loading it.

    python -m simvlg_video.bench.model_files --work DIR [--keep] [--json OUT]
    python -m simvlg_video.bench.model_files --source blip2 --work DIR   # a Hugging Face BLIP-2 OPT-2.7B folder

DIR may hold other files: the benchmark lists what it writes there (DIR/.model_files_bench.json), reuses those
files on the next run, refuses to write over anything else, and removes only what it wrote (unless --keep).

Writes random-weight files of the real sizes into DIR (BLIP-2's EVA ViT-g state dict with its 40 blocks in fp16,
an OPT-2.7B Hugging Face folder in fp16 shards, the reference's training checkpoint with its trainable tensors and
optimiser state), then times in fresh processes, one after the other:

* the import (`python -m simvlg_video.formats.lavis_checkpoint ...`): checks names and shapes, copies the checkpoint's
  tensors, fingerprints the frozen files;
* loading the model directory it wrote in bf16, as a `precision=bf16` run does (frozen parts straight into bf16).

With `--source blip2` the file is one Hugging Face BLIP-2 OPT-2.7B folder (`Blip2ForConditionalGeneration`'s
tensors in fp16 shards, its config and a tokenizer), imported with `python -m simvlg_video.formats.blip2_checkpoint`;
the model directory then points at the folder for the ViT and the LLM.

Each row: wall seconds and the process's peak resident memory (the kernel's high-water mark, file pages it mapped
included, the child's own: not the forking parent's). Values of the weights do not matter to either cost, only their
sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from simvlg_video.bench.random_files import (
    BLIP2_OPT_2_7B,
    OPT_2_7B,
    TINY_BLIP2,
    TINY_MODEL,
    TINY_OPT,
    write_blip2_folder,
    write_lm_folder,
    write_reference_checkpoint,
    write_vit_file,
)
from simvlg_video.bench.work_folder import WorkFolder
from simvlg_video.errors import UserError, exit_status


class MeasuredCommandFailed(UserError, RuntimeError):
    """A command the benchmark measures failed; the message ends with its stderr."""


# Runs the measured code in a fresh interpreter and writes its own high-water mark (VmHWM) at exit. The kernel's
# ru_maxrss is no use here: exec keeps the forking parent's peak in it, so a child would report this script's size.
_PEAK_WRAPPER = """
import atexit, os, runpy, sys
def report_peak():
    with open("/proc/self/status") as status:
        kib = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["SIMVLG_PEAK_FILE"], "w") as out:
        out.write(kib)
atexit.register(report_peak)
kind, target, *sys.argv[1:] = sys.argv[1:]
exec(target) if kind == "-c" else runpy.run_module(target, run_name="__main__", alter_sys=True)
"""


def timed(kind: str, target: str, *args: str) -> dict:
    """Wall seconds and peak resident memory (GiB) of `python -m target args` (kind "-m") or `python -c target`."""
    with tempfile.TemporaryFile() as errors, tempfile.TemporaryDirectory() as scratch:
        peak_file = Path(scratch) / "peak_kib"
        started = time.perf_counter()
        process = subprocess.run(
            [sys.executable, "-c", _PEAK_WRAPPER, kind, target, *args],
            stdout=subprocess.DEVNULL,
            stderr=errors,
            env={**os.environ, "SIMVLG_PEAK_FILE": str(peak_file)},
        )
        seconds = time.perf_counter() - started
        if process.returncode != 0:
            errors.seek(0)
            raise MeasuredCommandFailed(f"{kind} {target} {' '.join(args)} failed:\n{errors.read().decode()[-3000:]}")
        peak_gib = int(peak_file.read_text()) / 2**20
    return {"seconds": round(seconds, 2), "peak_rss_gib": round(peak_gib, 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for the files (about 9 GB; blip2: 7.5 GB)")
    parser.add_argument(
        "--source",
        choices=("simvlg", "blip2"),
        default="simvlg",
        help="the reference's three files, or a Hugging Face BLIP-2 OPT-2.7B folder",
    )
    parser.add_argument("--only", choices=("import", "load"), help="measure one of the two commands")
    parser.add_argument("--keep", action="store_true", help="keep the files for another run")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (the code path, not the cost)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    work = WorkFolder(args.work)
    if args.source == "blip2":
        return blip2_figures(args, work)
    return reference_figures(args, work)


def reference_figures(args: argparse.Namespace, work: WorkFolder) -> dict:
    """The reference's three files (SimVLG's checkpoint, the EVA ViT-g weights, OPT-2.7B), imported, then loaded."""
    names = ["eva_vit_g.pth", "opt-2.7b", "simvlg_image.pth"] + (["tiny_model.yaml"] if args.tiny else [])
    vit, lm, ckpt = (work.path / name for name in names[:3])
    model_config = str(work.path / "tiny_model.yaml") if args.tiny else "simvlg_opt2.7b"
    if not all(work.finished(name) for name in names):
        for name in names:
            work.claim(name)
        print("writing random-weight files ...", flush=True)
        if args.tiny:
            Path(model_config).write_text(TINY_MODEL)
        write_vit_file(vit, model_config)
        write_lm_folder(lm, TINY_OPT if args.tiny else OPT_2_7B)
        write_reference_checkpoint(ckpt, lm, model_config)
        work.done(*names)
    sizes = {
        p.name: round(sum(f.stat().st_size for f in ([p] if p.is_file() else p.rglob("*"))) / 2**30, 2)
        for p in (vit, lm, ckpt)
    }
    figures: dict = {"files_gib": sizes, "cpu_threads": torch.get_num_threads()}
    out = work.path / "model"
    if args.only in (None, "import"):
        work.claim("model")
        figures["import"] = timed(
            "-m",
            "simvlg_video.formats.lavis_checkpoint",
            str(ckpt),
            "--vit-weights",
            str(vit),
            "--lm-path",
            str(lm),
            "--out",
            str(out),
            "--model-config",
            model_config,
        )
        work.done("model")
    return finish(args, work, figures, out)


def finish(args: argparse.Namespace, work: WorkFolder, figures: dict, out: Path) -> dict:
    """Time the load of the imported model directory `out` in bf16, then report (and clean up unless --keep)."""
    if args.only in (None, "load") and work.finished(out.name):
        load = (
            f"import torch; from simvlg_video.formats.model_dir import load_model_dir; "
            f"load_model_dir({str(out)!r}, dtype=torch.bfloat16)"
        )
        figures["load_bf16"] = timed("-c", load)
    if not args.keep:
        work.clean()
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return figures


def blip2_figures(args: argparse.Namespace, work: WorkFolder) -> dict:
    """--source blip2: a Hugging Face BLIP-2 OPT-2.7B folder, imported, then loaded."""
    folder, out = work.path / "blip2-opt-2.7b", work.path / "model"
    if not work.finished(folder.name):
        work.claim(folder.name)
        print("writing a random-weight BLIP-2 folder ...", flush=True)
        write_blip2_folder(folder, TINY_BLIP2 if args.tiny else BLIP2_OPT_2_7B, TINY_OPT if args.tiny else OPT_2_7B)
        work.done(folder.name)
    size = sum(f.stat().st_size for f in folder.rglob("*")) / 2**30
    figures: dict = {"files_gib": {folder.name: round(size, 2)}, "cpu_threads": torch.get_num_threads()}
    if args.only in (None, "import"):
        work.claim(out.name)
        figures["import"] = timed("-m", "simvlg_video.formats.blip2_checkpoint", str(folder), "--out", str(out))
        work.done(out.name)
    return finish(args, work, figures, out)


if __name__ == "__main__":
    sys.exit(exit_status(lambda: main() and None))
