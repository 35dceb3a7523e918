"""Caption a split with a trained model and score it against the manifest's references.

    python -m simvlg_video.evaluate --ckpt RUN_DIR [eval.split=val] [eval.num_beams=3 data.num_frames=8 ...]
    python -m simvlg_video.evaluate --ckpt MODEL_DIR --manifest ROOT/manifest.checked.jsonl [eval.split=test]
    python -m simvlg_video.evaluate --ckpt RUN_DIR/checkpoints/00002000 [overrides]
    torchrun --nproc_per_node 8 -m simvlg_video.evaluate --ckpt RUN_DIR [overrides]

A run directory scores the split its run scored, on the run's manifest; a model directory needs --manifest. A
checkpoint folder of a run is exported into a temporary model directory first (the run's starting model, its
placement and settings, the checkpoint's tensors) and scored like its run. Under torchrun the clips are split over
the processes (each on the GPU of its LOCAL_RANK) and rank 0 scores the gathered captions and writes the files.
Settings are overrides with the keys of adapt's config (listed below) and default to those the model was evaluated
with (model.yaml, `inference:`).

Results go to <RUN_DIR or MODEL_DIR>/eval/<split>_predictions.json and <split>_metrics.json when the settings are
the model's own (a checkpoint folder's to RUN_DIR/eval/<split>_step<N>_...). Other settings write beside them under
a name that says which ones differ, e.g. eval/test_eval.num_beams=1_metrics.json (a long list:
eval/test_settings-<hash>_metrics.json; the metrics file names every setting), so the files a run wrote about
itself are never replaced by other settings' results.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from simvlg_video.configs.commands import command_parser, open_for_command, split_overrides
from simvlg_video.data.manifest import read_manifest
from simvlg_video.errors import UsageError, exit_status
from simvlg_video.eval.coco import require_spice_jars
from simvlg_video.eval.inference import InferenceConfig
from simvlg_video.eval.predict import evaluate_split, write_eval
from simvlg_video.export import export_checkpoint, is_checkpoint_folder
from simvlg_video.train.resume import RUN_CONFIG
from simvlg_video.world import World, init_world, shutdown

_LONGEST_TAG = 80


def flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as {dotted key: value}."""
    out = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def settings_tag(own: InferenceConfig, used: InferenceConfig, extra: Sequence[str] = ()) -> str:
    """A file-name part naming the settings of `used` that differ from the model's `own` (and `extra` ones); empty
    when none differ."""
    own_flat, used_flat = flat(asdict(own)), flat(asdict(used))
    parts = [f"{key}={value}" for key, value in used_flat.items() if own_flat.get(key) != value]
    tag = re.sub(r"[^\w.=,+-]", "-", ",".join([*parts, *extra]))
    if len(tag) > _LONGEST_TAG:
        return "settings-" + hashlib.sha1(tag.encode()).hexdigest()[:10]
    return tag


def evaluate(
    ckpt: Path, overrides: Sequence[str] = (), manifest: Path | None = None, world: World = World()
) -> dict[str, float]:
    """Score a split with the model of `ckpt` (a run directory, a model directory, or a checkpoint folder of a run,
    exported into a temporary model directory) under `overrides`; writes the eval files (rank 0) and returns the
    metrics (every rank). Under torchrun each rank captions every world_size-th clip. Bad input is a UserError."""
    if not is_checkpoint_folder(ckpt):
        return score_model(ckpt, overrides, manifest, world)
    with tempfile.TemporaryDirectory(prefix="simvlg-checkpoint-") as scratch:
        model_dir = export_checkpoint(Path(ckpt), Path(scratch) / "model")
        return score_model(model_dir, overrides, manifest, world, checkpoint=Path(ckpt))


def score_model(
    ckpt: Path,
    overrides: Sequence[str],
    manifest: Path | None,
    world: World,
    checkpoint: Path | None = None,
) -> dict[str, float]:
    """`evaluate` of a run or model directory; `checkpoint`: the run's checkpoint folder that `ckpt` was exported
    from (its run's manifest and split are the defaults, its files go to RUN_DIR/eval/<split>_step<N>...)."""
    command = open_for_command("evaluate", ckpt, overrides, world)
    opened, cfg, run = command.opened, command.settings, command.opened.run_config
    run_dir = opened.model_dir.parent if run is not None else None
    if checkpoint is not None:
        run_dir = checkpoint.parent.parent
        run = OmegaConf.load(run_dir / RUN_CONFIG)
    manifest = manifest or (Path(run.data.manifest) if run is not None else None)
    if manifest is None:
        raise UsageError(f"{ckpt} is a model directory: give the clips to score with --manifest FILE")
    split = cfg.eval.split or (run.eval.split if run is not None else "test")
    records = read_manifest(manifest, split)
    if not records:
        raise UsageError(f"{manifest} has no clips in split {split!r} (eval.split)")
    if cfg.eval.spice:
        require_spice_jars()  # before captioning a whole split
    predictions, metrics = evaluate_split(
        opened.model,
        records,
        opened.inference,
        opened.config.image_size,
        world,
        spice=cfg.eval.spice,
        desc=f"evaluate {split}",
    )
    extra = []
    if run is not None and manifest.resolve() != Path(run.data.manifest).resolve():
        extra.append(f"manifest={manifest.stem}")
    if cfg.eval.spice and not (run is not None and run.eval.spice):
        extra.append("spice")
    tag = settings_tag(command.own, opened.inference, extra)
    out_dir = (run_dir if run_dir is not None else opened.model_dir) / "eval"
    name = split if checkpoint is None else f"{split}_step{int(checkpoint.name)}"
    settings = asdict(opened.inference)
    settings["eval"].update(split=split, spice=cfg.eval.spice)
    settings["manifest"] = str(manifest)
    settings["processes"] = world.world_size  # the clips were split over this many
    if world.is_main:
        written = write_eval(out_dir, f"{name}_{tag}" if tag else name, predictions, metrics, settings)
        print(f"wrote {written[0]} and {written[1]}", file=sys.stderr)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser(__doc__, "evaluate")
    parser.add_argument("--ckpt", type=Path, required=True, help="a run directory or a model directory")
    parser.add_argument("--manifest", type=Path, help="clips to score (default: the run's manifest)")
    overrides, rest = split_overrides(sys.argv[1:] if argv is None else list(argv), parser)
    args = parser.parse_args(rest)
    world = init_world()  # under torchrun: the clips are split over the ranks, rank 0 scores and writes

    def report_metrics() -> None:
        metrics = evaluate(args.ckpt, overrides, args.manifest, world)
        if world.is_main:
            print(json.dumps(metrics, indent=1))

    try:
        return exit_status(report_metrics)
    finally:
        shutdown(world)


if __name__ == "__main__":
    sys.exit(main())
