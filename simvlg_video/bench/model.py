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
and model FLOP utilisation against a bf16 matrix product measured in the same run, host syncs in one step, and the
ratios to the plain port. Then the ViT forward alone (no grad, bf16) and beam-search generation.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import OPTConfig, OPTForCausalLM

from simvlg_video.adapters.patch import remove_temporal_adapters
from simvlg_video.adapters.placements import MergedTokens, Reference
from simvlg_video.bench.flops import CaptionerSizes, training_step_flops, vit_forward_flops
from simvlg_video.bench.model_report import Report, TrainResult, format_report
from simvlg_video.bench.timing import count_host_syncs, matmul_rate, peak_memory_gib, reset_memory, seconds_per_call
from simvlg_video.model.adapter_protocol import ADAPTERS, adapter_parameters
from simvlg_video.model.captioner import MeanOverTime, VideoCaptioner
from simvlg_video.model.connector import ConnectorConfig, apply_tome
from simvlg_video.model.freeze import apply_freeze_policy
from simvlg_video.model.lm import CaptionText, build_word_tokenizer
from simvlg_video.model.model_dir import build_connector
from simvlg_video.model.qformer import QFormerConfig
from simvlg_video.model.speed import cast_frozen_, compile_vit_blocks, set_fused_attention
from simvlg_video.model.vit import build_vit, vit_tokens
from simvlg_video.train.optim import build_optimizer, parameter_groups

TRAINABLE = ["ln_vision", "VL_proj", "connector", "opt_proj"]


@dataclass(frozen=True)
class Sizes:
    vit_preset: str
    vit_overrides: dict
    image_size: int
    connector: dict
    lm: dict  # OPTConfig arguments
    adapter: dict  # temporal adapter query/key width and heads


FULL = Sizes(
    vit_preset="eva_vit_g",
    vit_overrides={},
    image_size=224,
    connector=dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, r=19),
    lm=dict(
        hidden_size=2560,
        num_hidden_layers=32,
        num_attention_heads=32,
        ffn_dim=10240,
        vocab_size=50272,
        max_position_embeddings=2048,
    ),
    adapter=dict(qk_dim=256, num_heads=8),
)
# BLIP-2 OPT-2.7B: the same ViT and LLM, the Q-Former (REFERENCE.md section 9) as the connector.
FULL_QFORMER = Sizes(
    vit_preset="eva_vit_g",
    vit_overrides={},
    image_size=224,
    connector=dict(
        kind="qformer",
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        intermediate_size=3072,
        num_query_tokens=32,
        cross_attention_frequency=2,
    ),
    lm=FULL.lm,
    adapter=FULL.adapter,
)
TINY = Sizes(
    vit_preset="tiny",
    vit_overrides=dict(img_size=32, embed_dim=32, depth=10),
    image_size=32,
    connector=dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position_embeddings=64, r=4),
    lm=dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_dim=64,
        vocab_size=300,
        max_position_embeddings=128,
    ),
    adapter=dict(qk_dim=16, num_heads=4),
)
TINY_QFORMER = Sizes(
    vit_preset="tiny",
    vit_overrides=TINY.vit_overrides,
    image_size=32,
    connector=dict(
        kind="qformer",
        hidden_size=32,
        num_layers=3,
        num_heads=4,
        intermediate_size=64,
        num_query_tokens=6,
        cross_attention_frequency=2,
    ),
    lm=TINY.lm,
    adapter=TINY.adapter,
)
CONNECTORS = {"tome": (FULL, TINY), "qformer": (FULL_QFORMER, TINY_QFORMER)}  # name -> (full size, tiny)


