"""Adapt an image captioner to video: insert temporal adapters, fine-tune with one captioning loss, evaluate.

    python -m simvlg_video.adapt                                  # the built-in demo (bundled tiny model, shapes set)
    python -m simvlg_video.adapt --image-ckpt MODEL_DIR [hydra overrides ...]
    python -m simvlg_video.adapt --image-ckpt REFERENCE.pth vit_weights=eva_vit_g.pth lm_path=opt-2.7b [...]
    python -m simvlg_video.adapt --image-ckpt BLIP2_FOLDER [...]            # a Hugging Face BLIP-2 OPT folder
    python -m simvlg_video.adapt --image-ckpt BLIP2.pth lm_path=opt-2.7b [vit_weights=eva_vit_g.pth] [...]
    python -m simvlg_video.adapt -m data.num_frames=2,4 adapter=none,reference   # a sweep
    torchrun --nproc_per_node 8 -m simvlg_video.adapt [...]                      # DDP (train.strategy=fsdp: FSDP)
    python -m simvlg_video.adapt hydra.run.dir=RUN_DIR resume=auto [same overrides] # continue a stopped run

Writes RUN_DIR/{config.yaml, metrics.jsonl, tensorboard/, checkpoints/, eval/, model/, visualize/} and prints a
before/after table. `--help` lists every setting and config group; `--cfg job` prints the composed config.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from simvlg_video.configs import register_schemas
from simvlg_video.errors import InputError, UsageError, UserError, exit_status, report
from simvlg_video.formats.image_checkpoint import (
    BLIP2_FOLDER,
    MODEL_DIR,
    import_image_checkpoint,
    inspect_image_checkpoint,
)
from simvlg_video.formats.model_dir import read_model_config
from simvlg_video.model.config import ModelDirError
from simvlg_video.stage import Stage, launch, run_and_release
from simvlg_video.train.launch import flags_to_overrides
from simvlg_video.world import World, on_main

BUNDLED_IMAGE_MODEL = Path(__file__).resolve().parent / "assets" / "tiny_image_model"
IMPORTED_IMAGE_MODEL = "image_model"  # RUN_DIR/image_model: a checkpoint file or BLIP-2 folder imported as a model
# directory
register_schemas()


def image_model_dir(cfg: DictConfig, run_dir: Path, world: World) -> Path:
    """The model directory adapt starts from: the given one, the bundled one, or a checkpoint file or Hugging Face
    BLIP-2 folder imported into RUN_DIR/image_model (once, by rank 0; a resumed run finds it there)."""
    if cfg.image_ckpt is None:
        return BUNDLED_IMAGE_MODEL
    source = Path(cfg.image_ckpt).expanduser()
    if not source.exists():
        raise InputError(f"--image-ckpt {source}: no such file or directory")
    try:
        found = inspect_image_checkpoint(source)
    except ValueError as error:
        raise InputError(f"--image-ckpt {source}: {error}") from None
    given = [key for key in ("vit_weights", "lm_path", "model_config", "prompt") if cfg.get(key) is not None]
    if found.kind == MODEL_DIR:
        if given:
            raise UsageError(
                f"{' and '.join(given)} only apply to an imported checkpoint; the model "
                f"directory {source} names its own parts in model.yaml"
            )
        return refuse_video_model(source, source)
    allowed = {*found.needs, "prompt", *(("model_config",) if found.kind != BLIP2_FOLDER else ())}
    extra = [key for key in given if key not in allowed]
    if extra:
        holds = ", which holds its ViT, LLM and architecture" if found.kind == BLIP2_FOLDER else ""
        raise UsageError(f"--image-ckpt {source} is {found.description}{holds}: leave out {' and '.join(extra)}")
    missing = [key for key in found.needs if key not in given]
    if missing:
        what = {
            "vit_weights": "vit_weights=PATH (the frozen ViT's weights, e.g. BLIP-2's eva_vit_g.pth)",
            "lm_path": "lm_path=PATH (the LLM's Hugging Face folder)",
        }
        raise UsageError(
            f"--image-ckpt {source} is {found.description} and also needs {' and '.join(what[key] for key in missing)}"
        )
    imported = run_dir / IMPORTED_IMAGE_MODEL

    def import_once() -> None:  # rank 0 alone; the others wait for it without a time limit
        if (imported / "model.yaml").is_file():
            return
        try:
            import_image_checkpoint(found, imported, cfg.vit_weights, cfg.lm_path, cfg.model_config, cfg.prompt)
        except (ValueError, FileNotFoundError) as failure:  # named missing, unexpected, mis-shaped tensors, files
            raise InputError(f"--image-ckpt {source}: {failure}") from None

    on_main(import_once, world, f"importing {source}")
    return refuse_video_model(imported, source)


def refuse_video_model(model_dir: Path, given: Path) -> Path:
    """adapt starts from an image model: a video model (its model.yaml names a placement) is refused before any work."""
    try:
        adapter = read_model_config(model_dir / "model.yaml").adapter
    except ModelDirError as error:
        raise InputError(f"--image-ckpt {given}: {error}") from None
    if adapter is not None:
        how = (
            "import it as a model directory with python -m simvlg_video.formats.lavis_checkpoint, then give that to"
            if given.is_file()
            else "give it to"
        )
        raise InputError(
            f"--image-ckpt {given} is a video checkpoint (adapter {adapter['name']}); adapt "
            f"starts from an image model. To caption with it, {how} caption or evaluate --ckpt"
        )
    return model_dir


ADAPT = Stage(starting_model=image_model_dir)


@hydra.main(version_base="1.3", config_path="pkg://simvlg_video.configs", config_name="adapt")
def main(cfg: DictConfig) -> None:
    # bad input: one line, never a traceback; SIGTERM or SIGUSR1: the checkpoint is saved, resume=auto continues
    status = exit_status(lambda: run_and_release(cfg, ADAPT))
    if status:
        raise SystemExit(status)


def cli() -> None:
    """`python -m simvlg_video.adapt` and the `simvlg-adapt` script: the flags as overrides, then Hydra."""
    try:
        arguments = flags_to_overrides(sys.argv[1:], {"--image-ckpt": "image_ckpt"})
    except UserError as error:
        sys.exit(report(error))
    sys.exit(launch(main, arguments))


if __name__ == "__main__":
    cli()
