"""A training checkpoint as a model directory.

A checkpoint folder (`RUN_DIR/checkpoints/<step>/`) holds only the tensors that train and the training state; the
rest of the model is the run's: its starting model directory (recorded in `RUN_DIR/starting_model.json` when the
run starts) with the placement of its `config.yaml` applied. Exporting builds that model, loads the checkpoint's
tensors into it and saves a model directory that captions with the run's own evaluation settings.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from simvlg_video.adapters.placements import placement_from
from simvlg_video.durable import write_text_atomically
from simvlg_video.eval.inference import InferenceConfig, inference_from
from simvlg_video.formats.model_dir import load_model_dir, save_model_dir, stored_tensors
from simvlg_video.model.captioner import VideoCaptioner
from simvlg_video.model.config import ModelConfig
from simvlg_video.model.freeze import apply_freeze_policy, trainable_parts
from simvlg_video.model.parallel import whole_on_cpu
from simvlg_video.precision import compute_dtype
from simvlg_video.train.checkpoint import STATE, TRAINABLE, CheckpointError, copy_trainable, read_trainable
from simvlg_video.train.resume import RUN_CONFIG
from simvlg_video.world import World, gather

STARTING_MODEL = "starting_model.json"  # in RUN_DIR: {"model_dir": path, "exports_placement": bool}
BEST_MODEL = "best_model"  # RUN_DIR/best_model: the best validation checkpoint as a model directory


@dataclass(frozen=True)
class StartingModel:
    """Where a run's model starts, and whether the model it exports names its placement (a video model) or not
    (an image model: the image stage's)."""

    model_dir: Path
    exports_placement: bool = True


def record_starting_model(run_dir: Path, start: StartingModel) -> None:
    """Write RUN_DIR/starting_model.json (rank 0: what a checkpoint of this run is exported against)."""
    body = {"model_dir": str(Path(start.model_dir).resolve()), "exports_placement": start.exports_placement}
    write_text_atomically(Path(run_dir) / STARTING_MODEL, json.dumps(body, indent=1) + "\n")


def read_starting_model(run_dir: Path) -> StartingModel:
    """RUN_DIR/starting_model.json checked key by key; a missing or malformed file is a CheckpointError naming it."""
    path = Path(run_dir) / STARTING_MODEL
    if not path.is_file():
        raise CheckpointError(
            f"{run_dir} has no {STARTING_MODEL} (runs of earlier versions do not record their starting model): "
            "its checkpoints cannot be exported"
        )
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not JSON ({error})") from None
    if not isinstance(body, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(body).__name__}")
    model_dir, exports = body.get("model_dir"), body.get("exports_placement")
    if not isinstance(model_dir, str) or not model_dir:
        raise CheckpointError(f"{path}: model_dir: expected the path of a model directory, got {model_dir!r}")
    if not isinstance(exports, bool):
        raise CheckpointError(f"{path}: exports_placement: expected true or false, got {exports!r}")
    return StartingModel(Path(model_dir), exports)


def is_checkpoint_folder(path: str | Path) -> bool:
    """Whether `path` is a complete checkpoint folder of a run directory (RUN_DIR/checkpoints/<step>/)."""
    path = Path(path)
    return (
        (path / TRAINABLE).is_file()
        and (path / STATE).is_file()
        and path.name.isdigit()
        and (path.parent.parent / RUN_CONFIG).is_file()
    )


def describe_run_model(model_cfg: ModelConfig, run_cfg: DictConfig, exports_placement: bool) -> InferenceConfig:
    """Put the run's placement (a video model's) and evaluation settings into `model_cfg`, as the exported model
    directory records them; returns the settings."""
    inference = inference_from(run_cfg)
    model_cfg.adapter = asdict(placement_from(run_cfg.adapter)) if exports_placement else None
    model_cfg.inference = asdict(inference)
    return inference


def run_model(run_dir: Path) -> tuple[VideoCaptioner, ModelConfig, Path]:
    """(the run's model as it trains, its config with the run's settings, its starting model directory): the
    starting model in the run's precision, with the run's placement applied and the run's trainable parts marked."""
    start = read_starting_model(run_dir)
    try:
        run_cfg = OmegaConf.load(Path(run_dir) / RUN_CONFIG)
    except (OmegaConfBaseException, ValueError) as error:
        raise CheckpointError(f"{Path(run_dir) / RUN_CONFIG} cannot be read ({error})") from None
    model, model_cfg = load_model_dir(start.model_dir, dtype=compute_dtype(run_cfg.precision))
    placement_from(run_cfg.adapter).apply(model)
    apply_freeze_policy(model, trainable_parts(run_cfg.train.trainable, model))
    describe_run_model(model_cfg, run_cfg, start.exports_placement)
    return model, model_cfg, start.model_dir


def export_checkpoint(folder: Path, out_dir: Path) -> Path:
    """Save checkpoint `folder` (RUN_DIR/checkpoints/<step>/) as a model directory at `out_dir`; its tensors are
    checked by name and shape against the run's trainable parts before anything is written."""
    folder = Path(folder)
    if not is_checkpoint_folder(folder):
        raise CheckpointError(
            f"{folder} is not a checkpoint folder of a run (RUN_DIR/checkpoints/<step>/ with {TRAINABLE} and {STATE})"
        )
    model, model_cfg, base_dir = run_model(folder.parent.parent)
    copy_trainable(read_trainable(folder, model), model)
    return save_model_dir(model, model_cfg, out_dir, base_dir=base_dir)


def load_best(
    model: nn.Module, model_cfg: ModelConfig, folder: Path, out_dir: Path, base_dir: Path, world: World
) -> str | None:
    """Load checkpoint `folder`'s tensors into the live `model` (every rank: FSDP shards too) and save it as a model
    directory at `out_dir` (rank 0); `model_cfg` already describes the run. Returns None, or on every rank why the
    checkpoint could not be loaded (the model is then left as it was on the ranks that could not read it)."""
    error = None
    try:
        copy_trainable(read_trainable(folder, model), model)
    except CheckpointError as failure:
        error = str(failure)
    errors = [e for e in gather(error, world) if e is not None]
    if errors:
        return errors[0]
    tensors = whole_on_cpu(stored_tensors(model, model_cfg))  # every rank: FSDP gathers
    if world.is_main:
        save_model_dir(model, model_cfg, out_dir, base_dir=base_dir, tensors=tensors)
    return None
