"""One training stage, end to end: a starting model directory in, a trained and scored model directory out.

`adapt` (image model -> video model) and `pretrain` (parts -> image model) are the same stage with another
starting point: both read a manifest (video clips, or images as clips of one frame), score the starting model when
asked, train with the one captioning loss through `train.trainer`, score again, and export `RUN_DIR/model`.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from simvlg_video.adapters.placements import placement_from
from simvlg_video.data.clips import ClipData, DataConfigError
from simvlg_video.data.manifest import ClipRecord, read_manifest
from simvlg_video.data.samplers import sampler_from
from simvlg_video.data.shards import list_shards
from simvlg_video.errors import BAD_INPUT, OK, SOME_FAILED, SettingsError, UserError, report
from simvlg_video.eval.coco import require_spice_jars
from simvlg_video.eval.inference import inference_from
from simvlg_video.eval.predict import evaluate_split, write_eval
from simvlg_video.eval.runs import run_summary
from simvlg_video.eval.table import metrics_table, training_table
from simvlg_video.eval.visualize import draw_clips
from simvlg_video.export import BEST_MODEL, StartingModel, describe_run_model, load_best, record_starting_model
from simvlg_video.formats.model_dir import load_model_dir, save_model_dir, stored_tensors
from simvlg_video.model.freeze import apply_freeze_policy, trainable_parts
from simvlg_video.model.parallel import is_sharded, whole_on_cpu
from simvlg_video.model.speed import apply_speed_settings
from simvlg_video.precision import compute_dtype
from simvlg_video.train.config import TrainConfig
from simvlg_video.train.launch import check_shared_run_dir, launch_arguments, override_key, rerun_command
from simvlg_video.train.memory import reset_peak_memory
from simvlg_video.train.resume import open_run
from simvlg_video.train.seeding import seed_everything
from simvlg_video.train.trainer import TrainingRun, train
from simvlg_video.world import (
    World,
    broadcast,
    init_world,
    on_main,
    pick_device,
    share_cpu_with_loaders,
    shutdown,
    world_from_env,
)

log = logging.getLogger("simvlg_video.stage")


@dataclass(frozen=True)
class Stage:
    """What sets a stage apart: where its model starts (a model directory, made or found once by rank 0 and
    returned on every rank), the names of its before/after rows, and whether the exported model is a video model
    (its model.yaml names the placement) or an image model."""

    starting_model: Callable[[DictConfig, Path, World], Path]
    module: str = "simvlg_video.adapt"  # the entry point, for the commands a message gives
    before: str = "image model"  # table row and eval file name (`<split>_<before with _>`) of the starting model
    after: str = "adapted"
    exports_placement: bool = True


def clip_data(cfg: DictConfig) -> ClipData:
    """The `data:` settings as the object that reads them; a value left to give (`data.root=???`) is named."""
    missing = [f"data.{key}" for key in cfg.data if OmegaConf.is_missing(cfg.data, key)]
    if missing:
        raise DataConfigError(
            f"{', '.join(missing)} is not set; give it on the command line, e.g. {missing[0]}=/path/to/dataset"
        )
    return instantiate(cfg.data)


def split_records(records: list[ClipRecord], split: str, manifest: Path) -> list[ClipRecord]:
    chosen = [r for r in records if r.split == split]
    if not chosen:
        raise DataConfigError(f"manifest {manifest} has no clips in split {split!r}")
    return chosen


def run(cfg: DictConfig, stage: Stage) -> dict[str, dict[str, float]]:
    """The whole stage; returns the metrics table rows (the starting model's when scored, the trained model's)."""
    try:
        train_cfg: TrainConfig = OmegaConf.to_object(cfg.train)
        compute_dtype(cfg.precision)
    except ValueError as error:  # settings that cannot work together (TrainConfig), an unknown precision
        raise SettingsError(str(error)) from None
    if cfg.eval.spice:
        require_spice_jars()  # before training, not after it
    world = init_world(train_cfg.collective_timeout_min)
    if not world.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        device = pick_device(cfg.device, world)
    except RuntimeError as error:  # a GPU asked for and not there
        raise SettingsError(str(error)) from None
    threads = share_cpu_with_loaders(device, cfg.data.num_workers)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_shared_run_dir(run_dir, world)
    seed_everything(cfg.seed)
    image_dir = stage.starting_model(cfg, run_dir, world)  # a wrong starting point is refused before any work
    data = clip_data(cfg)
    if data.shards:
        list_shards(data.shards)  # missing shards are named before any work
    samplers = [sampler_from(cfg.sampler.train).build(), sampler_from(cfg.sampler.eval).build()]
    placement = placement_from(cfg.adapter)  # the exported model.yaml stores it by name
    manifest = shared_manifest(data, samplers, world)
    cfg.data.manifest = str(manifest.resolve())  # the run's config names the exact data it used
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    # a refused resume stops here, having written nothing
    files = open_run(cfg, run_dir, world, named={override_key(item) for item in overrides})
    if world.is_main:  # what this run's checkpoints are exported against (evaluate --ckpt RUN_DIR/checkpoints/<step>)
        record_starting_model(run_dir, StartingModel(image_dir, stage.exports_placement))
    log.info("compute threads: %d", threads)
    resumed_at = int(files.candidates[0].name) if files.candidates else None
    finished = run_summary(run_dir) if resumed_at == cfg.train.steps else None
    if finished is not None:  # resuming a sweep: this job had completed
        files.log.close()
        log.info("%s already finished; its summary is in metrics.jsonl", run_dir)
        return {stage.after: finished["trained"], **finished.get("best_row", {})}
    records = read_manifest(manifest)
    train_records = [] if data.shards else split_records(records, data.train_split, manifest)
    eval_records = split_records(records, cfg.eval.split, manifest)
    val_records = split_records(records, cfg.eval.val_split, manifest) if cfg.train.eval_every else []
    model, model_cfg = load_model_dir(image_dir, dtype=compute_dtype(cfg.precision))
    model.to(device)
    inference = inference_from(cfg)
    evaluation = dict(inference=inference, image_size=model_cfg.image_size, world=world, spice=cfg.eval.spice)
    rows: dict[str, dict[str, float]] = {}
    try:
        if cfg.eval.before:
            rows[stage.before] = evaluate_once(
                model,
                eval_records,
                run_dir,
                f"{cfg.eval.split}_{stage.before.replace(' ', '_')}",
                files.log,
                desc=stage.before,
                **evaluation,
            )
        placement.apply(model)
        trainable = trainable_parts(cfg.train.trainable, model)
        counts = apply_freeze_policy(model, trainable)
        log.info("parameters: %s", counts)
        apply_speed_settings(model, cfg.precision, cfg.train.activation_checkpointing, cfg.train.compile)
        reset_peak_memory(device)

        def validate(step: int) -> dict[str, float]:
            _, metrics = evaluate_split(model, val_records, desc=f"validate {cfg.eval.val_split}", **evaluation)
            files.log({"phase": "val", "step": step, "split": cfg.eval.val_split, **metrics})
            return metrics

        training = TrainingRun(
            train_cfg, cfg.precision, cfg.seed, data, samplers[0], model_cfg.image_size, cfg.eval.best_metric
        )
        result = train(
            model,
            training,
            train_records,
            device,
            world,
            files,
            validate if val_records else None,
            rerun=lambda settings: rerun_command(stage.module, overrides, run_dir.resolve(), world, settings),
        )

        predictions, rows[stage.after] = evaluate_split(model, eval_records, desc=f"{stage.after} model", **evaluation)
        describe_run_model(model_cfg, cfg, stage.exports_placement)
        tensors = whole_on_cpu(stored_tensors(model, model_cfg))  # every rank: FSDP gathers
        if world.is_main:
            write_eval(run_dir / "eval", cfg.eval.split, predictions, rows[stage.after])
            save_model_dir(model, model_cfg, run_dir / "model", base_dir=image_dir, tensors=tensors)
            if cfg.eval.visualize and not is_sharded(model):  # a sharded model runs only with every rank
                pictures = draw_clips(
                    model, model_cfg, inference, eval_records[: cfg.eval.visualize], run_dir / "visualize"
                )
                log.info("drew %d test clips into %s", len(pictures), run_dir / "visualize")
            elif cfg.eval.visualize:
                log.info(
                    "no pictures from a sharded (FSDP) run; draw them from the exported model: "
                    "python -m simvlg_video.visualize --ckpt %s VIDEO",
                    run_dir,
                )
        best = broadcast(files.checkpoints.best(), world)
        best_row, problem = {}, None
        if best is not None:  # the best validation checkpoint: exported, and scored beside the last model
            folder = files.checkpoints.folder / f"{best['step']:08d}"
            problem = load_best(model, model_cfg, folder, run_dir / BEST_MODEL, image_dir, world)
            if problem is not None:
                log.warning("the best checkpoint (step %d) is neither exported nor scored: %s", best["step"], problem)
            else:
                scored = (predictions, rows[stage.after]) if best["step"] == cfg.train.steps else None
                best_predictions, best_metrics = scored or evaluate_split(
                    model, eval_records, desc="best model", **evaluation
                )
                best_row = {f"{stage.after}, best (step {best['step']})": best_metrics}
                if world.is_main:
                    write_eval(run_dir / "eval", f"{cfg.eval.split}_best", best_predictions, best_metrics)
        rows.update(best_row)
        summary = {
            "phase": "summary",
            "train_steps": cfg.train.steps,
            "train_clips": result.clips,  # clips trained in this session, over all ranks
            "train_clips_per_s": result.clips_per_second,
            "train_peak_memory_gib": result.peak_memory_gib,
            "train_memory_kind": result.memory_kind,
            "train_data_wait_s": result.data_wait_seconds,
            "world_size": world.world_size,
            "nonfinite_steps_skipped": result.skipped_nonfinite,
            "train_clips_skipped": result.skipped_clips,
            "eval_clips_skipped": len(predictions.skipped),
            "best": best,
            "best_row": best_row,  # {row name: the best checkpoint's scores} when it was scored
            "best_model_problem": problem,  # why the best checkpoint was not exported, when it was not
            **counts,
        }
        files.log({**summary, "trained": rows[stage.after]})  # the trained model's scores, either stage
    finally:
        files.log.close()
    if world.is_main:
        print(f"\n{metrics_table(rows)}\n\n{training_table(summary)}\n\nRun directory: {run_dir}")
        if (run_dir / "visualize").is_dir():
            print(f"Pictures of {cfg.eval.visualize} test clips: {run_dir / 'visualize'}")
    return rows


def shared_manifest(data: ClipData, samplers: list, world: World) -> Path:
    """The run's manifest, with what its frame samplers need probed; rank 0 finds it (generating the synthetic set
    if needed) while the others wait for it without a time limit, and a failure there is raised on every rank
    rather than leaving them waiting."""

    def find() -> Path:
        try:
            return data.manifest_for(samplers)
        except (ValueError, FileNotFoundError) as failure:  # a bad manifest, a generator's refusal, a missing file
            raise DataConfigError(str(failure)) from None

    return on_main(find, world, "probing the manifest")


def evaluate_once(
    model: torch.nn.Module, records: list[ClipRecord], run_dir: Path, name: str, run_log, **kwargs
) -> dict[str, float]:
    """Score the image model, or read its scores back when a resumed run already did."""
    saved = run_dir / "eval" / f"{name}_metrics.json"
    if saved.is_file():
        try:
            metrics = json.loads(saved.read_text())["metrics"]
            log.info("image model scores from %s", saved)
            return metrics
        except (ValueError, KeyError, TypeError) as error:
            log.warning("%s is damaged (%s); scoring the image model again", saved, error)
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


def run_and_release(cfg: DictConfig, stage: Stage) -> dict[str, dict[str, float]]:
    """`run`, then what the run held is released, whether it finished or failed (a sweep runs many in one
    process)."""
    try:
        return run(cfg, stage)
    finally:
        release_memory()


def launch(main: Callable[[], None], arguments: list[str]) -> int:
    """Call a Hydra `main` alone or under torchrun (every rank and every restart gets the one run directory:
    `launch_arguments`); returns the exit status. Hydra refuses a bad command line (an unknown key, a wrong type,
    an unknown option) with status 1 before any job starts: a usage error, status 2."""
    world = world_from_env()  # the process group is joined by `run`, with the run's collective timeout
    try:
        sys.argv = [sys.argv[0], *launch_arguments(arguments, world)]
    except UserError as error:
        return report(error)
    try:
        main()
    except SystemExit as stop:
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
        if stop.code == SOME_FAILED and not HydraConfig.initialized():
            return BAD_INPUT
        return stop.code if isinstance(stop.code, int) else BAD_INPUT if stop.code else OK
    finally:
        shutdown(world)
    return OK
