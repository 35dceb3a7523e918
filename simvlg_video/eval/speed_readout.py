"""Where is speed lost? A linear readout of slow against fast at each stage of a run's video side (event set).

    python -m simvlg_video.eval.speed_readout RUN_DIR [--clips 480]

A run that names few speeds either never carried speed to the soft prompt or cannot make the frozen LM say it. The
readout fits a ridge classifier (slow or fast) on the `speed` clips of the training split, two thirds of them, and
scores it on the other third and the held-out clips, for each stage: every frame's connector tokens, their time
average, the connector's tokens of the time-averaged ViT tokens (the clip view), the pool's gated attention output
alone, and the soft prompt. A stage that does not separate the speeds has lost them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from simvlg_video.data.dataset import clip_loader
from simvlg_video.data.manifest import ClipRecord, read_manifest
from simvlg_video.errors import EXIT_STATUS_HELP, InputError, UsageError, exit_status
from simvlg_video.eval.inference import OpenedModel, open_model
from simvlg_video.eval.motion_readout import ridge_readout

STAGES = ("frame tokens", "frame average", "clip view", "gated attention", "soft prompt")


@torch.no_grad()
def stage_features(opened: OpenedModel, records: list[ClipRecord]) -> dict[str, np.ndarray]:
    """The flattened features of each stage (`STAGES`) for each clip, frames sampled as the model evaluates; the
    gated attention only where the model pools merged tokens with a gate (`time_pool.out`)."""
    model, inference = opened.model, opened.inference
    device = next(model.parameters()).device
    transform = inference.transform(opened.config.image_size)
    gate = getattr(model.time_pool, "out", None)
    gated: list[torch.Tensor] = []
    hook = gate.register_forward_hook(lambda _m, _i, out: gated.append(out)) if gate is not None else None
    loader = clip_loader(
        records,
        inference.reading,
        inference.frame_sampler,
        train=False,
        batch_size=inference.eval.batch_size,
        num_workers=inference.data.num_workers,
    )
    rows: dict[str, list[np.ndarray]] = {}
    try:
        for batch in tqdm(loader, desc="features", dynamic_ncols=True):
            if batch["skipped"]:
                failed = batch["skipped"][0]
                raise InputError(f"cannot decode {failed['video']}: {failed['reason']}")
            frames = transform(batch["frames"], device=device)
            tokens = model.frame_tokens(frames)
            per_frame = model.connect(tokens.flatten(0, 1)).unflatten(0, tokens.shape[:2])
            found = {
                "frame tokens": per_frame,
                "frame average": per_frame.mean(dim=1),
                "clip view": model.connect(tokens.mean(dim=1)),
            }
            gated.clear()
            found["soft prompt"] = model.encode(frames)
            if gated:
                found["gated attention"] = gated[-1]
            for name, value in found.items():
                rows.setdefault(name, []).append(value.float().flatten(1).cpu().numpy())
    finally:
        if hook is not None:
            hook.remove()
    return {name: np.concatenate(rows[name]) for name in STAGES if name in rows}


def readout_run(run_dir: Path, clips: int = 480) -> list[dict]:
    """One row per stage: its width and the readout's accuracy on the fitted and the held-out clips."""
    opened = open_model(run_dir)
    cfg = opened.run_config
    if cfg is None:
        raise UsageError(f"{run_dir} is a model directory; the readout needs the run directory around it")
    records = [r for r in read_manifest(cfg.data.manifest) if r.attributes.get("speed") in ("slow", "fast")]
    train = [r for r in records if r.split == cfg.data.train_split][:clips]
    fit, held = train[: 2 * len(train) // 3], train[2 * len(train) // 3 :]
    held += [r for r in records if r.split != cfg.data.train_split]
    if len(fit) < 10 or not held:
        raise InputError(f"{cfg.data.manifest} has too few clips with a speed attribute for a readout")
    fit_x, held_x = stage_features(opened, fit), stage_features(opened, held)
    fit_y = np.array([r.attributes["speed"] == "fast" for r in fit])
    held_y = np.array([r.attributes["speed"] == "fast" for r in held])
    rows = []
    for name in fit_x:
        train_acc, test_acc = ridge_readout(fit_x[name], fit_y, held_x[name], held_y)
        rows.append(
            {
                "stage": name,
                "dims": fit_x[name].shape[1],
                "fit_clips": len(fit),
                "held_clips": len(held),
                "readout_fit_acc": train_acc,
                "readout_held_acc": test_acc,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=EXIT_STATUS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path, help="a run directory of the synthetic event set")
    parser.add_argument("--clips", type=int, default=480, help="training-split speed clips to fit and hold out")
    args = parser.parse_args(argv)
    return exit_status(lambda: print_table(readout_run(args.run_dir, args.clips)))


def print_table(rows: list[dict]) -> None:
    print(f"| stage | width | readout: fitted ({rows[0]['fit_clips']}) / held out ({rows[0]['held_clips']}) |")
    print("|---|---:|---:|")
    for row in rows:
        accuracy = f"{100 * row['readout_fit_acc']:.0f}% / {100 * row['readout_held_acc']:.0f}%"
        print(f"| {row['stage']} | {row['dims']} | {accuracy} |")


if __name__ == "__main__":
    sys.exit(main())
