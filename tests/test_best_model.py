"""The end of a run with validation: the best checkpoint exported as RUN_DIR/best_model and scored beside the last
model; `evaluate` of a checkpoint folder; `evaluate` and `caption` under torchrun (gloo, 2 processes) give the captions
of one process, greedy and beam 5."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from adapt_runs import TINY_RUN, adapt_run, records, run_module
from test_distributed import TORCHRUN

from simvlg_video.export import STARTING_MODEL, read_starting_model
from simvlg_video.formats.model_dir import load_model_dir
from simvlg_video.formats.tensor_io import read_safetensors
from simvlg_video.train.checkpoint import CheckpointError

# Validation at step 2 only, 3 steps: the best checkpoint (step 2) is not the last model (step 3). Beam 5, as the
# dataset recipes decode; 7 test clips in one batch of 8 on one process, 4 and 3 on two.
BEST_RUN = [setting for setting in TINY_RUN if not setting.startswith("eval.num_beams=")]
BEST_RUN += ["train.eval_every=2", "train.lr=1e-2", "eval.before=false", "eval.visualize=0", "eval.num_beams=5"]


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run, result = adapt_run(tiny_model_dir, tmp_path_factory.mktemp("best"), *BEST_RUN)
    assert "| adapted, best (step 2) |" in result.stdout and "| adapted |" in result.stdout
    return run


def captions(eval_dir: Path, name: str) -> dict[str, str]:
    rows = json.loads((eval_dir / f"{name}_predictions.json").read_text())
    return {row["clip_id"]: row["caption"] for row in rows}


def metrics(eval_dir: Path, name: str) -> dict:
    return json.loads((eval_dir / f"{name}_metrics.json").read_text())


@pytest.mark.slow
def test_the_best_checkpoint_is_exported_and_scored_beside_the_last_model(run_dir: Path):
    assert json.loads((run_dir / "checkpoints" / "best.json").read_text())["step"] == 2
    trained = read_safetensors(run_dir / "checkpoints" / "00000002" / "trainable.safetensors")
    best, best_cfg = load_model_dir(run_dir / "best_model")
    last, _ = load_model_dir(run_dir / "model")
    best_state, last_state = best.state_dict(), last.state_dict()
    assert trained and all(best_state[name].equal(tensor) for name, tensor in trained.items())
    assert any(not last_state[name].equal(tensor) for name, tensor in trained.items()), "best is the last model"
    assert best_cfg.adapter["name"] == "merged_tokens" and best_cfg.inference["eval"]["num_beams"] == 5
    summary = records(run_dir, "summary")[0]
    assert summary["best_row"] == {"adapted, best (step 2)": metrics(run_dir / "eval", "test_best")["metrics"]}
    assert summary["trained"] == metrics(run_dir / "eval", "test")["metrics"]
    assert len(captions(run_dir / "eval", "test_best")) == len(captions(run_dir / "eval", "test")) == 7


@pytest.mark.slow
def test_evaluate_takes_a_checkpoint_folder(run_dir: Path, tmp_path: Path):
    """The best checkpoint's folder, exported on the fly, captions as RUN_DIR/best_model did at the end of the run."""
    result = run_module("simvlg_video.evaluate", "--ckpt", str(run_dir / "checkpoints" / "00000002"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    eval_dir = run_dir / "eval"
    assert captions(eval_dir, "test_step2") == captions(eval_dir, "test_best")
    assert metrics(eval_dir, "test_step2")["metrics"] == metrics(eval_dir, "test_best")["metrics"]


@pytest.mark.slow
@pytest.mark.parametrize("beams", [1, 5])
def test_distributed_evaluate_gives_the_captions_of_one_process(run_dir: Path, tmp_path: Path, beams: int):
    """Under torchrun the clips are split over the ranks (batches of other clips than on one process) and the
    gathered captions and scores are the one process's: greedy against `evaluate` on one process, beam 5 against
    the run's own scoring of its last model."""
    one, two = (
        Path(shutil.copytree(run_dir, tmp_path / name, ignore=shutil.ignore_patterns("checkpoints")))
        for name in ("one", "two")
    )
    if beams == 1:
        single = run_module("simvlg_video.evaluate", "--ckpt", str(one), "eval.num_beams=1", cwd=tmp_path)
        assert single.returncode == 0, single.stderr[-3000:]
    split = run_module(
        "simvlg_video.evaluate", "--ckpt", str(two), f"eval.num_beams={beams}", cwd=tmp_path, launcher=TORCHRUN
    )
    assert split.returncode == 0, split.stderr[-3000:]
    name = "test_eval.num_beams=1" if beams == 1 else "test"
    assert metrics(two / "eval", name)["settings"]["processes"] == 2
    assert captions(two / "eval", name) == captions(one / "eval", name)
    assert metrics(two / "eval", name)["metrics"] == metrics(one / "eval", name)["metrics"]
    assert split.stdout.count('"CIDEr"') == 1, "the metrics printed once, by rank 0"


@pytest.mark.slow
def test_distributed_caption_writes_every_caption_once_in_input_order(run_dir: Path, tmp_path: Path):
    from omegaconf import OmegaConf

    manifest = Path(OmegaConf.load(run_dir / "config.yaml").data.manifest)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    videos = [str(manifest.parent / row["video"]) for row in rows if row["split"] == "test"][::-1]
    out = tmp_path / "captions.jsonl"
    result = run_module(
        "simvlg_video.caption", "--ckpt", str(run_dir), *videos, "--out", str(out), cwd=tmp_path, launcher=TORCHRUN
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["video"] for row in written] == videos
    printed = [line.split("\t", 1) for line in result.stdout.strip().splitlines()]
    assert [video for video, _ in printed] == videos, "each caption printed once, in input order"
    clip_of = {str(manifest.parent / row["video"]): row["clip_id"] for row in rows}
    expected = captions(run_dir / "eval", "test")  # the run's own, one process, beam 5
    assert [row["caption"] for row in written] == [expected[clip_of[video]] for video in videos]


def test_a_malformed_starting_model_record_is_named(tmp_path: Path):
    (tmp_path / STARTING_MODEL).write_text('{"model_dir": 3, "exports_placement": true}')
    with pytest.raises(CheckpointError, match=rf"{STARTING_MODEL}: model_dir: expected the path"):
        read_starting_model(tmp_path)
    (tmp_path / STARTING_MODEL).write_text('{"model_dir": "/m", "exports_placement": "yes"}')
    with pytest.raises(CheckpointError, match="exports_placement: expected true or false"):
        read_starting_model(tmp_path)
    (tmp_path / STARTING_MODEL).unlink()
    with pytest.raises(CheckpointError, match=f"has no {STARTING_MODEL}"):
        read_starting_model(tmp_path)
