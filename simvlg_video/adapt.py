"""Adapt an image captioner to video: insert temporal adapters, fine-tune with one captioning loss, evaluate.

    python -m simvlg_video.adapt                                  # the built-in demo (bundled tiny model, shapes set)
    python -m simvlg_video.adapt --image-ckpt MODEL_DIR [hydra overrides ...]
    python -m simvlg_video.adapt --image-ckpt REFERENCE.pth vit_weights=eva_vit_g.pth lm_path=opt-2.7b [...]
    python -m simvlg_video.adapt -m data.num_frames=2,4 adapter=none,reference   # a sweep
    torchrun --nproc_per_node 8 -m simvlg_video.adapt [...]                      # DDP (train.strategy=fsdp: FSDP)
    python -m simvlg_video.adapt hydra.run.dir=RUN_DIR resume=auto [same overrides] # continue a stopped run

Writes RUN_DIR/{config.yaml, metrics.jsonl, tensorboard/, checkpoints/, eval/, model/} and prints a before/after
table.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from simvlg_video.adapters.patch import adapter_parameters
from simvlg_video.data.manifest import ClipRecord, read_manifest
from simvlg_video.data.source import resolve_manifest
from simvlg_video.eval.predict import evaluate_split, write_eval
from simvlg_video.eval.runs import run_summary
from simvlg_video.eval.table import metrics_table, training_table
from simvlg_video.model.captioner import VideoCaptioner
from simvlg_video.model.freeze import ADAPTERS, apply_freeze_policy
from simvlg_video.model.model_dir import load_model_dir, save_model_dir
from simvlg_video.model.performance import apply_speed_settings
from simvlg_video.model.reference_ckpt import import_reference, load_model_config
from simvlg_video.run_dir import eval_settings, train_transform
from simvlg_video.runtime import flags_to_overrides, seed_everything, torchrun_overrides
from simvlg_video.train.checkpoint import full_trainable_tensors
from simvlg_video.train.distributed import World, broadcast, device_for, init_world, shutdown
from simvlg_video.train.resume import open_run
from simvlg_video.train.run_log import RunLog
from simvlg_video.train.loop import reset_peak_memory
from simvlg_video.train.trainer import train

log = logging.getLogger("simvlg_video.adapt")
BUNDLED_IMAGE_MODEL = Path(__file__).resolve().parent / "assets" / "tiny_image_model"


def image_model_dir(image_ckpt: str | None) -> Path:
    """The image model to start from: the given model directory or reference checkpoint file, or the bundled one."""
    if image_ckpt is None:
        return BUNDLED_IMAGE_MODEL
    path = Path(image_ckpt).expanduser()
    if not path.exists():
        raise SystemExit(f"error: --image-ckpt {path}: no such file or directory")
    return path


def check_frozen_sources(cfg: DictConfig, source: Path) -> None:
    """A reference checkpoint file holds only trainable tensors: it needs the frozen ViT file and LLM folder too.

    A model directory names its own frozen parts, so giving them as well is an error rather than silently unused.
    """
    given = [key for key in ("vit_weights", "lm_path") if cfg.get(key)]
    if source.is_dir() and given:
        raise SystemExit(
            f"error: {' and '.join(given)} only apply to a reference checkpoint file; the model directory {source} "
            "names its own frozen parts in model.yaml"
        )
    missing = [key for key in ("vit_weights", "lm_path") if key not in given]
    if source.is_file() and missing:
        what = {"vit_weights": "vit_weights=PATH (the frozen ViT's weights, e.g. BLIP-2's eva_vit_g.pth)",
                "lm_path": "lm_path=PATH (the LLM's Hugging Face folder)"}
        raise SystemExit(
            f"error: --image-ckpt {source} is a reference checkpoint file and also needs "
            f"{' and '.join(what[key] for key in missing)}"
        )


def load_image_model(cfg: DictConfig, source: Path) -> tuple[VideoCaptioner, DictConfig]:
    """Our model directory as it is, or the reference's checkpoint file imported onto `vit_weights` and `lm_path`."""
    if source.is_dir():
        return load_model_dir(source)
    check_frozen_sources(cfg, source)
    try:
        model, model_cfg = import_reference(
            source, cfg.vit_weights, cfg.lm_path, load_model_config(cfg.model_config), allow_pickle=cfg.allow_pickle
        )
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: --image-ckpt {source}: {error}") from None
    if model_cfg.get("adapter") is not None:
        raise SystemExit(
            f"error: --image-ckpt {source} is a video checkpoint (temporal modules in ViT blocks "
            f"{model_cfg.adapter.blocks}); adapt starts from an image model. To get it as a model directory, run "
            "python -m simvlg_video.model.reference_ckpt"
        )
    return model, model_cfg


def trainable_parts(cfg: DictConfig, model: VideoCaptioner) -> list[str]:
    """`train.trainable`, less `adapters` when the chosen placement adds none (adapter=none: the floor)."""
    trainable = list(cfg.train.trainable)
    if ADAPTERS in trainable and not adapter_parameters(model):
        log.info("the adapter choice adds no modules; training %s", ", ".join(t for t in trainable if t != ADAPTERS))
        trainable.remove(ADAPTERS)
    return trainable


def split_records(records: list[ClipRecord], split: str, manifest: Path) -> list[ClipRecord]:
    chosen = [r for r in records if r.split == split]
    if not chosen:
        raise SystemExit(f"error: manifest {manifest} has no clips in split {split!r}")
    return chosen


