"""Reading a run directory back: its resolved config, its exported model, and the evaluation settings it used."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError

from simvlg_video.data.transforms import FrameTransform
from simvlg_video.eval.predict import Generation
from simvlg_video.model.captioner import VideoCaptioner
from simvlg_video.model.model_dir import load_model_dir

RUN_CONFIG = "config.yaml"
RUN_MODEL = "model"


def load_run_config(run_dir: str | Path, overrides: list[str] = ()) -> DictConfig:
    """RUN_DIR/config.yaml with `key=value` overrides; an override of a key the run does not have is an error."""
    run_dir = Path(run_dir)
    config_file = run_dir / RUN_CONFIG
    if not config_file.is_file():
        raise SystemExit(f"error: --ckpt {run_dir}: not a run directory ({RUN_CONFIG} not found)")
    cfg = OmegaConf.load(config_file)
    OmegaConf.set_struct(cfg, True)
    try:
        return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except ConfigKeyError as error:
        raise SystemExit(f"error: unknown config key in overrides {list(overrides)}: {error}") from None


def load_run_model(run_dir: str | Path) -> tuple[VideoCaptioner, DictConfig]:
    return load_model_dir(Path(run_dir) / RUN_MODEL)


def train_transform(cfg: DictConfig, model_cfg: DictConfig) -> FrameTransform:
    """Training-time crops (and flips where the data allows them) at the model's input size."""
    return FrameTransform(size=model_cfg.image_size, train=True, hflip=cfg.data.hflip, scale=tuple(cfg.data.crop_scale))


def eval_settings(cfg: DictConfig, model_cfg: DictConfig) -> dict:
    """Keyword arguments of `eval.predict.predict` for a run's config: frames, sampler, transform, decoding."""
    return dict(
        sampler=instantiate(cfg.sampler.eval),
        num_frames=cfg.data.num_frames,
        transform=FrameTransform(size=model_cfg.image_size),
        generation=Generation(cfg.eval.num_beams, cfg.eval.min_new_tokens, cfg.eval.max_new_tokens),
        batch_size=cfg.eval.batch_size,
        num_workers=cfg.train.num_workers,
        precision=cfg.precision,
        backend=cfg.data.backend,
        decode_timeout=cfg.data.decode_timeout,
        max_skip_fraction=cfg.data.max_skip_fraction,
    )
