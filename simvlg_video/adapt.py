"""Adapt an image captioner to video: insert temporal adapters, fine-tune with one captioning loss, evaluate.

    python -m simvlg_video.adapt                                  # the built-in demo (bundled tiny model, shapes set)
    python -m simvlg_video.adapt --image-ckpt MODEL_DIR [hydra overrides ...]
    python -m simvlg_video.adapt --image-ckpt REFERENCE.pth vit_weights=eva_vit_g.pth lm_path=opt-2.7b [...]
    python -m simvlg_video.adapt -m data.num_frames=2,4 adapter=none,reference   # a sweep

Writes RUN_DIR/{config.yaml, metrics.jsonl, checkpoints/, eval/, model/} and prints a before/after table.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from simvlg_video.adapters.patch import adapter_parameters
from simvlg_video.data.dataset import VideoClipDataset, build_loader
from simvlg_video.data.manifest import ClipRecord, read_manifest
from simvlg_video.data.source import resolve_manifest
from simvlg_video.eval.predict import evaluate_split, write_eval
from simvlg_video.eval.table import metrics_table
from simvlg_video.model.captioner import VideoCaptioner
from simvlg_video.model.freeze import ADAPTERS, apply_freeze_policy
from simvlg_video.model.model_dir import load_model_dir, save_model_dir
from simvlg_video.model.performance import apply_speed_settings
from simvlg_video.model.reference_ckpt import import_reference, load_model_config
from simvlg_video.run_dir import eval_settings, train_transform
from simvlg_video.runtime import JsonlLog, flags_to_overrides, pick_device, seed_everything
from simvlg_video.train.batches import TrainBatches
from simvlg_video.train.checkpoint import save_checkpoint
from simvlg_video.train.loop import fit
from simvlg_video.train.optim import build_optimizer, warmup_cosine

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
    image_dir = image_model_dir(cfg.image_ckpt)
    check_frozen_sources(cfg, image_dir)
    device = pick_device(cfg.device)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    manifest = resolve_manifest(cfg.data)
    cfg.data.manifest = str(manifest.resolve())  # the run's config names the exact data it used
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    metrics_log = JsonlLog(run_dir / "metrics.jsonl")
    records = read_manifest(manifest)
    train_records = split_records(records, cfg.data.train_split, manifest)
    eval_records = split_records(records, cfg.eval.split, manifest)
    model, model_cfg = load_image_model(cfg, image_dir)
    model.to(device)
    settings = eval_settings(cfg, model_cfg)
    eval_kwargs = dict(settings, spice=cfg.eval.spice)
    rows: dict[str, dict[str, float]] = {}
    if cfg.eval.before:
        predictions, rows["image model"] = evaluate_split(model, eval_records, desc="image model", **eval_kwargs)
        write_eval(run_dir / "eval", f"{cfg.eval.split}_image_model", predictions, rows["image model"])
        metrics_log({"phase": "eval", "model": "image", **rows["image model"]})

    instantiate(cfg.adapter)(model)
    trainable = trainable_parts(cfg, model)
    counts = apply_freeze_policy(model, trainable)
    log.info("parameters: %s", counts)
    apply_speed_settings(model, cfg.precision, cfg.train.activation_checkpointing, cfg.train.compile)
    dataset = VideoClipDataset(
        train_records, num_frames=cfg.data.num_frames, sampler=instantiate(cfg.sampler.train), train=True,
        seed=cfg.seed, backend=cfg.data.backend, decode_timeout=cfg.data.decode_timeout,
    )
    loader = build_loader(dataset, cfg.train.batch_size, shuffle=True, num_workers=cfg.train.num_workers,
                          seed=cfg.seed, drop_last=True, max_skip_fraction=cfg.data.max_skip_fraction)
    batches = TrainBatches(loader, train_transform(cfg, model_cfg), device, seed=cfg.seed)
    optimizer = build_optimizer(model, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = warmup_cosine(optimizer, cfg.train.warmup_steps, cfg.train.steps, cfg.train.warmup_start_lr,
                              cfg.train.min_lr)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = fit(model, iter(batches), optimizer, scheduler, cfg.train.steps, precision=cfg.precision,
                 grad_clip=cfg.train.grad_clip, log_every=cfg.train.log_every, on_log=metrics_log, desc="adapt")
    save_checkpoint(run_dir, result.steps, model, trainable, optimizer, scheduler)

    predictions, rows["adapted"] = evaluate_split(model, eval_records, desc="adapted model", **eval_kwargs)
    write_eval(run_dir / "eval", cfg.eval.split, predictions, rows["adapted"])
    model_cfg.adapter = cfg.adapter
    model_cfg.trainable = trainable
    save_model_dir(model, model_cfg, run_dir / "model", base_dir=image_dir if image_dir.is_dir() else None)

    summary = {
        "phase": "summary", "train_steps": result.steps, "train_videos_per_s": result.videos_per_second,
        "train_peak_memory_gib": result.peak_memory_gib, "train_memory_kind": result.memory_kind,
        "nonfinite_steps_skipped": result.skipped_nonfinite, "train_clips_skipped": len(batches.skipped),
        "eval_clips_skipped": len(predictions.skipped), **counts,
    }
    metrics_log({**summary, "adapted": rows["adapted"]})
    print(f"\n{metrics_table(rows)}\n")
    print(f"{result.steps} steps at {result.videos_per_second:.1f} videos/s; skipped clips: "
          f"{len(batches.skipped)} in training, {len(predictions.skipped)} in evaluation. Run directory: {run_dir}")
    return rows


@hydra.main(version_base="1.3", config_path="configs", config_name="adapt")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *flags_to_overrides(sys.argv[1:], {"--image-ckpt": "image_ckpt"})]
    main()
