"""The README stays true: its shape (two commands first, at most 250 lines, for users), its layout table against the
tree, its links, and its commands: every one that runs on a CPU in seconds is run here on stand-ins; every other one
is named with the test that runs it."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from adapt_runs import run_module
from omegaconf import OmegaConf
from PIL import Image
from reference_layout import write_reference_files
from test_dataset_runs import TINY_RUN, msrvtt_standin
from test_report import make_sweep

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()

# Commands too long for a unit test, each with the test that runs it (or its pieces) for real.
RUN_ELSEWHERE = {
    "python -m simvlg_video.adapt --image-ckpt IMAGE_MODEL data=msrvtt data.root=ROOT": "test_dataset_runs.py",
    "python -m simvlg_video.adapt --image-ckpt image_model data=msrvtt data.root=ROOT": "test_dataset_runs.py",
    "torchrun --nproc_per_node 8 -m simvlg_video.adapt --image-ckpt image_model data=msrvtt data.root=ROOT": (
        "test_distributed.py (2 processes, gloo)"
    ),
    "torchrun --nproc_per_node 8 -m simvlg_video.adapt [...] train.strategy=fsdp": "test_distributed.py",
    "python -m simvlg_video.adapt hydra.run.dir=RUN_DIR resume=auto [the run's own overrides]": "test_resume.py",
    "torchrun --nproc_per_node 8 -m simvlg_video.evaluate --ckpt RUN_DIR/checkpoints/00020000": (
        "test_best_model.py (2 processes, gloo; a checkpoint folder on one)"
    ),
    "torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint node0:29500 --rdzv-id myrun "
    "--max-restarts 3 -m simvlg_video.adapt [...] hydra.run.dir=/shared/runs/myrun": (
        "test_preemption.py (two one-process agents over 127.0.0.1; a killed rank under --max-restarts 1)"
    ),
    "python -m simvlg_video.adapt -m data.num_frames=2,4,8 sampler=uniform,headtail adapter=none,merged_tokens "
    "hydra.sweep.dir=runs/ablation": "test_sweep.py",
    "pip install torch==2.14.1 torchvision==0.29.1 && pip install -e '.[dev]' && python -m simvlg_video.adapt": (
        ".ci/run and the demo"
    ),
    "python -m pytest -q": ".ci/run",
    "python -m simvlg_video.pretrain": "test_pretrain.py (at toy size; the demo's figures are measured)",
    "torchrun --nproc_per_node 8 -m simvlg_video.pretrain experiment=simvlg_image data=webdataset "
    "data.shards=\"'/data/cc3m/{00000..00331}.tar'\" data.root=COCO vit_weights=eva_vit_g.pth "
    "bert_path=/models/bert-base-uncased lm_path=/models/opt-2.7b": (
        "test_pretrain.py (shards under torchrun with 2 processes, with a quoted brace list; data=coco with a ViT "
        "weights file), test_configs.py (the recipe)"
    ),
    "python -m simvlg_video.adapt --image-ckpt RUN_DIR/model data=msrvtt data.root=ROOT": "test_pretrain.py",
    "python -m simvlg_video.adapt --image-ckpt /models/blip2-opt-2.7b data=msrvtt data.root=ROOT": (
        "test_blip2_commands.py (a tiny BLIP-2 folder on the shapes set)"
    ),
    "python -m simvlg_video.adapt --image-ckpt blip2_opt2.7b.pth lm_path=/models/opt-2.7b vit_weights=eva_vit_g.pth "
    "data=msrvtt data.root=ROOT": "test_blip2_commands.py (a tiny LAVIS BLIP-2 checkpoint on the shapes set)",
}


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def commands(block: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", "", block)
    lines = [line.split("  #")[0].strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def readme_commands() -> list[str]:
    return [command for block in code_blocks(README) for command in commands(block)]


def test_the_readme_leads_with_the_two_commands_ci_runs():
    blocks = code_blocks(README)
    assert README.startswith("# simvlg-video\n\n```bash\n")
    assert [commands(b) for b in blocks[:2]] == [
        ["pip install torch==2.14.1 torchvision==0.29.1 && pip install -e '.[dev]' && python -m simvlg_video.adapt"],
        ["python -m pytest -q"],
    ]
    ci = (REPO / ".ci" / "run").read_text()
    assert "pip install --quiet torch==2.14.1 torchvision==0.29.1" in ci and "-e '.[dev]'" in ci
    assert ci.rstrip().endswith("python -m pytest -q")


def test_the_readme_is_a_short_front_door_for_users():
    assert len(README.splitlines()) <= 250
    for text in [README, *(path.read_text() for path in (REPO / "docs").glob("*.md"))]:
        assert not re.search(r"\bsessions?\b|\bcommits?\b|development (VM|machine)|\bDEMO_\w+|_COST\b|_DEMO\b", text)


def test_the_layout_tables_match_the_tree():
    for text in (README, (REPO / "docs" / "architecture.md").read_text()):
        table = text[text.index("| where | what |") :].split("\n\n")[0]
        for path in re.findall(r"^\| `([^`]+)`", table, flags=re.M):
            assert (REPO / path.split(" ")[0]).exists(), path
    listed = set(re.findall(r"^\| `([^`]+)`", README[README.index("| where | what |") :], flags=re.M))
    packages = {f"{p.relative_to(REPO)}/" for p in (REPO / "simvlg_video").iterdir() if (p / "__init__.py").is_file()}
    assert packages | {"adapters/", "configs/", "data_tools/", "tests/"} <= listed


def test_every_link_leads_somewhere():
    for text, base in [(README, REPO), *((p.read_text(), p.parent) for p in (REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)\)", text):
            if "://" not in target:
                assert (base / target).exists(), target


def test_every_readme_command_is_run_by_a_test():
    ran_here = {command for command in readme_commands() if command.startswith(tuple(RUN_HERE))}
    unaccounted = [command for command in readme_commands() if command not in ran_here and command not in RUN_ELSEWHERE]
    assert not unaccounted, f"README commands no test runs: {unaccounted}"


RUN_HERE = (
    "python -m simvlg_video.data_tools.",
    "python -m simvlg_video.evaluate",
    "python -m simvlg_video.caption",
    "python -m simvlg_video.formats.lavis_checkpoint",
    "python -m simvlg_video.formats.blip2_checkpoint",
    "python -m simvlg_video.report",
)


def coco_standin(root: Path) -> Path:
    """A Karpathy split file and its real JPEG images."""
    images = []
    for index, split in enumerate(("train", "restval", "val", "test")):
        name = f"COCO_val2014_{index:012d}.jpg"
        (root / "val2014").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), 40 * index, dtype=np.uint8)).save(root / "val2014" / name)
        images.append({"filepath": "val2014", "filename": name, "split": split, "sentences": [{"raw": "a cat"}]})
    (root / "dataset_coco.json").write_text(json.dumps({"images": images}))
    return root


def as_run(command: str, places: dict[str, str]) -> list[str]:
    """A README command with its placeholders filled in and its optional [parts] given."""
    words = shlex.split(command.replace("[", "").replace("]", ""))
    assert words[:2] == ["python", "-m"], command
    return [places.get(word, word) for word in words[2:]]


@pytest.mark.slow
def test_the_readme_commands_run(tiny_model_dir: Path, blip2_files, tmp_path: Path):
    root = tmp_path / "ROOT"
    root.mkdir()
    msrvtt_standin(root)
    reference = write_reference_files(tmp_path / "reference")
    make_sweep(tmp_path / "runs" / "ablation")
    places = {
        "ROOT": str(root),
        "simvlg_image.pth": str(reference.ckpt),
        "eva_vit_g.pth": str(reference.vit_weights),
        "/models/opt-2.7b": str(reference.lm_path),
        "image_model": str(tmp_path / "image_model"),
        "/models/blip2-opt-2.7b": str(blip2_files.folder),
        "blip2_model": str(tmp_path / "blip2_model"),
    }
    places.update(
        {
            f"ROOT/{name}": str(root / name)
            for name in (
                "train_val_videodatainfo.json",
                "test_videodatainfo.json",
                "manifest.jsonl",
                "manifest.checked.jsonl",
            )
        }
    )
    coco = coco_standin(tmp_path / "COCO")
    places.update(
        {"COCO": str(coco), **{f"COCO/{name}": str(coco / name) for name in ("dataset_coco.json", "manifest.jsonl")}}
    )
    run = tmp_path / "run"  # what RUN_DIR is: made by adapt once the commands before it wrote the manifest
    places.update(
        {
            "RUN_DIR": str(run),
            "video.mp4": str(root / "TestVideo" / "video5.mp4"),
            "more_videos/": str(root / "TrainValVideo"),
            "captions.jsonl": str(tmp_path / "captions.jsonl"),
        }
    )
    tiny_architecture = tmp_path / "tiny.yaml"
    OmegaConf.save(OmegaConf.structured(reference.model_cfg), tiny_architecture)
    for command in readme_commands():
        if command.startswith(RUN_HERE) and "msvd" not in command and "activitynet" not in command:
            if "RUN_DIR" in command and not run.exists():
                adapt = run_module(
                    "simvlg_video.adapt",
                    "--image-ckpt",
                    str(tiny_model_dir),
                    "data=msrvtt",
                    f"data.root={root}",
                    *TINY_RUN,
                    "eval.visualize=0",
                    f"hydra.run.dir={run}",
                    cwd=tmp_path,
                )
                assert adapt.returncode == 0, adapt.stderr[-3000:]
            arguments = as_run(command, places)
            if "lavis_checkpoint" in command:  # the stand-in files are tiny, not the default OPT-2.7B architecture
                arguments += ["--model-config", str(tiny_architecture)]
            result = run_module(arguments[0], *arguments[1:], cwd=tmp_path)
            assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
    assert (root / "manifest.checked.jsonl").is_file() and (tmp_path / "image_model" / "model.yaml").is_file()
    assert len((tmp_path / "COCO" / "manifest.checked.jsonl").read_text().splitlines()) == 4
    assert (tmp_path / "blip2_model" / "model.yaml").is_file()
    assert (tmp_path / "captions.jsonl").read_text().count("\n") == 6  # video.mp4 and the 5 train/val videos
    assert (tmp_path / "runs" / "ablation" / "report.md").is_file()
