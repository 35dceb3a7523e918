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
before/after table.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from simvlg_video.configs import register_schemas
from simvlg_video.data.clips import ClipData, DataConfigError
from simvlg_video.data.dataset import TooManySkippedClips
from simvlg_video.data.manifest import ClipRecord, ManifestError, read_manifest
from simvlg_video.eval.inference import InferenceConfig
from simvlg_video.eval.predict import evaluate_split, write_eval
from simvlg_video.eval.runs import run_summary
from simvlg_video.eval.table import metrics_table, training_table
from simvlg_video.eval.visualize import draw_clips
from simvlg_video.model.adapter_protocol import ADAPTERS, adapter_parameters
from simvlg_video.model.freeze import apply_freeze_policy
from simvlg_video.model.image_checkpoint import (
    BLIP2_FOLDER,
    MODEL_DIR,
    import_image_checkpoint,
    inspect_image_checkpoint,
)
from simvlg_video.model.fingerprint import FrozenSourceChanged
from simvlg_video.model.model_dir import (
    ModelDirError,
    load_model_dir,
    read_model_config,
    save_model_dir,
    stored_tensors,
)
from simvlg_video.model.parallel import is_sharded, whole_on_cpu
from simvlg_video.model.speed import apply_speed_settings
from simvlg_video.model.tensor_io import NotATensorFile, StateDictMismatch
from simvlg_video.train.checkpoint import open_run
from simvlg_video.train.launch import flags_to_overrides, launch_overrides
from simvlg_video.train.loop import TrainConfig, reset_peak_memory
from simvlg_video.train.trainer import TrainingRun, train
from simvlg_video.world import (
    World,
    broadcast,
    compute_dtype,
    init_world,
    pick_device,
    seed_everything,
    share_cpu_with_loaders,
    shutdown,
)

log = logging.getLogger("simvlg_video.adapt")
# Bad input, named by the code that found it: reported as one line, never a traceback.
USER_ERRORS = (ManifestError, ModelDirError, FrozenSourceChanged, StateDictMismatch, NotATensorFile, DataConfigError,
               TooManySkippedClips)
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
        raise SystemExit(f"error: --image-ckpt {source}: no such file or directory")
    try:
        found = inspect_image_checkpoint(source, cfg.allow_pickle)
    except ValueError as error:
        raise SystemExit(f"error: --image-ckpt {source}: {error}") from None
    given = [key for key in ("vit_weights", "lm_path", "model_config", "prompt") if cfg.get(key) is not None]
    if found.kind == MODEL_DIR:
        if given:
            raise SystemExit(f"error: {' and '.join(given)} only apply to an imported checkpoint; the model "
                             f"directory {source} names its own parts in model.yaml")
        return refuse_video_model(source, source)
    allowed = {*found.needs, "prompt", *(("model_config",) if found.kind != BLIP2_FOLDER else ())}
    extra = [key for key in given if key not in allowed]
    if extra:
        holds = ", which holds its ViT, LLM and architecture" if found.kind == BLIP2_FOLDER else ""
        raise SystemExit(f"error: --image-ckpt {source} is {found.description}{holds}: leave out "
                         f"{' and '.join(extra)}")
    missing = [key for key in found.needs if key not in given]
    if missing:
        what = {"vit_weights": "vit_weights=PATH (the frozen ViT's weights, e.g. BLIP-2's eva_vit_g.pth)",
                "lm_path": "lm_path=PATH (the LLM's Hugging Face folder)"}
        raise SystemExit(f"error: --image-ckpt {source} is {found.description} and also needs "
                         f"{' and '.join(what[key] for key in missing)}")
    imported, error = run_dir / IMPORTED_IMAGE_MODEL, None
    if world.is_main and not (imported / "model.yaml").is_file():
        try:
            import_image_checkpoint(found, imported, cfg.vit_weights, cfg.lm_path, cfg.model_config, cfg.prompt,
                                    cfg.allow_pickle)
        except (ValueError, FileNotFoundError) as failure:  # named missing, unexpected, mis-shaped tensors, files
            error = f"error: --image-ckpt {source}: {failure}"
    error = broadcast(error, world)
    if error is not None:
        raise SystemExit(error)
    return refuse_video_model(imported, source)