def build_random_captioner(sizes: Sizes, device: torch.device) -> VideoCaptioner:
    """The captioner at `sizes` with random weights, built directly on `device` (fp32; cast later per variant).

    The tokenizer is a word-level one with exactly the LLM's vocabulary size, so every generated id decodes.
    """
    vocab = sizes.lm["vocab_size"]
    tokenizer = build_word_tokenizer([" ".join(f"w{i}" for i in range(vocab - 4))])
    lm_config = OPTConfig(
        **sizes.lm,
        word_embed_proj_dim=sizes.lm["hidden_size"],
        do_layer_norm_before=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    qformer = sizes.connector.get("kind") == "qformer"
    with torch.device(device):
        vit = build_vit(sizes.vit_preset, **sizes.vit_overrides)
        connector = build_connector((QFormerConfig if qformer else ConnectorConfig)(**sizes.connector), vit.embed_dim)
        lm = OPTForCausalLM(lm_config)
        return VideoCaptioner(
            vit, connector, lm, CaptionText(tokenizer), sizes.connector["hidden_size"], project_vision=not qformer
        )


@dataclass(frozen=True)
class Variant:
    name: str
    blocks: str  # "all" | "last_k" | "none" | "merged" | "image"
    last_k: int | None = None
    plain_port: bool = False  # the reference code ported as it is: naive attention, fp16 + grad scaler
    merge_r: int | None = None  # tokens merged per connector layer; None: the model's own


def parse_variant(name: str) -> Variant:
    """`port`, `all`, `merged`, `none`, `lastK` (e.g. last8), `image` or `image_rN` (e.g. image_r0)."""
    if name == "port":
        return Variant(name, "all", plain_port=True)
    if name in ("all", "none", "merged", "image"):
        return Variant(name, name)
    if name.startswith("image_r") and name[7:].isdigit():
        return Variant(name, "image", merge_r=int(name[7:]))
    if name.startswith("last") and name[4:].isdigit() and int(name[4:]) > 0:
        return Variant(name, "last_k", int(name[4:]))
    raise ValueError(f"unknown variant {name!r}: use port, all, merged, none, lastK (e.g. last8), image or image_rN")


@dataclass
class Options:
    batch: int
    frames: int
    text_tokens: int
    steps: int
    warmup: int
    compile: bool = False
    checkpointing: bool = False
    adapter: dict = field(default_factory=dict)  # the temporal modules' qk_dim and num_heads
    connector_r: int | None = 19  # the ToMe connector's tokens merged per layer; None: a Q-Former (merges none)


def configure(model: VideoCaptioner, variant: Variant, options: Options) -> tuple[torch.optim.Optimizer, object]:
    """Put the variant's adapters, precision and attention kernels on the model; returns (optimizer, grad scaler)."""
    remove_temporal_adapters(model.vit)
    model.time_pool = MeanOverTime()
    if options.connector_r is not None:
        apply_tome(model.connector, options.connector_r if variant.merge_r is None else variant.merge_r)
    trainable = list(TRAINABLE)
    if variant.blocks == "merged":
        MergedTokens(num_heads=options.adapter["num_heads"]).apply(model)
        with torch.no_grad():
            model.time_pool.out.weight.normal_(std=0.01)  # an open gate, as after some training
        trainable.append(ADAPTERS)
    elif variant.blocks not in ("none", "image"):
        Reference(blocks=variant.blocks, last_k=variant.last_k, **options.adapter).apply(model)
        with torch.no_grad():
            for name, param in adapter_parameters(model):
                if name.endswith("alpha"):
                    param.fill_(0.01)  # open gates, as after some training
        trainable.append(ADAPTERS)
    apply_freeze_policy(model, trainable)
    cast_frozen_(model, torch.float16 if variant.plain_port else torch.bfloat16)
    set_fused_attention(model, fused=not variant.plain_port)
    model.checkpoint_vit = options.checkpointing and not variant.plain_port
    if options.compile and not variant.plain_port:
        compile_vit_blocks(model)
    if variant.plain_port:
        optimizer = torch.optim.AdamW(parameter_groups(model, 0.05), lr=1e-5)
        return optimizer, torch.amp.GradScaler(next(model.parameters()).device.type)
    return build_optimizer(model, lr=1e-5), None


def random_batch(model: VideoCaptioner, options: Options, device: torch.device, size: int) -> tuple:
    generator = torch.Generator(device=device).manual_seed(0)
    frames = torch.randn(options.batch, options.frames, 3, size, size, device=device, generator=generator)
    vocab = model.lm.config.vocab_size
    ids = torch.randint(4, vocab, (options.batch, options.text_tokens), device=device, generator=generator)
    return frames, ids, torch.ones_like(ids), ids.clone()


def bench_training(model, variant: Variant, options: Options, batch: tuple, peak_flops: float) -> TrainResult:
    """Time the variant's training step; an image variant trains on the batch's first frames (B images)."""
    device = batch[0].device
    frames = 1 if variant.blocks == "image" else options.frames
    batch = (batch[0][:, :frames], *batch[1:])
    result = TrainResult(variant.name, 0)
    optimizer = scaler = None
    try:
        optimizer, scaler = configure(model, variant, options)
        result.adapters = sum(hasattr(block, "temporal_merge") for block in model.vit.blocks)
        dtype = torch.float16 if variant.plain_port else torch.bfloat16
        last_loss: list[torch.Tensor] = []

        def step() -> None:
            with torch.autocast(device.type, dtype=dtype):
                loss = model.caption_loss(*batch)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            last_loss[:] = [loss.detach()]

        model.train()
        gc.collect()
        reset_memory(device)
        for _ in range(options.warmup):
            step()
        if device.type == "cuda":
            result.host_syncs = count_host_syncs(step)
        seconds = seconds_per_call(step, options.steps, device)
        flops = training_step_flops(CaptionerSizes.of(model), options.batch, frames, options.text_tokens)
        result.seconds_per_step = seconds
        result.videos_per_s = options.batch / seconds
        result.peak_gib = peak_memory_gib(device)
        result.tflop_per_step = flops / 1e12
        result.tflop_per_s = flops / seconds / 1e12
        result.mfu = flops / seconds / peak_flops
        result.loss = float(last_loss[0])
    except torch.OutOfMemoryError:
        result.error = "out of memory"
    finally:
        optimizer = scaler = None  # released before the next variant is built
        model.zero_grad(set_to_none=True)
        gc.collect()
        reset_memory(device)
    return result


def bench_vit_forward(model, frames: int, fused: bool, repeats: int, size: int, peak_flops: float) -> dict:
    """The frozen ViT alone on `frames` images: no grad, bf16 weights and inputs, no adapters."""
    device = next(model.parameters()).device
    remove_temporal_adapters(model.vit)
    apply_freeze_policy(model, TRAINABLE)
    cast_frozen_(model, torch.bfloat16)
    set_fused_attention(model, fused)
    images = torch.randn(frames, 3, size, size, device=device, dtype=torch.bfloat16)
    model.eval()
    with torch.no_grad():
        seconds_per_call(lambda: vit_tokens(model.vit, images), 2, device)
        seconds = seconds_per_call(lambda: vit_tokens(model.vit, images), repeats, device)
    flops = vit_forward_flops(CaptionerSizes.of(model), frames)
    return {
        "attention": "fused" if fused else "naive",
        "frames": frames,
        "seconds": seconds,
        "frames_per_s": frames / seconds,
        "tflop_per_s": flops / seconds / 1e12,
        "mfu": flops / seconds / peak_flops,
    }


def bench_generation(
    model, batch_sizes: list[int], options: Options, generation: dict, repeats: int, size: int
) -> list[dict]:
    """Beam-search captions from frames (ViT + connector + LLM generate), with adapters in all blocks."""
    configure(model, Variant("all", "all"), Options(**{**asdict(options), "compile": False}))
    device = next(model.parameters()).device
    model.eval()
    rows = []
    for batch in batch_sizes:
        frames = torch.randn(batch, options.frames, 3, size, size, device=device)
        generated: list[torch.Tensor] = []

        def run(frames: torch.Tensor = frames, generated: list[torch.Tensor] = generated) -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                generated[:] = [model.generate_ids(frames, **generation)]

        seconds_per_call(run, 1, device)
        seconds = seconds_per_call(run, repeats, device)
        rows.append(
            {
                "batch": batch,
                "beams": generation["num_beams"],
                "seconds_per_batch": seconds,
                "captions_per_s": batch / seconds,
                "mean_new_tokens": caption_lengths(generated[0], model.text).float().mean().item(),
            }
        )
    model.zero_grad(set_to_none=True)
    return rows


def caption_lengths(ids: torch.Tensor, text: CaptionText) -> torch.Tensor:
    """Tokens per generated caption, up to (not counting) its end token or padding."""
    stops = (ids == text.end_token_id) | (ids == text.tokenizer.pad_token_id)
    return torch.where(stops.any(1), stops.int().argmax(1), ids.shape[1])


def run(args: argparse.Namespace) -> Report:
    connectors = [name for name in args.connectors.split(",") if name]
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "error: the full-size benchmark needs a CUDA GPU; use --tiny to run it at toy sizes on the CPU"
        )
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        name = f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
        peak = matmul_rate(device, torch.bfloat16, 8192, repeats=20)
    else:
        cpu = platform.processor() or platform.machine()
        name = f"CPU ({cpu}, {torch.get_num_threads()} threads), torch {torch.__version__}"
        peak = matmul_rate(device, torch.float32, 256, repeats=5)
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
        report = report or Report(name, peak / 1e12, asdict(options))
        torch.manual_seed(0)
        model = build_random_captioner(sizes, device)
        batch = random_batch(model, options, device, sizes.image_size)
        label = "" if connector == "tome" else f"{connector}/"
        for variant in [parse_variant(v) for v in args.variants.split(",") if v]:
            if variant.merge_r is not None and options.connector_r is None:
                continue  # image_rN sets how many tokens the ToMe connector merges; a Q-Former merges none
            report.training.append(bench_training(model, variant, options, batch, peak))
            report.training[-1].variant = label + variant.name
            print(format_report(report).splitlines()[-1], flush=True)
        if args.vit_frames and not report.vit_forward:  # the same ViT whatever the connector
            for fused in (True, False):
                report.vit_forward.append(
                    bench_vit_forward(model, args.vit_frames, fused, args.steps, sizes.image_size, peak)
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
    parser.add_argument("--gen-beams", type=int, default=5)
    parser.add_argument("--gen-min-tokens", type=int, default=5)
    parser.add_argument("--gen-max-tokens", type=int, default=20)
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
    main()
