"""Cost of the captioner at full size with random weights: training steps, the frozen ViT's forward, generation.

    python -m simvlg_video.bench.model                  # ViT-g + bert-base ToMe connector + OPT-2.7B on the GPU
    python -m simvlg_video.bench.model --connectors tome,qformer   # and the same with BLIP-2's Q-Former in its place
    python -m simvlg_video.bench.model --tiny           # the same code at toy sizes on the CPU (the test suite runs it)

`--connectors` runs each connector's captioner in turn (SimVLG's ToMe connector: `tome`; BLIP-2 OPT-2.7B's
Q-Former, 32 queries: `qformer`); rows of a connector other than `tome` are named `qformer/<variant>`.

Training steps (`caption_loss` forward + backward + AdamW, B videos x T frames, random caption tokens) are timed for
each variant in one process, on one model:

* ``port``: a plain port of the reference code: matmul-softmax-matmul attention everywhere, frozen weights in fp16
  under fp16 autocast with a GradScaler, adapters in all blocks (so autograd runs through the whole ViT), AdamW
  without the fused kernel.
* ``merged``: the merged-token placement (frozen ViT and connector per frame and on the clip view, one temporal
  token pool with clip-time and place codes after the connector), with this package's settings below.
* ``image`` / ``image_r0``: the image stage (`pretrain`): a batch of B images (one frame each) with no temporal
  modules, the connector merging r tokens per layer (the sizes' r, 19 at full size) or none; the ViT and LLM frozen.
* ``all`` / ``lastK`` / ``none``: this package's path, adapters in all blocks, the last K blocks, or none (the
  floor: the image model with frames averaged): fused
  attention (SDPA), frozen weights in bf16 under bf16 autocast, blocks below the first adapter without autograd,
  fused AdamW; `--checkpointing` and `--compile` add activation checkpointing / torch.compile of the ViT blocks.

Reported per variant: s/step, videos/s, peak GPU memory, model FLOPs per step (see `bench/flops.py` for the formula)
and model FLOP utilisation (MFU) against a matrix product in the step's dtype measured in the same run (bf16; the
port's fp16), host syncs in one step, and the ratios to the plain port. A step faster than that product means its
peak was underestimated: its MFU is printed as n/a, never above 100%. Then the ViT forward alone (no grad, bf16)
and beam-search generation.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from simvlg_video.bench.model_report import Report, format_report
from simvlg_video.bench.model_sizes import CONNECTORS, build_random_captioner
from simvlg_video.bench.model_steps import bench_generation, bench_training, bench_vit_forward
from simvlg_video.bench.model_variants import Options, Variant, parse_variant, random_batch
from simvlg_video.bench.timing import matmul_rate, reset_memory
from simvlg_video.errors import UsageError, exit_status
from simvlg_video.eval.inference import Decoding


def matmul_peaks(device: torch.device, variants: list[Variant]) -> dict[torch.dtype, float]:
    """The matrix-product rate in each dtype the steps compute in (bf16 always: the ViT forward runs in it). The
    matrices are large enough for the rate to approach the device's peak; smaller ones underestimate it."""
    size = 8192 if device.type == "cuda" else 2048
    dtypes = dict.fromkeys([torch.bfloat16, *(variant.dtype for variant in variants)])
    return {dtype: matmul_rate(device, dtype, size, repeats=20 if device.type == "cuda" else 3) for dtype in dtypes}