def refuse_video_model(model_dir: Path, given: Path) -> Path:
    """adapt starts from an image model: a video model (its model.yaml names a placement) is refused before any work."""
    try:
        adapter = read_model_config(model_dir / "model.yaml").adapter
    except ModelDirError as error:
        raise SystemExit(f"error: --image-ckpt {given}: {error}") from None
    if adapter is not None:
        how = ("import it as a model directory with python -m simvlg_video.model.lavis_checkpoint, then give that to"
               if given.is_file() else "give it to")
        raise SystemExit(
            f"error: --image-ckpt {given} is a video checkpoint (adapter {adapter.get('_target_', adapter)}); adapt "
            f"starts from an image model. To caption with it, {how} caption or evaluate --ckpt")
    return model_dir


def clip_data(cfg: DictConfig) -> ClipData:
    """The `data:` settings as the object that reads them; a value left to give (`data.root=???`) is named."""
    missing = [f"data.{key}" for key in cfg.data if OmegaConf.is_missing(cfg.data, key)]
    if missing:
        raise SystemExit(f"error: {', '.join(missing)} is not set; give it on the command line, e.g. "
                         f"{missing[0]}=/path/to/dataset")
    return instantiate(cfg.data)


def inference_settings(cfg: DictConfig) -> InferenceConfig:
    """How this run captions (evaluation, the exported model's default): frames and decoding of the run."""
    return InferenceConfig(num_frames=cfg.data.num_frames, sampler=OmegaConf.to_container(cfg.sampler.eval),
                           backend=cfg.data.backend, decode_timeout=cfg.data.decode_timeout,
                           num_beams=cfg.eval.num_beams, min_new_tokens=cfg.eval.min_new_tokens,
                           max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size,
                           num_workers=cfg.train.num_workers, precision=cfg.precision)