def run(cfg: DictConfig) -> dict[str, dict[str, float]]:
    """The whole adaptation; returns the metrics table rows (image model, adapted model)."""
    world = init_world()
    if not world.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    image_dir = image_model_dir(cfg.image_ckpt)
    check_frozen_sources(cfg, image_dir)
    device = device_for(world, cfg.device)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    manifest = shared_manifest(cfg, world)
    cfg.data.manifest = str(manifest.resolve())  # the run's config names the exact data it used
    checkpoints, resume_from, run_log = open_run(cfg, run_dir, world)
    finished = run_summary(run_dir) if resume_from is not None and int(resume_from.name) == cfg.train.steps else None
    if finished is not None:  # resuming a sweep: this job had completed
        run_log.close()
        log.info("%s already finished; its summary is in metrics.jsonl", run_dir)
        return {"adapted": finished["adapted"]}
    records = read_manifest(manifest)
    train_records = split_records(records, cfg.data.train_split, manifest)
    eval_records = split_records(records, cfg.eval.split, manifest)
    val_records = split_records(records, cfg.eval.val_split, manifest) if cfg.train.eval_every else []
    model, model_cfg = load_image_model(cfg, image_dir)
    model.to(device)
    settings = eval_settings(cfg, model_cfg)
    eval_kwargs = dict(settings, spice=cfg.eval.spice, world=world)
    rows: dict[str, dict[str, float]] = {}
    try:
        if cfg.eval.before:
            rows["image model"] = evaluate_once(model, eval_records, run_dir, f"{cfg.eval.split}_image_model",
                                                run_log, desc="image model", **eval_kwargs)

        instantiate(cfg.adapter)(model)
        trainable = trainable_parts(cfg, model)
        counts = apply_freeze_policy(model, trainable)
        log.info("parameters: %s", counts)
        apply_speed_settings(model, cfg.precision, cfg.train.activation_checkpointing, cfg.train.compile)
        reset_peak_memory(device)

        def validate(step: int) -> dict[str, float]:
            _, metrics = evaluate_split(model, val_records, desc=f"validate {cfg.eval.val_split}", **eval_kwargs)
            run_log({"phase": "val", "step": step, "split": cfg.eval.val_split, **metrics})
            return metrics

        result = train(cfg, model, trainable, train_records, train_transform(cfg, model_cfg), device, world,
                       checkpoints, resume_from, run_log, validate if val_records else None)

        predictions, rows["adapted"] = evaluate_split(model, eval_records, desc="adapted model", **eval_kwargs)
        tensors = full_trainable_tensors(model, trainable)
        if world.is_main:
            write_eval(run_dir / "eval", cfg.eval.split, predictions, rows["adapted"])
            model_cfg.adapter = cfg.adapter
            model_cfg.trainable = trainable
            save_model_dir(model, model_cfg, run_dir / "model", base_dir=image_dir if image_dir.is_dir() else None,
                           tensors=tensors)
        summary = {
            "phase": "summary", "train_steps": cfg.train.steps, "train_videos_per_s": result.videos_per_second,
            "train_peak_memory_gib": result.peak_memory_gib, "train_memory_kind": result.memory_kind,
            "train_data_wait_s": result.data_wait_seconds, "world_size": world.world_size,
            "nonfinite_steps_skipped": result.skipped_nonfinite, "train_clips_skipped": result.skipped_clips,
            "eval_clips_skipped": len(predictions.skipped),
            "best": checkpoints.best(), **counts,
        }
        run_log({**summary, "adapted": rows["adapted"]})
    finally:
        run_log.close()
    if world.is_main:
        print(f"\n{metrics_table(rows)}\n\n{training_table(summary)}\n\nRun directory: {run_dir}")
    return rows


def shared_manifest(cfg: DictConfig, world: World) -> Path:
    """The run's manifest; rank 0 finds it (generating the synthetic set if needed) while the others wait, and a
    failure there is raised on every rank rather than leaving the others waiting."""
    found, error = None, None
    if world.is_main:
        try:
            found = resolve_manifest(cfg.data)
        except (ValueError, FileNotFoundError) as failure:
            error = failure
    found, error = broadcast((found, error), world)
    if error is not None:
        raise error
    return found


def evaluate_once(model: VideoCaptioner, records: list[ClipRecord], run_dir: Path, name: str, run_log: RunLog,
                  **kwargs) -> dict[str, float]:
    """Score the image model, or read its scores back when a resumed run already did."""
    saved = run_dir / "eval" / f"{name}_metrics.json"
    if saved.is_file():
        log.info("image model scores from %s", saved)
        return json.loads(saved.read_text())["metrics"]
    predictions, metrics = evaluate_split(model, records, **kwargs)
    if kwargs["world"].is_main:
        write_eval(run_dir / "eval", name, predictions, metrics)
    run_log({"phase": "eval", "model": "image", **metrics})
    return metrics


def release_memory() -> None:
    """Free what a finished (or failed) run held, so the next run of a sweep starts from the same state."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@hydra.main(version_base="1.3", config_path="configs", config_name="adapt")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    finally:  # the run's model, optimiser and loader workers are unreachable now
        release_memory()


if __name__ == "__main__":
    arguments = flags_to_overrides(sys.argv[1:], {"--image-ckpt": "image_ckpt"})
    world = init_world()
    sys.argv = [sys.argv[0], *arguments, *torchrun_overrides(arguments, world)]
    try:
        main()
    finally:
        shutdown(world)
