"""The model benchmark's results and their markdown tables (`bench/model.py` measures, this module reports)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainResult:
    variant: str
    adapters: int
    seconds_per_step: float | None = None
    videos_per_s: float | None = None
    peak_gib: float | None = None
    tflop_per_step: float | None = None
    tflop_per_s: float | None = None
    mfu: float | None = None
    host_syncs: int | None = None
    loss: float | None = None
    error: str | None = None


@dataclass
class Report:
    device: str
    peak_tflop_per_s: dict[str, float]  # the matrix-product rate by dtype name ("bfloat16", "float16")
    options: dict
    training: list[TrainResult] = field(default_factory=list)
    vit_forward: list[dict] = field(default_factory=list)
    generation: list[dict] = field(default_factory=list)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_mfu(mfu: float | None) -> str:
    """MFU as a percentage; None (a rate above the measured peak) says the peak was underestimated."""
    return "n/a (peak underestimated)" if mfu is None else f"{mfu:.1%}"


def format_report(report: Report) -> str:
    """Markdown tables of the report, ratios relative to the plain port where it ran."""
    o = report.options
    lines = [
        f"device: {report.device}; measured matmul peak "
        + ", ".join(f"{dtype} {tflops:.3g}" for dtype, tflops in report.peak_tflop_per_s.items())
        + " TFLOP/s",
        f"training step: B={o['batch']} videos x T={o['frames']} frames, {o['text_tokens']} text tokens, "
        f"{o['steps']} timed steps after {o['warmup']} warm-up; compile={o['compile']}, "
        f"checkpointing={o['checkpointing']}",
        "",
        "| variant | adapters | s/step | videos/s (image rows: images/s) | vs port | peak GiB | memory vs port "
        "| TFLOP/step | TFLOP/s | MFU | host syncs/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    port = next((r for r in report.training if r.variant == "port" and r.error is None), None)
    for r in report.training:
        if r.error:
            lines.append(f"| {r.variant} | {r.adapters} | {r.error} |" + " |" * 8)
            continue
        speed = f"{r.videos_per_s / port.videos_per_s:.2f}x" if port else None
        memory = r.peak_gib / port.peak_gib if port and r.peak_gib and port.peak_gib else None
        lines.append(
            f"| {r.variant} | {r.adapters} | {r.seconds_per_step:.4f} | {r.videos_per_s:.1f} | {_fmt(speed, 's')} "
            f"| {_fmt(r.peak_gib, '.1f')} | {_fmt(memory, '.2f')} | {r.tflop_per_step:.3g} | {r.tflop_per_s:.3g} "
            f"| {format_mfu(r.mfu)} | {_fmt(r.host_syncs, 'd')} |"
        )
    lines += merged_summary(report.training) + image_summary(report.training)
    lines += connector_summary(report.training)
    if report.vit_forward:
        lines += [
            "",
            "| ViT forward (no grad, bf16) | frames | s | frames/s | TFLOP/s | of matmul peak |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {v['attention']} attention | {v['frames']} | {v['seconds']:.4f} | {v['frames_per_s']:.0f} "
            f"| {v['tflop_per_s']:.3g} | {format_mfu(v['mfu'])} |"
            for v in report.vit_forward
        ]
    if report.generation:
        lines += [
            "",
            "| generation (adapters in all blocks) | beams | s/batch | captions/s | mean new tokens |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {_connector(g)}batch {g['batch']} | {g['beams']} | {g['seconds_per_batch']:.3f} "
            f"| {g['captions_per_s']:.1f} "
            f"| {g['mean_new_tokens']:.1f} |"
            for g in report.generation
        ]
    return "\n".join(lines)


def _connector(row: dict) -> str:
    return "" if row.get("connector", "tome") == "tome" else f"{row['connector']}, "


def merged_summary(training: list[TrainResult]) -> list[str]:
    """The merged-token placement against adapters in all blocks, the plain port and the floor (`none`:
    the image model with frames averaged)."""
    done = {r.variant: r for r in training if r.error is None}
    if "merged" not in done:
        return []
    merged = done["merged"].videos_per_s
    parts = [
        f"{merged / done[name].videos_per_s:.2f}x the videos/s of {name}"
        for name in ("all", "port", "none")
        if name in done
    ]
    return ["", "merged: " + "; ".join(parts)] if parts else []


def image_summary(training: list[TrainResult]) -> list[str]:
    """The image stage with gradual merging against the same step merging nothing (SimVLG's headline)."""
    done = {r.variant: r for r in training if r.error is None}
    if "image" not in done or "image_r0" not in done:
        return []
    merged, plain = done["image"], done["image_r0"]
    memory = (
        f", at {merged.peak_gib / plain.peak_gib:.2f} of its peak memory" if merged.peak_gib and plain.peak_gib else ""
    )
    return [
        "",
        f"image stage: merging trains at {merged.videos_per_s / plain.videos_per_s:.2f}x the images/s of "
        f"merging nothing (image_r0){memory}",
    ]


def connector_summary(training: list[TrainResult]) -> list[str]:
    """Each variant with another connector (`qformer/all`) against the same variant with SimVLG's ToMe connector."""
    done = {r.variant: r for r in training if r.error is None}
    lines = []
    for name, row in done.items():
        base = done.get(name.split("/", 1)[1]) if "/" in name else None
        if base is not None:
            memory = f", {row.peak_gib / base.peak_gib:.2f}x its peak memory" if row.peak_gib and base.peak_gib else ""
            lines.append(
                f"{name}: {row.videos_per_s / base.videos_per_s:.2f}x the videos/s of {base.variant}"
                f" (ToMe connector){memory}"
            )
    return ["", *lines] if lines else []