def trainable_parts(cfg: DictConfig, model: torch.nn.Module) -> list[str]:
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
    try:
        train_cfg: TrainConfig = OmegaConf.to_object(cfg.train)
        compute_dtype(cfg.precision)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    world = init_world()
    if not world.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    device = pick_device(cfg.device, world)
    threads = share_cpu_with_loaders(device, cfg.train.num_workers)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    image_dir = image_model_dir(cfg, run_dir, world)  # a wrong --image-ckpt is refused before any work
    data = clip_data(cfg)
    samplers = [instantiate(cfg.sampler.train), instantiate(cfg.sampler.eval)]
    manifest = shared_manifest(data, samplers, world)
    cfg.data.manifest = str(manifest.resolve())  # the run's config names the exact data it used
    files = open_run(cfg, run_dir, world)  # a refused resume stops here, having written nothing
    log.info("compute threads: %d", threads)
    resumed_at = int(files.resume_from.name) if files.resume_from is not None else None
    finished = run_summary(run_dir) if resumed_at == cfg.train.steps else None
    if finished is not None:  # resuming a sweep: this job had completed
        files.log.close()
        log.info("%s already finished; its summary is in metrics.jsonl", run_dir)
        return {"adapted": finished["adapted"]}
    records = read_manifest(manifest)
    train_records = split_records(records, data.train_split, manifest)
    eval_records = split_records(records, cfg.eval.split, manifest)
    val_records = split_records(records, cfg.eval.val_split, manifest) if cfg.train.eval_every else []
    model, model_cfg = load_model_dir(image_dir, dtype=compute_dtype(cfg.precision))
    model.to(device)
    inference = inference_settings(cfg)
    evaluation = dict(inference=inference, image_size=model_cfg.image_size, world=world, spice=cfg.eval.spice)
    rows: dict[str, dict[str, float]] = {}
    try:
        if cfg.eval.before:
            rows["image model"] = evaluate_once(model, eval_records, run_dir, f"{cfg.eval.split}_image_model",
                                                files.log, desc="image model", **evaluation)
        instantiate(cfg.adapter).apply(model)
        trainable = trainable_parts(cfg, model)
        counts = apply_freeze_policy(model, trainable)
        log.info("parameters: %s", counts)
        apply_speed_settings(model, cfg.precision, cfg.train.activation_checkpointing, cfg.train.compile)
        reset_peak_memory(device)

        def validate(step: int) -> dict[str, float]:
            _, metrics = evaluate_split(model, val_records, desc=f"validate {cfg.eval.val_split}", **evaluation)
            files.log({"phase": "val", "step": step, "split": cfg.eval.val_split, **metrics})
            return metrics

        training = TrainingRun(train_cfg, cfg.precision, cfg.seed, data, samplers[0], model_cfg.image_size,
                               cfg.eval.best_metric)
        result = train(model, training, train_records, device, world, files, validate if val_records else None)

        predictions, rows["adapted"] = evaluate_split(model, eval_records, desc="adapted model", **evaluation)
        model_cfg.adapter = OmegaConf.to_container(cfg.adapter, resolve=True)
        model_cfg.inference = asdict(inference)
        tensors = whole_on_cpu(stored_tensors(model, model_cfg))  # every rank: FSDP gathers
        if world.is_main:
            write_eval(run_dir / "eval", cfg.eval.split, predictions, rows["adapted"])
            save_model_dir(model, model_cfg, run_dir / "model", base_dir=image_dir, tensors=tensors)
            if cfg.eval.visualize and not is_sharded(model):  # a sharded model runs only with every rank
                pictures = draw_clips(model, model_cfg, inference, eval_records[: cfg.eval.visualize],
                                      run_dir / "visualize")
                log.info("drew %d test clips into %s", len(pictures), run_dir / "visualize")
            elif cfg.eval.visualize:
                log.info("no pictures from a sharded (FSDP) run; draw them from the exported model: "
                         "python -m simvlg_video.visualize --ckpt %s VIDEO", run_dir)
        summary = {
            "phase": "summary", "train_steps": cfg.train.steps, "train_videos_per_s": result.videos_per_second,
            "train_peak_memory_gib": result.peak_memory_gib, "train_memory_kind": result.memory_kind,
            "train_data_wait_s": result.data_wait_seconds, "world_size": world.world_size,
            "nonfinite_steps_skipped": result.skipped_nonfinite, "train_clips_skipped": result.skipped_clips,
            "eval_clips_skipped": len(predictions.skipped),
            "best": files.checkpoints.best(), **counts,
        }
        files.log({**summary, "adapted": rows["adapted"]})
    finally:
        files.log.close()
    if world.is_main:
        print(f"\n{metrics_table(rows)}\n\n{training_table(summary)}\n\nRun directory: {run_dir}")
        if (run_dir / "visualize").is_dir():
            print(f"Pictures of {cfg.eval.visualize} test clips: {run_dir / 'visualize'}")
    return rows


def shared_manifest(data: ClipData, samplers: list, world: World) -> Path:
    """The run's manifest, with what its frame samplers need probed; rank 0 finds it (generating the synthetic set
    if needed) while the others wait, and a failure there is raised on every rank rather than leaving them waiting."""
    found, error = None, None
    if world.is_main:
        try:
            found = data.manifest_for(samplers)
        except (ValueError, FileNotFoundError) as failure:
            error = f"error: {failure}"
    found, error = broadcast((found, error), world)
    if error is not None:
        raise SystemExit(error)
    return found


def evaluate_once(model: torch.nn.Module, records: list[ClipRecord], run_dir: Path, name: str, run_log,
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


@hydra.main(version_base="1.3", config_path="pkg://simvlg_video.configs", config_name="adapt")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except USER_ERRORS as error:  # what a user can act on: one line naming the file, key or setting
        raise SystemExit(f"error: {error}") from None
    finally:  # the run's model, optimiser and loader workers are unreachable now
        release_memory()


if __name__ == "__main__":
    arguments = flags_to_overrides(sys.argv[1:], {"--image-ckpt": "image_ckpt"})
    world = init_world()
    sys.argv = [sys.argv[0], *launch_overrides(arguments, world), *arguments]  # the user's arguments win
    try:
        main()
    finally:
        shutdown(world)
