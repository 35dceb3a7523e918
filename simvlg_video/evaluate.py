"""Caption a split with a trained model and score it against the manifest's references.

    python -m simvlg_video.evaluate --ckpt RUN_DIR [--split val] [num_beams=3 num_frames=8 ...]
    python -m simvlg_video.evaluate --ckpt MODEL_DIR --manifest ROOT/manifest.checked.jsonl [--split test]

A run directory scores the split its run scored, on the run's manifest; a model directory needs --manifest.
Settings default to those the model was evaluated with (model.yaml, `inference:`).

Results go to <RUN_DIR or MODEL_DIR>/eval/<split>_predictions.json and <split>_metrics.json when the settings are
the model's own. Other settings write beside them under a name that says which ones differ, e.g.
eval/test_num_beams=1_metrics.json (a long list: eval/test_settings-<hash>_metrics.json; the metrics file names
every setting), so the files a run wrote about itself are never replaced by other settings' results.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from dataclasses import asdict, fields
from pathlib import Path

from omegaconf import OmegaConf

from simvlg_video.data.manifest import ManifestError, read_manifest
from simvlg_video.eval.inference import InferenceConfig, open_model, read_inference_config, split_settings
from simvlg_video.eval.predict import evaluate_split, write_eval
from simvlg_video.formats.model_dir import MODEL_CONFIG
from simvlg_video.model.config import ModelDirError
from simvlg_video.world import pick_device

_LONGEST_TAG = 80


def settings_tag(own: InferenceConfig, used: InferenceConfig, extra: list[str] = ()) -> str:
    """A file-name part naming the settings of `used` that differ from the model's `own` (and `extra` ones); empty
    when none differ."""
    parts = [
        f"{f.name}={getattr(used, f.name)}"
        for f in fields(InferenceConfig)
        if getattr(used, f.name) != getattr(own, f.name)
    ]
    tag = re.sub(r"[^\w.=,+-]", "-", ",".join([*parts, *extra]))
    if len(tag) > _LONGEST_TAG:
        return "settings-" + hashlib.sha1(tag.encode()).hexdigest()[:10]
    return tag


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True, help="a run directory or a model directory")
    parser.add_argument("--manifest", type=Path, help="clips to score (default: the run's manifest)")
    parser.add_argument("--split", help="split to score (default: the run's, else test)")
    parser.add_argument("--spice", action="store_true", help="also SPICE (needs Stanford CoreNLP's jars)")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one) | cpu | cuda")
    overrides, rest = split_settings(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(rest)
    try:
        opened = open_model(args.ckpt, overrides, pick_device(args.device))
        run = opened.run_config
        manifest = args.manifest or (Path(run.data.manifest) if run is not None else None)
        if manifest is None:
            raise ValueError(f"{args.ckpt} is a model directory: give the clips to score with --manifest FILE")
        split = args.split or (run.eval.split if run is not None else "test")
        records = read_manifest(manifest, split)
        if not records:
            raise ValueError(f"{manifest} has no clips in split {split!r}")
        own = read_inference_config(OmegaConf.load(opened.model_dir / MODEL_CONFIG).get("inference"))
    except (ModelDirError, ManifestError, ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    predictions, metrics = evaluate_split(
        opened.model, records, opened.inference, opened.config.image_size, spice=args.spice, desc=f"evaluate {split}"
    )
    extra = []
    if run is not None and manifest.resolve() != Path(run.data.manifest).resolve():
        extra.append(f"manifest={manifest.stem}")
    if args.spice and not (run is not None and run.eval.spice):
        extra.append("spice")
    tag = settings_tag(own, opened.inference, extra)
    out_dir = (opened.model_dir.parent if run is not None else opened.model_dir) / "eval"
    settings = {**asdict(opened.inference), "manifest": str(manifest), "split": split, "spice": args.spice}
    written = write_eval(out_dir, f"{split}_{tag}" if tag else split, predictions, metrics, settings)
    print(f"wrote {written[0]} and {written[1]}", file=sys.stderr)
    print(json.dumps(metrics, indent=1))
    return metrics


if __name__ == "__main__":
    main()
