"""The sweep report reads what a Hydra sweep leaves on disk and reports every run, finished or not, with its numbers."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest
import yaml
from adapt_runs import compose_adapt
from omegaconf import OmegaConf

from simvlg_video.eval.runs import RunsError, find_runs, runs_table
from simvlg_video.eval.sweep import metric_series, read_sweep
from simvlg_video.report import main, report

# Frames listed out of order so that sorting the plotted points by frames is tested, not inherited from job order.
FRAMES, SAMPLERS, ADAPTERS = (8, 2, 4), ("uniform", "headtail"), ("none", "reference")
PANELS = {"none": "none", "reference": "reference (time: none)"}  # adapter_label of the shipped configs
UNFINISHED = 11  # the last job: training lines only, no summary


def scores(job: int, motion: bool) -> dict:
    """Adapted scores of job JOB; job 0 has CIDEr 0.8543 (shown as 85.4)."""
    values = {
        "BLEU-1": 0.9,
        "BLEU-4": 0.4121 + 0.01 * job,
        "METEOR": 0.3307 + 0.002 * job,
        "ROUGE-L": 0.6012 - 0.003 * job,
        "CIDEr": 0.8543 + 0.05 * job,
        "clips": 70,
    }
    if motion:
        values.update(motion_acc=0.25 + 0.02 * job, object_acc=1.0, direction_acc=float("nan"))
    return values


def summary(job: int, motion: bool) -> dict:
    """Odd jobs write their summary as earlier versions did, under the video stage's names."""
    speed, trained = ("train_videos_per_s", "adapted") if job % 2 else ("train_clips_per_s", "trained")
    return {
        "phase": "summary",
        "train_steps": 30,
        speed: 70.25 + job,
        "train_peak_memory_gib": 2.0832,
        "train_memory_kind": "process RSS" if job % 2 else "cuda max allocated",
        trained: scores(job, motion),
    }


def write_run(run: Path, cfg, overrides: list[str] | None, records: list[dict]) -> None:
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run / "config.yaml")
    if overrides is not None:
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def train_lines(job: int, steps: range, offset: float = 0.0) -> list[dict]:
    """Odd jobs log like older runs, without a phase."""
    phase = {"phase": "train"} if job % 2 == 0 else {}
    return [
        {**phase, "step": s, "loss": 2.0 - s / 100 + offset + job / 1000, "lr": 1e-4, "grad_norm": 1.0} for s in steps
    ]


def make_sweep(root: Path, frames=FRAMES, motion: bool = True) -> list[list[str]]:
    """SWEEP/<job>/ as `adapt -m data.num_frames=... sampler=... adapter=...` leaves it; returns each job's
    overrides."""
    jobs = [
        [f"data.num_frames={f}", f"sampler={s}", f"adapter={a}"] for f in frames for s in SAMPLERS for a in ADAPTERS
    ]
    for job, overrides in enumerate(jobs):
        cfg = compose_adapt(*overrides)
        records = [{"phase": "eval", "model": "image", **scores(0, motion), "CIDEr": 0.1}]
        records += train_lines(job, range(10, 40, 10))
        if job == 3:  # resumed from step 10's checkpoint, then stopped after logging step 20 again
            records += [{"phase": "resume", "step": 10}, *train_lines(job, range(20, 30, 10), offset=0.5)]
        records.append({"phase": "val", "step": 30, "loss": 9.9, "CIDEr": 0.2})
        if job != UNFINISHED:
            records.append(summary(job, motion))
        write_run(root / str(job), cfg, overrides, records)
    return jobs


def table_rows(table: str) -> list[list[str]]:
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_table_has_one_row_per_run_in_job_order_with_the_logged_numbers(tmp_path: Path, capsys) -> None:
    jobs = make_sweep(tmp_path / "sweep")
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")]) == 0
    table = capsys.readouterr().out.strip()
    assert table and table in (tmp_path / "out" / "report.md").read_text()
    header, *rows = table_rows(table)
    assert header == [
        "run",
        "overrides",
        "BLEU-4",
        "METEOR",
        "ROUGE-L",
        "CIDEr",
        "motion_acc",
        "direction_acc",
        "object_acc",
        "train clips/s",
        "peak memory (GiB)",
    ]
    assert [row[0] for row in rows] == [str(job) for job in range(len(jobs))]  # 10 after 9: numeric order
    assert rows[0][5] == "85.4"
    for job, row in enumerate(rows):
        assert row[1] == " ".join(jobs[job])
        if job == UNFINISHED:
            assert row[2] == "unfinished"
            continue
        values = scores(job, motion=True)
        keys = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "motion_acc", "direction_acc", "object_acc")
        assert row[2:9] == [f"{100 * values[k]:.1f}" for k in keys]
        kind = "process RSS" if job % 2 else "cuda max allocated"
        assert row[9:] == [f"{70.25 + job:.1f}", f"2.08 ({kind})"]


