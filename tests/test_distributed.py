"""torchrun on CPU (gloo, 2 processes): DDP and FSDP runs give the single-process losses for the same global batch,
gradient accumulation does too, and ranks share one run directory with evaluation split between them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from adapt_runs import TINY_RUN, records, run_module, train_losses

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# Dropout masks come from each process's RNG, so exact agreement across world sizes needs dropout off.
SAME_DATA = [
    *TINY_RUN,
    "train.steps=4",
    "train.log_every=1",
    "train.dropout=0",
    "eval.before=false",
    "eval.num_beams=1",
    "eval.max_new_tokens=4",
]


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 4-clip global batches four ways."""
    work = tmp_path_factory.mktemp("distributed")
    ways = {
        "one process": ([], ["train.batch_size=4"]),
        "accumulation": ([], ["train.batch_size=2", "train.accumulation=2"]),
        "ddp": (TORCHRUN, ["train.batch_size=2"]),
        "fsdp": (TORCHRUN, ["train.batch_size=2", "train.strategy=fsdp", "train.eval_every=2"]),
    }
    dirs = {}
    for name, (launcher, extra) in ways.items():
        run_dir = work / name.replace(" ", "_")
        result = run_module(
            "simvlg_video.adapt",
            "--image-ckpt",
            str(tiny_model_dir),
            *SAME_DATA,
            *extra,
            f"hydra.run.dir={run_dir}",
            cwd=work,
            launcher=launcher or None,
        )
        assert result.returncode == 0, f"{name}: {result.stderr[-4000:]}"
        dirs[name] = run_dir
    return dirs


@pytest.mark.slow
@pytest.mark.parametrize("way", ["accumulation", "ddp", "fsdp"])
def test_same_loss_at_every_step_as_one_process(runs: dict[str, Path], way: str):
    expected, got = train_losses(runs["one process"]), train_losses(runs[way])
    assert list(got) == [1, 2, 3, 4] == list(expected)
    for step in expected:
        assert abs(got[step] - expected[step]) <= 1e-5, f"{way} step {step}: {got[step]} vs {expected[step]}"


@pytest.mark.slow
def test_ranks_share_one_run_directory_written_by_rank_zero(runs: dict[str, Path]):
    run_dir = runs["ddp"]
    assert [r["step"] for r in records(run_dir, "train")] == [1, 2, 3, 4], "one line per step, not one per rank"
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "adapt_rank1.log").is_file() and sorted(p.name for p in run_dir.glob("*.log")) == [
        "adapt.log",
        "adapt_rank1.log",
    ]
    summary = records(run_dir, "summary")[0]
    assert summary["world_size"] == 2
    assert summary["train_clips"] == 4 * 4  # 4 steps of a global batch of 4 clips, counted over both ranks


@pytest.mark.slow
@pytest.mark.parametrize("way", ["ddp", "fsdp"])
def test_evaluation_is_split_across_ranks_and_gathered_whole(runs: dict[str, Path], way: str):
    def clip_ids(run_dir: Path) -> list[str]:
        return [row["clip_id"] for row in json.loads((run_dir / "eval" / "test_predictions.json").read_text())]

    single, split = clip_ids(runs["one process"]), clip_ids(runs[way])
    assert len(split) == len(set(split)), "a clip captioned twice"
    assert sorted(split) == sorted(single), "a clip lost or added"
    assert records(runs[way], "summary")[0]["trained"]["clips"] == len(single)


@pytest.mark.slow
def test_fsdp_validates_keeps_the_best_checkpoint_and_exports_whole_tensors(
    runs: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
):
    run_dir = runs["fsdp"]
    assert [r["step"] for r in records(run_dir, "val")] == [2, 4]
    best = json.loads((run_dir / "checkpoints" / "best.json").read_text())
    assert best["metric"] == "CIDEr" and best["step"] in (2, 4)
    result = run_module("simvlg_video.evaluate", "--ckpt", str(run_dir), cwd=tmp_path)  # loads model/ unsharded
    assert result.returncode == 0, result.stderr[-3000:]
