"""Is the direction in the soft prompt? A linear readout of each pair of opposite motions of the synthetic set.

    python -m simvlg_video.eval.motion_readout RUN_DIR [--train-clips 240]

When a run's captions confuse two opposite motions, either the video side never told them apart or the frozen LM
cannot be steered to say the right word. The readout separates the two: it fits a ridge classifier on the soft
prompts (the LM's visual input) of training clips and scores it on test clips, per pair, and prints it next to how
often the run's captions name the right motion of that pair.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from simvlg_video.data.dataset import clip_loader
from simvlg_video.data.manifest import ClipRecord, read_manifest
from simvlg_video.errors import EXIT_STATUS_HELP, InputError, UsageError, exit_status
from simvlg_video.eval.inference import OpenedModel, open_model
from simvlg_video.eval.shape_accuracy import parse_motion

PAIRS = (("left", "right"), ("up", "down"), ("grow", "shrink"))


def ridge_readout(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, strength: float = 10.0
) -> tuple[float, float]:
    """(train accuracy, test accuracy) of a ridge classifier on boolean labels (closed form, standardised inputs)."""
    mean, scale = train_x.mean(0), train_x.std(0) + 1e-6
    design = np.c_[(train_x - mean) / scale, np.ones(len(train_x))]
    targets = np.where(train_y, 1.0, -1.0)
    if design.shape[1] > len(design):  # wider than tall: the same solution from the smaller, dual system
        weights = design.T @ np.linalg.solve(design @ design.T + strength * np.eye(len(design)), targets)
    else:
        weights = np.linalg.solve(design.T @ design + strength * np.eye(design.shape[1]), design.T @ targets)
    scores = np.c_[(test_x - mean) / scale, np.ones(len(test_x))] @ weights
    return float(((design @ weights > 0) == train_y).mean()), float(((scores > 0) == test_y).mean())


@torch.no_grad()
def soft_prompts(opened: OpenedModel, records: list[ClipRecord]) -> np.ndarray:
    """The flattened soft prompt of each clip, frames sampled and transformed as the model evaluates."""
    model, inference = opened.model, opened.inference
    device = next(model.parameters()).device
    transform = inference.transform(opened.config.image_size)
    loader = clip_loader(
        records,
        inference.reading,
        inference.frame_sampler,
        train=False,
        batch_size=inference.eval.batch_size,
        num_workers=inference.data.num_workers,
    )
    rows = []
    for batch in tqdm(loader, desc="soft prompts", dynamic_ncols=True):
        if batch["skipped"]:
            failed = batch["skipped"][0]
            raise InputError(f"cannot decode {failed['video']}: {failed['reason']}")
        rows.append(model.encode(transform(batch["frames"], device=device)).float().flatten(1).cpu().numpy())
    return np.concatenate(rows)


def readout_run(run_dir: Path, train_clips: int = 240) -> list[dict]:
    """One row per opposite pair: readout accuracy (train, test) and the run's caption accuracy on the test clips."""
    opened = open_model(run_dir)
    cfg = opened.run_config
    if cfg is None:
        raise UsageError(f"{run_dir} is a model directory; the readout needs the run directory around it")
    records = read_manifest(cfg.data.manifest)
    predictions_file = run_dir / "eval" / f"{cfg.eval.split}_predictions.json"
    if not predictions_file.is_file():
        raise InputError(f"{predictions_file} not found (run `python -m simvlg_video.evaluate --ckpt {run_dir}`)")
    captions = {row["clip_id"]: row["caption"] for row in json.loads(predictions_file.read_text())}
    rows = []
    for pair in PAIRS:
        train = [r for r in records if r.split == cfg.data.train_split and r.attributes.get("motion") in pair]
        test = [r for r in records if r.split == cfg.eval.split and r.attributes.get("motion") in pair]
        if not train or not test:
            continue
        train = train[:train_clips]
        train_acc, test_acc = ridge_readout(
            soft_prompts(opened, train),
            np.array([r.attributes["motion"] == pair[0] for r in train]),
            soft_prompts(opened, test),
            np.array([r.attributes["motion"] == pair[0] for r in test]),
        )
        said = [parse_motion(captions.get(r.clip_id, "")) == r.attributes["motion"] for r in test]
        rows.append(
            {
                "pair": "/".join(pair),
                "train_clips": len(train),
                "test_clips": len(test),
                "readout_train_acc": train_acc,
                "readout_test_acc": test_acc,
                "caption_acc": float(np.mean(said)),
            }
        )
    if not rows:
        raise InputError(f"{cfg.data.manifest} has no clips with opposite motions in its train and test splits")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=EXIT_STATUS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path, help="a run directory of the synthetic motion set")
    parser.add_argument("--train-clips", type=int, default=240, help="training clips per pair for the readout")
    args = parser.parse_args(argv)
    return exit_status(lambda: print_table(readout_run(args.run_dir, args.train_clips)))


def print_table(rows: list[dict]) -> None:
    print("| pair | linear readout of soft prompts: train / test | captions naming the right motion | test clips |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['pair']} | {100 * row['readout_train_acc']:.0f}% / {100 * row['readout_test_acc']:.0f}% "
            f"| {100 * row['caption_acc']:.0f}% | {row['test_clips']} |"
        )


if __name__ == "__main__":
    sys.exit(main())
