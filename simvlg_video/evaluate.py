"""Caption a split with a run's exported model and score it against the manifest's references.

    python -m simvlg_video.evaluate --ckpt RUN_DIR [eval.split=val eval.num_beams=3 ...]

Writes RUN_DIR/eval/<split>_predictions.json and <split>_metrics.json; settings default to those the run used.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from simvlg_video.data.manifest import read_manifest
from simvlg_video.eval.predict import evaluate_split, write_eval
from simvlg_video.run_dir import eval_settings, load_run_config, load_run_model
from simvlg_video.runtime import pick_device


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True, help="run directory written by simvlg_video.adapt")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. eval.split=val eval.num_beams=3")
    args = parser.parse_args(argv)
    cfg = load_run_config(args.ckpt, args.overrides)
    model, model_cfg = load_run_model(args.ckpt)
    model.to(pick_device(cfg.device))
    records = [r for r in read_manifest(cfg.data.manifest) if r.split == cfg.eval.split]
    if not records:
        raise SystemExit(f"error: {cfg.data.manifest} has no clips in split {cfg.eval.split!r}")
    predictions, metrics = evaluate_split(
        model, records, spice=cfg.eval.spice, desc=f"evaluate {cfg.eval.split}", **eval_settings(cfg, model_cfg)
    )
    write_eval(args.ckpt / "eval", cfg.eval.split, predictions, metrics)
    print(json.dumps(metrics, indent=1))
    return metrics


if __name__ == "__main__":
    main()
