"""Build the bundled tiny image captioning model, deterministically, with the image stage itself.

Two steps: a tiny OPT learns the caption words of the motion set and the event set (each sample 1-3 captions of one
object and what it does, so that, like a large LLM, it reads from its context what a caption is about; with the event
words "then", "stops", "slowly", "quickly", "turns", so `adapt data=events` starts from this model too); then the
image stage every image model is made with, `python -m simvlg_video.pretrain` on its demo stills, trains ViT +
connector with that OPT frozen. This tool only trains the LM, runs the command, and packs its model with the LM into
one directory; `adapt` starts from it by default.

    python -m simvlg_video.data_tools.build_tiny_image_model --out simvlg_video/assets/tiny_image_model
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import OmegaConf

from simvlg_video.data_tools import event_text
from simvlg_video.data_tools.lm_context_check import describe, motion_from_context
from simvlg_video.data_tools.tiny_lm import train_tiny_lm
from simvlg_video.errors import UserError, exit_status
from simvlg_video.formats.model_dir import MODEL_CONFIG, WEIGHTS
from simvlg_video.model.config import ModelConfig, load_model_config

BUNDLED = Path(__file__).resolve().parents[1] / "simvlg_video" / "assets" / "tiny_image_model"


def tiny_model_config() -> ModelConfig:
    """The bundled model's architecture (`configs/model/tiny.yaml`: a 64-px EVA-style ViT, a 4-layer ToMe connector,
    65 -> 17 tokens), with the 2-layer OPT in the model directory's `lm/` folder; the ViT is stored in the directory
    itself."""
    cfg = load_model_config("tiny")
    cfg.lm.path = "lm"
    return cfg


def build(
    out_dir: Path,
    steps: int = 2000,
    lm_steps: int = 3000,
    num_images: int = 4000,
    seed: int = 0,
    show_progress: bool = True,
    lm_lr: float = 1e-3,
    overrides: Sequence[str] = (),
) -> Path:
    """Train the LM, run the image stage on it (`overrides`: more pretrain settings), and write the model directory
    to `out_dir` (replaced when complete; nothing is left behind if a step fails)."""
    out_dir = Path(out_dir)
    work = out_dir.with_name(out_dir.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        torch.set_num_threads(1)  # the LM is tiny: one thread is fastest on a busy machine, and the same everywhere
        train_tiny_lm(
            event_text.caption_groups(), work / "lm", steps=lm_steps, lr=lm_lr, seed=seed, show_progress=show_progress
        )
        stage_dir = work / "image_stage"
        settings = [
            f"lm_path={work / 'lm'}",
            f"hydra.run.dir={stage_dir}",
            f"seed={seed}",
            f"train.steps={steps}",
            f"data.synthetic.num_images={num_images}",
            f"data.synthetic.seed={seed}",
            f"data.cache_dir={work / 'stills'}",
            "eval.visualize=0",
            *overrides,
        ]
        stage = subprocess.run([sys.executable, "-m", "simvlg_video.pretrain", *settings])
        if stage.returncode != 0:
            raise UserError(
                f"the image stage (python -m simvlg_video.pretrain) failed with exit code "
                f"{stage.returncode}; its output is above"
            )
        trained = OmegaConf.load(stage_dir / "model" / MODEL_CONFIG)
        trained.lm.path = "lm"  # the LM travels inside the directory; its fingerprint is of the same files
        shutil.copy2(stage_dir / "model" / WEIGHTS, work / WEIGHTS)
        (work / MODEL_CONFIG).write_text(OmegaConf.to_yaml(trained), encoding="utf-8")
        for leftover in ("image_stage", "stills"):
            shutil.rmtree(work / leftover)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    shutil.rmtree(out_dir, ignore_errors=True)
    work.rename(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=BUNDLED, help="model directory to write (default: the bundled one)")
    parser.add_argument("--steps", type=int, default=2000, help="image-stage optimiser steps")
    parser.add_argument("--lm-steps", type=int, default=3000, help="steps of LM training on the caption corpus")
    parser.add_argument("--lm-lr", type=float, default=1e-3, help="peak learning rate of the LM's caption training")
    parser.add_argument("--num-images", type=int, default=4000, help="generated training stills")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="more settings of the image stage (pretrain), e.g. train.lr=2e-3")
    args = parser.parse_args(argv)
    torch.use_deterministic_algorithms(True)
    out = build(
        args.out, args.steps, args.lm_steps, args.num_images, args.seed, lm_lr=args.lm_lr, overrides=args.overrides
    )
    print(f"wrote {out}; its LM takes the motion word from context: {describe(motion_from_context(out / 'lm'))}")


if __name__ == "__main__":
    sys.exit(exit_status(main))
