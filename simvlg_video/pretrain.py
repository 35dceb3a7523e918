"""Make an image captioner: SimVLG's image stage (one stage, one captioning loss, gradual token merging).

    python -m simvlg_video.pretrain                                   # the demo: the tiny model on generated stills
    python -m simvlg_video.pretrain experiment=simvlg_image data=coco data.root=ROOT \
        vit_weights=eva_vit_g.pth bert_path=bert-base-uncased lm_path=opt-2.7b
    torchrun --nproc_per_node 8 -m simvlg_video.pretrain [...]          # DDP (train.strategy=fsdp: FSDP)
    python -m simvlg_video.pretrain hydra.run.dir=RUN_DIR resume=auto [same overrides]

The starting model is assembled from the parts into RUN_DIR/initial_model (the frozen ViT and LLM behind
fingerprinted pointers, the connector from BERT, fresh projections); then the same training stage as `adapt` runs on
images (clips of one frame). RUN_DIR/model is the image model: `adapt --image-ckpt RUN_DIR/model` takes it to video.
`--help` lists every setting and config group; `--cfg job` prints the composed config.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from simvlg_video.configs import register_schemas
from simvlg_video.errors import InputError, exit_status
from simvlg_video.formats.image_parts import assemble_image_model
from simvlg_video.model.config import load_model_config
from simvlg_video.stage import Stage, launch, run_and_release
from simvlg_video.world import World, on_main

BUNDLED_LM = Path(__file__).resolve().parent / "assets" / "tiny_image_model" / "lm"
INITIAL_MODEL = "initial_model"  # RUN_DIR/initial_model: the untrained model assembled from the parts
register_schemas()


def initial_model_dir(cfg: DictConfig, run_dir: Path, world: World) -> Path:
    """RUN_DIR/initial_model, assembled from `model_config` (with `merge_r` and `merge_mode` when given),
    `vit_weights`, `bert_path` and `lm_path` by rank 0 (once: a resumed run finds it); a missing or mismatched part
    or setting is one error line on every rank. The other ranks wait for rank 0 without a time limit."""
    out = run_dir / INITIAL_MODEL

    def assemble() -> None:
        if (out / "model.yaml").is_file():
            return
        try:
            model_cfg = load_model_config(cfg.model_config)
            model_cfg.lm.path = str(Path(cfg.lm_path).expanduser().resolve()) if cfg.lm_path else str(BUNDLED_LM)
            if cfg.vit_weights:
                model_cfg.vit.weights = str(Path(cfg.vit_weights).expanduser().resolve())
            if cfg.merge_r is not None:
                model_cfg.connector.r = (
                    OmegaConf.to_object(cfg.merge_r) if OmegaConf.is_config(cfg.merge_r) else cfg.merge_r
                )
            if cfg.merge_mode is not None:
                model_cfg.connector.merge_mode = cfg.merge_mode
            assemble_image_model(model_cfg, out, cfg.bert_path)
        except (ValueError, FileNotFoundError) as failure:  # named missing, unexpected, mis-shaped tensors, files
            raise InputError(f"the starting image model: {failure}") from None

    on_main(assemble, world, "assembling the starting image model")
    return out


PRETRAIN = Stage(
    starting_model=initial_model_dir,
    module="simvlg_video.pretrain",
    before="initial model",
    after="pretrained",
    exports_placement=False,
)


@hydra.main(version_base="1.3", config_path="pkg://simvlg_video.configs", config_name="pretrain")
def main(cfg: DictConfig) -> None:
    # bad input: one line, never a traceback; SIGTERM or SIGUSR1: the checkpoint is saved, resume=auto continues
    status = exit_status(lambda: run_and_release(cfg, PRETRAIN))
    if status:
        raise SystemExit(status)


def cli() -> None:
    """`python -m simvlg_video.pretrain` and the `simvlg-pretrain` script."""
    sys.exit(launch(main, sys.argv[1:]))


if __name__ == "__main__":
    cli()
