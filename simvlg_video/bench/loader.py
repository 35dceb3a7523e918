"""Loader throughput: clips/s and frames/s for each backend x sampler, against a straightforward baseline.

    python -m simvlg_video.bench.loader FILE_OR_MANIFEST [...] [--backends decord pyav] [--samplers uniform keyframe]
        [--frames 8] [--clips 24] [--workers 2] [--threads 8] [--size 224] [--device auto] [--json OUT]

Each file is loaded ``--clips`` times as an evaluation clip (deterministic frames) through the real pipeline:
``clip_loader`` (worker processes for CPU backends, decoder threads for nvdec) ->
``FrameTransform`` on ``--device``. The baseline, in the same run, is what a first implementation does: PyAV
decodes every frame from the start of the file into RGB, the sampled ones are kept, and each frame is resized,
cropped and normalised on its own on the CPU, in a plain loop (``--baseline-workers 0``) or in DataLoader
workers. The pipeline runs one untimed epoch first (workers started, decoders opened), then a timed one: from
asking for the first batch to the last batch transformed; the baseline's single epoch is timed the same way.
Manifests (``.jsonl``) give probed files (keyframes known, nothing probed during the run).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode

from simvlg_video.data import sampling
from simvlg_video.data.dataset import ClipReading, clip_loader
from simvlg_video.data.manifest import ClipRecord, read_manifest
from simvlg_video.data.samplers import SAMPLERS, sampler_from
from simvlg_video.data.transforms import CLIP_MEAN, CLIP_STD, FrameTransform


@dataclass
class Row:
    file: str
    backend: str
    sampler: str
    clips_per_s: float
    frames_per_s: float
    skipped: int
    wait_share: float | None = None  # with --step-ms: share of the time the consumer waited for a batch


def clip_records(paths: list[Path]) -> list[ClipRecord]:
    """One record per file: read from manifests (probed metadata kept), or a bare record for a video file."""
    records = []
    for path in paths:
        if path.suffix == ".jsonl":
            records.extend(read_manifest(path))
        else:
            records.append(
                ClipRecord(
                    clip_id=path.name,
                    video=str(path),
                    video_path=path.resolve(),
                    start=None,
                    end=None,
                    captions=("clip",),
                    split="test",
                )
            )
    return records


def _copies(record: ClipRecord, count: int) -> list[ClipRecord]:
    return [replace(record, clip_id=f"{record.clip_id}#{k}") for k in range(count)]


def _timed(batches, on_batch) -> tuple[float, int, int, float]:
    """One pass over ``batches``: seconds from asking for the first batch to finishing the last, clips and skipped
    clips seen, and the seconds spent waiting for batches."""
    clips, skipped, waited = 0, 0, 0.0
    started = time.perf_counter()
    iterator = iter(batches)
    while True:
        asked = time.perf_counter()
        batch = next(iterator, None)
        waited += time.perf_counter() - asked
        if batch is None:
            break
        on_batch(batch)
        clips += len(batch["clip_ids"])
        skipped += len(batch["skipped"])
    return time.perf_counter() - started, clips, skipped, waited


def measure_pipeline(record: ClipRecord, backend: str, sampler_name: str, args, device: torch.device) -> Row:
    reading = ClipReading(args.frames, backend, args.timeout, max_skip_fraction=1.0)
    loader = clip_loader(
        _copies(record, args.clips),
        reading,
        sampler_from(sampler_name).build(),
        train=False,
        batch_size=args.batch_size,
        num_workers=args.workers,
        decode_threads=args.threads,
    )
    dataset = loader.dataset
    transform = FrameTransform(size=args.size)

    def consume(batch):
        if batch["frames"]:
            transform(batch["frames"], device=device)
            if args.step_ms:
                _model_step(args.step_ms / 1000, device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)

    _timed(loader, consume)  # warm-up epoch: workers started, files cached, hardware decoders opened
    seconds, clips, skipped, waited = _timed(loader, consume)
    dataset.reader.close()
    row = _row(record, dataset.backend, sampler_name, seconds, clips, skipped, args.frames)
    row.wait_share = round(waited / seconds, 3) if args.step_ms and seconds > 0 else None
    return row


def _model_step(seconds: float, device: torch.device) -> None:
    """Stand-in for a training step of known length: the GPU busy (a spin kernel), the host free; CPU: a sleep."""
    if device.type == "cuda":
        torch.cuda._sleep(int(seconds * _spin_cycles_per_second(device)))
    else:
        time.sleep(seconds)


@functools.cache
def _spin_cycles_per_second(device: torch.device) -> float:
    """GPU clock cycles per second as the spin kernel sees them (timed, since the reported clock idles low)."""
    cycles = 200_000_000
    torch.cuda._sleep(cycles // 10)  # wake the clocks
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    end.synchronize()
    return cycles / (start.elapsed_time(end) / 1000)


class _BaselineClips(Dataset):
    """Decode every frame from the start with PyAV, keep the sampled ones, transform frame by frame on the CPU."""

    def __init__(self, records: list[ClipRecord], num_frames: int, size: int) -> None:
        self.records, self.num_frames, self.size = records, num_frames, size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> torch.Tensor:
        import av

        with av.open(str(self.records[index].video_path)) as container:
            every_frame = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        chosen = [every_frame[i] for i in sampling.uniform(len(every_frame), self.num_frames)]
        mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
        out = []
        for frame in chosen:
            image = torch.from_numpy(frame).permute(2, 0, 1).float()
            image = TF.resize(image, [self.size], interpolation=InterpolationMode.BICUBIC, antialias=True)
            image = TF.center_crop(image, [self.size, self.size])
            out.append((image.clamp(0, 255) / 255 - mean) / std)
        return torch.stack(out)


def measure_baseline(record: ClipRecord, args) -> Row:
    loader = DataLoader(
        _BaselineClips(_copies(record, args.clips), args.frames, args.size),
        batch_size=args.batch_size,
        num_workers=args.baseline_workers,
        collate_fn=lambda items: {"clip_ids": list(range(len(items))), "skipped": [], "x": items},
    )
    seconds, clips, skipped, _ = _timed(loader, lambda batch: torch.stack(batch["x"]))
    name = f"baseline: pyav all frames, per-frame cpu, {args.baseline_workers} workers"
    return _row(record, name, "uniform", seconds, clips, skipped, args.frames)


def _row(record, backend, sampler_name, seconds, clips, skipped, frames) -> Row:
    rate = clips / seconds if seconds > 0 else float("nan")
    return Row(record.clip_id, backend, sampler_name, round(rate, 2), round(rate * frames, 1), skipped)


def table(rows: list[Row]) -> str:
    """Markdown table; 'x baseline' compares with the baseline row of the same file."""
    baseline = {row.file: row.clips_per_s for row in rows if row.backend.startswith("baseline")}
    lines = [
        "| file | backend | sampler | clips/s | frames/s | x baseline | skipped | waiting for data |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = row.clips_per_s / baseline[row.file] if baseline.get(row.file) else float("nan")
        wait = "-" if row.wait_share is None else f"{100 * row.wait_share:.0f}%"
        lines.append(
            f"| {row.file} | {row.backend} | {row.sampler} | {row.clips_per_s:.2f} | {row.frames_per_s:.1f}"
            f" | {ratio:.2f} | {row.skipped} | {wait} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", type=Path, nargs="+", help="video files, or manifests of probed files")
    parser.add_argument("--backends", nargs="+", default=["decord", "pyav"], help="auto, decord, pyav, nvdec")
    parser.add_argument("--samplers", nargs="+", default=["uniform", "keyframe"], choices=sorted(SAMPLERS))
    parser.add_argument("--frames", type=int, default=8, help="frames per clip")
    parser.add_argument("--clips", type=int, default=24, help="clips per file and setting")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="loader processes (CPU backends and the baseline)")
    parser.add_argument("--threads", type=int, default=8, help="decoder threads (nvdec)")
    parser.add_argument("--baseline-workers", type=int, default=0, help="baseline loader processes (0: plain loop)")
    parser.add_argument("--timeout", type=float, default=None, help="decode time limit in seconds (None: in-process)")
    parser.add_argument("--size", type=int, default=224, help="model input size")
    parser.add_argument("--device", default="auto", help="where transforms run: auto, cpu, cuda")
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline rows")
    parser.add_argument(
        "--step-ms",
        type=float,
        default=0.0,
        help="after each batch, keep the device busy this long (a training step's time) and report"
        " the share of time spent waiting for data",
    )
    parser.add_argument("--only", nargs="+", help="clip ids of the manifests to run (default: all)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    torch.set_num_threads(1)
    rows = []
    records = clip_records(args.inputs)
    if args.only:
        unknown = sorted(set(args.only) - {record.clip_id for record in records})
        if unknown:
            parser.error(f"--only: no clip {unknown} in {[str(p) for p in args.inputs]}")
        records = [record for record in records if record.clip_id in args.only]
    for record in records:
        if not args.no_baseline:
            rows.append(measure_baseline(record, args))
            print(rows[-1], flush=True)
        for backend in args.backends:
            for sampler_name in args.samplers:
                rows.append(measure_pipeline(record, backend, sampler_name, args, device))
                print(rows[-1], flush=True)
    print(
        f"\nmachine: {platform.node()} {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, transforms on {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    )
    print(
        f"{args.frames} frames per clip, {args.clips} clips per row, batch {args.batch_size}, "
        f"{args.workers} workers, {args.threads} nvdec threads\n"
    )
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(row) for row in rows], indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