def run(args: argparse.Namespace) -> Report:
    connectors = [name for name in args.connectors.split(",") if name]
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("the full-size benchmark needs a CUDA GPU; use --tiny to run it at toy sizes on the CPU")
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        name = f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    else:
        cpu = platform.processor() or platform.machine()
        name = f"CPU ({cpu}, {torch.get_num_threads()} threads), torch {torch.__version__}"
    peaks = matmul_peaks(device, [parse_variant(v) for v in args.variants.split(",") if v])
    report = None
    for connector in connectors:  # one captioner at a time: two full-size ones need not fit together
        sizes = CONNECTORS[connector][1 if args.tiny else 0]
        options = Options(
            args.batch,
            args.frames,
            args.text_tokens,
            args.steps,
            args.warmup,
            args.compile,
            args.checkpointing,
            sizes.adapter,
            sizes.connector.get("r"),
        )
        report = report or Report(
            name, {str(d).removeprefix("torch."): p / 1e12 for d, p in peaks.items()}, asdict(options)
        )
        torch.manual_seed(0)
        model = build_random_captioner(sizes, device)
        batch = random_batch(model, options, device, sizes.image_size)
        label = "" if connector == "tome" else f"{connector}/"
        for variant in [parse_variant(v) for v in args.variants.split(",") if v]:
            if variant.merge_r is not None and options.connector_r is None:
                continue  # image_rN sets how many tokens the ToMe connector merges; a Q-Former merges none
            report.training.append(bench_training(model, variant, options, batch, peaks))
            report.training[-1].variant = label + variant.name
            print(format_report(report).splitlines()[-1], flush=True)
        if args.vit_frames and not report.vit_forward:  # the same ViT whatever the connector
            for fused in (True, False):
                report.vit_forward.append(
                    bench_vit_forward(
                        model, args.vit_frames, fused, args.steps, sizes.image_size, peaks[torch.bfloat16]
                    )
                )
        if args.gen_batches:
            generation = dict(
                num_beams=args.gen_beams, min_new_tokens=args.gen_min_tokens, max_new_tokens=args.gen_max_tokens
            )
            batches = [int(b) for b in args.gen_batches.split(",") if b]
            rows = bench_generation(model, batches, options, generation, args.gen_repeats, sizes.image_size)
            report.generation += [{"connector": connector, **row} for row in rows]
        del model, batch
        gc.collect()
        reset_memory(device)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="toy sizes (CPU by default); defaults below shrink too")
    parser.add_argument("--device", help="cuda (full size default) or cpu (--tiny default)")
    parser.add_argument("--batch", type=int, help="videos per step (16; tiny 2)")
    parser.add_argument("--frames", type=int, default=4, help="frames per video")
    parser.add_argument("--text-tokens", type=int, default=20, help="caption tokens per video")
    parser.add_argument("--steps", type=int, help="timed steps per variant (10; tiny 2)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (3; tiny 1)")
    parser.add_argument(
        "--variants",
        default="port,all,last8,merged,none,image,image_r0",
        help="comma list: port,all,lastK,merged,none,image,image_rN",
    )
    parser.add_argument(
        "--connectors", default="tome", help="comma list: tome (SimVLG's ToMe connector), qformer (BLIP-2's Q-Former)"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the ViT blocks (our variants)")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing of the ViT blocks")
    parser.add_argument("--vit-frames", type=int, help="frames for the ViT-forward timing, 0 to skip (128; tiny 4)")
    parser.add_argument("--gen-batches", help="comma list of generation batch sizes, empty to skip (32,64; tiny 2)")
    parser.add_argument("--gen-beams", type=int, default=Decoding.num_beams)
    parser.add_argument("--gen-min-tokens", type=int, default=Decoding.min_new_tokens)
    parser.add_argument("--gen-max-tokens", type=int, default=Decoding.max_new_tokens)
    parser.add_argument("--gen-repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    defaults = (
        dict(batch=2, steps=2, warmup=1, vit_frames=4, gen_batches="2")
        if args.tiny
        else dict(batch=16, steps=10, warmup=3, vit_frames=128, gen_batches="32,64")
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = [name for name in args.connectors.split(",") if name not in CONNECTORS]
    if unknown or not args.connectors:
        parser.error(f"unknown connectors {unknown}: use {', '.join(CONNECTORS)}")
    for variant in args.variants.split(","):
        if variant:
            try:
                parse_variant(variant)
            except ValueError as error:
                parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> Report:
    args = parse_args(argv)
    report = run(args)
    print("\n" + format_report(report))
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=1))
    return report


if __name__ == "__main__":
    sys.exit(exit_status(lambda: main() and None))