def test_no_motion_column_without_motion_scores_and_a_dash_without_overrides(tmp_path: Path) -> None:
    make_sweep(tmp_path, frames=(4,), motion=False)
    (tmp_path / "0" / ".hydra" / "overrides.yaml").unlink()  # a run started without -m
    header, *rows = table_rows(report(tmp_path))
    assert "motion_acc" not in header and len(header) == 8
    assert rows[0][:2] == ["0", "-"] and rows[1][1] == "data.num_frames=4 sampler=uniform adapter=reference"


def test_the_report_and_the_runs_table_show_the_same_columns(tmp_path: Path) -> None:
    make_sweep(tmp_path)
    report_header = table_rows(report(tmp_path))[0]
    runs_header = table_rows(runs_table(find_runs([tmp_path])))[0]
    assert report_header[:2] == ["run", "overrides"] and runs_header[:2] == ["run", "adapter"]
    assert report_header[2:] == runs_header[2:]


def test_loss_curve_replays_the_steps_after_a_resume_and_skips_validation(tmp_path: Path) -> None:
    make_sweep(tmp_path)
    runs = read_sweep(tmp_path)
    assert runs[3].loss == [(10, pytest.approx(1.903)), (20, pytest.approx(2.303))]  # step 30 was undone
    assert [step for step, _ in runs[2].loss] == [10, 20, 30]  # phase-less training lines count as well
    assert runs[UNFINISHED].loss and not runs[UNFINISHED].finished


def test_metric_vs_frames_series_are_the_logged_scores_sorted_by_frames(tmp_path: Path) -> None:
    jobs = make_sweep(tmp_path)
    expected: dict = {}
    for job, (frames, sampler, adapter) in enumerate(jobs):
        if job != UNFINISHED:
            key = (PANELS[adapter.split("=")[1]], sampler.split("=")[1])
            expected.setdefault(key, []).append((int(frames.split("=")[1]), 100 * scores(job, True)["CIDEr"]))
    series = metric_series(read_sweep(tmp_path), "CIDEr")
    assert series.keys() == expected.keys()
    for key, points in expected.items():  # pytest.approx compares flat sequences only
        assert [frames for frames, _ in series[key]] == [frames for frames, _ in sorted(points)]
        assert [value for _, value in series[key]] == pytest.approx([value for _, value in sorted(points)])
    assert [f for f, _ in series[("reference (time: none)", "headtail")]] == [2, 8]  # job 11 (4 frames) did not finish
    assert [f for f, _ in series[("none", "uniform")]] == [2, 4, 8]


def test_a_sweep_over_one_frame_count_plots_one_point_per_line(tmp_path: Path) -> None:
    make_sweep(tmp_path, frames=(4,))
    series = metric_series(read_sweep(tmp_path), "motion_acc")
    assert len(series) == 4 and all(len(points) == 1 and points[0][0] == 4 for points in series.values())
    assert main([str(tmp_path)]) == 0
    assert matplotlib.image.imread(tmp_path / "metric_vs_frames.png").shape[0] > 200


def test_both_pictures_are_readable_pngs_linked_from_the_report(tmp_path: Path) -> None:
    make_sweep(tmp_path)
    assert main([str(tmp_path)]) == 0
    written = (tmp_path / "report.md").read_text()
    for name in ("metric_vs_frames.png", "loss_curves.png"):
        assert f"]({name})" in written
        image = matplotlib.image.imread(tmp_path / name)
        assert image.shape[0] > 300 and image.shape[1] > 400
        assert image[..., :3].std() > 0.01  # something was drawn, not a blank canvas


def test_errors_name_the_missing_path_the_empty_sweep_and_the_broken_line(tmp_path: Path, capsys) -> None:
    """The library raises (RunsError); the command prints one line and exits 2."""
    with pytest.raises(RunsError, match=r".*nowhere: no such directory"):
        report(tmp_path / "nowhere")
    assert main([str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nowhere'}: no such directory\n"
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunsError, match="no run directory"):
        report(tmp_path / "empty")
    make_sweep(tmp_path / "sweep", frames=(2,))
    log = tmp_path / "sweep" / "2" / "metrics.jsonl"
    lines = log.read_text().splitlines()
    lines[2] = '{"step": 30, "loss": 0.5'  # cut off mid-write
    log.write_text("\n".join(lines) + "\n")
    with pytest.raises(RunsError) as error:
        report(tmp_path / "sweep")
    assert str(error.value).startswith(f"{log}:3: not a JSON line")
