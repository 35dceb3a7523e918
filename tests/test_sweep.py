"""An ablation sweep is one command; its runs do not leak into each other, and the report matches their files."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import pytest
from adapt_runs import TINY_RUN, records, run_module, train_losses

SWEEP = [*TINY_RUN, "train.log_every=1", "eval.before=false", "eval.num_beams=1", "eval.max_new_tokens=4"]


@pytest.mark.slow
def test_a_sweep_run_equals_the_same_run_alone_and_the_report_matches(tiny_model_dir: Path, tmp_path: Path):
    # The first job patches temporal adapters into its model; the second must start from the clean image model.
    sweep = run_module(
        "simvlg_video.adapt",
        "-m",
        "--image-ckpt",
        str(tiny_model_dir),
        *SWEEP,
        "adapter=reference,none",
        "data.num_frames=2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    alone = run_module(
        "simvlg_video.adapt",
        "--image-ckpt",
        str(tiny_model_dir),
        *SWEEP,
        "adapter=none",
        "data.num_frames=2",
        f"hydra.run.dir={tmp_path / 'alone'}",
        cwd=tmp_path,
    )
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert train_losses(tmp_path / "sweep" / "1") == train_losses(tmp_path / "alone")
    assert train_losses(tmp_path / "sweep" / "0") != train_losses(tmp_path / "alone")

    report = run_module("simvlg_video.report", str(tmp_path / "sweep"), cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    rows = [line for line in (tmp_path / "sweep" / "report.md").read_text().splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 2, "header and one row per job"
    for job, row in zip(("0", "1"), rows[1:]):
        summary = records(tmp_path / "sweep" / job, "summary")[0]
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[:2] == [job, f"adapter={'reference' if job == '0' else 'none'}"]
        assert cells[5] == f"{100 * summary['trained']['CIDEr']:.1f}"
        assert cells[9] == f"{summary['train_clips_per_s']:.1f}"
    for picture in ("metric_vs_frames.png", "loss_curves.png"):
        assert matplotlib.image.imread(tmp_path / "sweep" / picture).shape[0] > 200
