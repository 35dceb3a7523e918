"""Caption a split and score it: COCO caption metrics against the manifest's references (+ shape accuracy)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from simvlg_video.data.dataset import clip_loader
from simvlg_video.data.manifest import ClipRecord
from simvlg_video.durable import write_text_atomically
from simvlg_video.eval.coco import score_captions
from simvlg_video.eval.event_accuracy import event_accuracy
from simvlg_video.eval.inference import InferenceConfig
from simvlg_video.eval.paragraph import is_paragraph_set, paragraph_scores
from simvlg_video.eval.shape_accuracy import shape_accuracy, still_accuracy
from simvlg_video.model.captioner import VideoCaptioner
from simvlg_video.model.parallel import gathered_root, is_sharded
from simvlg_video.precision import autocast_for
from simvlg_video.world import World, broadcast, gather

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    captions: dict[str, str] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)


def predict(
    model: VideoCaptioner,
    records: list[ClipRecord],
    inference: InferenceConfig,
    image_size: int,
    *,
    desc: str = "caption",
    synced: bool = False,
) -> Predictions:
    """One caption per clip (deterministic frame sampling); clips that fail to decode are skipped and listed.

    `synced` (FSDP): every batch runs the model, even one whose clips all failed (on a blank clip whose caption
    is dropped), so all ranks join the same number of parameter gathers."""
    device = next(model.parameters()).device
    loader = clip_loader(
        records,
        inference.reading,
        inference.frame_sampler,
        train=False,
        batch_size=inference.eval.batch_size,
        num_workers=inference.data.num_workers,
    )
    transform = inference.transform(image_size)
    result = Predictions()
    model.eval()
    for batch in tqdm(loader, desc=desc, dynamic_ncols=True):
        result.skipped.extend(batch["skipped"])
        if not batch["clip_ids"] and not synced:
            continue
        if batch["clip_ids"]:
            frames = transform(batch["frames"], device=device)
        else:
            frames = torch.zeros(1, inference.data.num_frames, 3, image_size, image_size, device=device)
        with autocast_for(device, inference.precision):
            captions = model.generate(frames, **inference.generation, synced=synced)
        result.captions.update(zip(batch["clip_ids"], captions))
    model.train(False)
    return result


def score(records: Iterable[ClipRecord], captions: dict[str, str], spice: bool = False) -> dict[str, float]:
    """COCO metrics over the clips that were captioned, plus what the records' attributes call for: shape/motion
    accuracy (synthetic shapes and stills), event-order and speed accuracy (synthetic events) or paragraph scores
    (segments of videos, e.g. ActivityNet Captions)."""
    records = list(records)
    scored = [r for r in records if r.clip_id in captions]
    references = {r.clip_id: list(r.captions) for r in scored}
    metrics = score_captions(references, {r.clip_id: captions[r.clip_id] for r in scored}, spice=spice)
    attributes = {r.clip_id: r.attributes for r in scored if "motion" in r.attributes}
    if attributes and len(attributes) == len(scored):
        metrics.update(shape_accuracy({k: captions[k] for k in attributes}, attributes))
    stills = {r.clip_id: r.attributes for r in scored if r.is_image and {"shape", "colour"} <= set(r.attributes)}
    if stills and len(stills) == len(scored):  # the synthetic stills of the image stage's demo
        metrics.update(still_accuracy({k: captions[k] for k in stills}, stills))
    events = {r.clip_id: r.attributes for r in scored if {"events", "speed"} & set(r.attributes)}
    if events:  # the synthetic event set: events in order, speed
        metrics.update(event_accuracy({k: captions[k] for k in events}, events))
    if is_paragraph_set(records):
        metrics.update(paragraph_scores(records, captions, spice=spice))
    metrics["clips"] = len(scored)
    return metrics


def write_eval(
    out_dir: Path, name: str, predictions: Predictions, metrics: dict[str, float], settings: dict | None = None
) -> tuple[Path, Path]:
    """OUT_DIR/<name>_predictions.json and <name>_metrics.json (with `settings`, what they were made with, when
    given), each replaced atomically: a run that reads its scores back never meets a cut-short file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"clip_id": k, "caption": v} for k, v in sorted(predictions.captions.items())]
    body = {"metrics": metrics, "skipped": predictions.skipped, **({"settings": settings} if settings else {})}
    written = out_dir / f"{name}_predictions.json", out_dir / f"{name}_metrics.json"
    for path, content in zip(written, (rows, body)):
        write_text_atomically(path, json.dumps(content, indent=1, ensure_ascii=False) + "\n")
    return written


@torch.no_grad()
def evaluate_split(
    model: VideoCaptioner,
    records: list[ClipRecord],
    inference: InferenceConfig,
    image_size: int,
    world: World = World(),
    *,
    spice: bool = False,
    desc: str = "evaluate",
) -> tuple[Predictions, dict[str, float]]:
    """Caption and score `records`; under torchrun each rank captions every world_size-th clip, rank 0 scores
    the gathered captions and every rank gets the metrics."""
    shard = records[world.rank :: world.world_size]
    synced = is_sharded(model)
    if synced:  # the same number of batches on every rank: pad with repeats (same clip id, same caption)
        shard += [records[-1]] * (-(-len(records) // world.world_size) - len(shard))
    with gathered_root(model):
        mine = predict(model, shard, inference, image_size, desc=desc, synced=synced) if shard else Predictions()
    predictions = Predictions()
    for part in gather(mine, world):
        predictions.captions.update(part.captions)
        seen = {entry["clip_id"] for entry in predictions.skipped}
        predictions.skipped.extend(entry for entry in part.skipped if entry["clip_id"] not in seen)
    metrics = score(records, predictions.captions, spice=spice) if world.is_main else None
    return predictions, broadcast(metrics, world)
