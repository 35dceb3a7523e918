"""Build the bundled tiny image captioning model, deterministically.

Two stages, as a SimVLG image model is made: a tiny OPT learns the caption words, then ViT + connector learn to caption
single frames of the synthetic shapes ("a red circle", no motion words) with the one captioning loss, the LM frozen.
The result is written in our model-directory format; `adapt` starts from it by default.

    python -m simvlg_video.data_tools.build_tiny_image_model --out simvlg_video/assets/tiny_image_model
"""

from __future__ import annotations

import argparse
import itertools
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from simvlg_video.data.transforms import FrameTransform
from simvlg_video.data_tools import shapes
from simvlg_video.data_tools.lm_context_check import describe, motion_from_context
from simvlg_video.data_tools.tiny_lm import train_tiny_lm
from simvlg_video.eval.shape_accuracy import COLOURS, MOTIONS, SHAPES
from simvlg_video.model.freeze import apply_freeze_policy
from simvlg_video.model.lavis_checkpoint import load_model_config
from simvlg_video.model.model_dir import ModelConfig, build_captioner, save_model_dir
from simvlg_video.train.loop import Session, TrainConfig, fit

BUNDLED = Path(__file__).resolve().parents[1] / "simvlg_video" / "assets" / "tiny_image_model"


def tiny_model_config() -> ModelConfig:
    """The bundled model's architecture (`configs/model/tiny.yaml`: a 64-px EVA-style ViT, a 4-layer ToMe connector,
    65 -> 17 tokens), with the 2-layer OPT in the model directory's `lm/` folder; the ViT is stored in the directory
    itself."""
    cfg = load_model_config("tiny")
    cfg.lm.path = "lm"
    return cfg


def render_image_set(count: int, size: int, seed: int) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    """`count` still frames of random shapes, colours, places and motions (one random frame of each clip)."""
    rng = np.random.default_rng(seed)
    frames, labels = [], []
    combos = list(itertools.product(SHAPES, COLOURS, MOTIONS))
    for index in range(count):
        shape, colour, motion = combos[index % len(combos)]
        spec = shapes.sample_clip_spec(rng, shape, colour, motion)
        clip = shapes.render_frames(spec, size, size, num_frames=8)
        frames.append(torch.from_numpy(clip[rng.integers(0, len(clip))]))
        labels.append((shape, colour))
    return torch.stack(frames), labels


def image_batches(
    images: torch.Tensor, labels: list[tuple[str, str]], batch_size: int, transform: FrameTransform, seed: int
) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """Endless shuffled batches of (frames (B, 1, 3, S, S), captions) with a random image caption per frame."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    while True:
        for start in range(0, len(images) - batch_size + 1, batch_size):
            picks = rng.permutation(len(images))[:batch_size]
            clips = images[picks].unsqueeze(1)
            captions = [str(rng.choice(shapes.image_captions(*labels[i]))) for i in picks]
            yield transform(clips, generator=generator), captions


def build(out_dir: Path, steps: int, lm_steps: int, num_images: int, seed: int, show_progress: bool = True,
          lm_lr: float = 3e-3) -> Path:
    """Run both stages and write the model directory to `out_dir` (replaced atomically when complete)."""
    torch.manual_seed(seed)
    work = out_dir.with_name(out_dir.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    train_tiny_lm(shapes.caption_groups(), work / "lm", steps=lm_steps, lr=lm_lr, seed=seed,
                  show_progress=show_progress)

    cfg = tiny_model_config()
    model = build_captioner(cfg, work)
    apply_freeze_policy(model, ["vit", "ln_vision", "VL_proj", "connector", "opt_proj"])
    transform = FrameTransform(size=cfg.image_size, train=True, hflip=True, scale=(0.6, 1.0))
    images, labels = render_image_set(num_images, size=96, seed=seed)
    settings = TrainConfig(steps=steps, lr=1e-3, weight_decay=0.05, warmup_steps=steps // 20, warmup_start_lr=1e-6,
                           min_lr=1e-5, grad_clip=1.0, max_nonfinite_in_a_row=10**9)
    batches = image_batches(images, labels, batch_size=32, transform=transform, seed=seed)
    fit(model, batches, Session.create(model, settings), steps, desc="image stage", show_progress=show_progress)
    save_model_dir(model, cfg, work)
    shutil.rmtree(out_dir, ignore_errors=True)
    work.rename(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=BUNDLED, help="model directory to write (default: the bundled one)")
    parser.add_argument("--steps", type=int, default=2000, help="image-stage optimiser steps")
    parser.add_argument("--lm-steps", type=int, default=1500, help="steps of LM training on the caption corpus")
    parser.add_argument("--lm-lr", type=float, default=1e-3, help="peak learning rate of the LM's caption training")
    parser.add_argument("--num-images", type=int, default=4000, help="rendered training frames")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (fixed so the rebuild is bit-identical)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    out = build(args.out, args.steps, args.lm_steps, args.num_images, args.seed, lm_lr=args.lm_lr)
    print(f"wrote {out}; its LM takes the motion word from context: {describe(motion_from_context(out / 'lm'))}")


if __name__ == "__main__":
    main()
