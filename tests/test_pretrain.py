"""The image stage: a starting model assembled from parts (a real BERT folder), pretraining on real JPEG stills and
COCO-format image lines, evaluation of image runs, and adapt taking the result to video."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from adapt_runs import records, run_module, train_losses, written_predictions
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForMaskedLM

from simvlg_video.data_tools.check_videos import main as check
from simvlg_video.data_tools.convert import main as convert
from simvlg_video.data_tools.make_stills import make_stills_dataset
from simvlg_video.eval.shape_accuracy import still_accuracy
from simvlg_video.formats.image_parts import assemble_image_model, connector_tensors_from_bert
from simvlg_video.formats.model_dir import MODEL_CONFIG, WEIGHTS, load_model_dir, read_model_config
from simvlg_video.formats.tensor_io import StateDictMismatch
from simvlg_video.model.config import load_model_config

TINY_PRETRAIN = [
    "data.synthetic.num_images=60",
    "data.synthetic.size=64",
    "train.steps=4",
    "train.batch_size=4",
    "data.num_workers=0",
    "train.warmup_steps=1",
    "eval.batch_size=8",
    "eval.num_beams=1",
    "eval.max_new_tokens=4",
    "eval.visualize=1",
]


def tiny_bert(folder: Path, hidden: int = 64, layers: int = 4) -> BertForMaskedLM:
    """A randomly initialised BERT saved as Hugging Face saves bert-base-uncased (a pre-training model: `bert.`
    names, a `cls.` head), at the tiny connector's size."""
    torch.manual_seed(0)
    bert = BertForMaskedLM(
        BertConfig(
            vocab_size=50,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=256,
            max_position_embeddings=128,
        )
    )
    bert.save_pretrained(folder)
    return bert


def tiny_config(lm: Path):
    cfg = load_model_config("tiny")
    cfg.lm.path = str(lm)
    return cfg


def test_the_connector_starts_from_bert_and_the_rest_stays_behind_pointers(tiny_model_dir, tmp_path):
    bert = tiny_bert(tmp_path / "bert")
    out = assemble_image_model(tiny_config(tiny_model_dir / "lm"), tmp_path / "initial", tmp_path / "bert")
    model, cfg = load_model_dir(out)
    expected = {
        name.removeprefix("bert."): t
        for name, t in bert.state_dict().items()
        if name.startswith("bert.") and "word_embeddings" not in name and "pooler" not in name
    }
    actual = model.connector.state_dict()
    assert set(actual) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name
    stored = load_file(out / WEIGHTS)
    assert not any(name.startswith("lm.") for name in stored) and "opt_proj.weight" in stored
    assert cfg.adapter is None and set(cfg.frozen) == {"lm"}  # the tiny ViT has no file: it is stored


def test_a_bert_of_another_size_is_refused_naming_tensors(tiny_model_dir, tmp_path):
    tiny_bert(tmp_path / "bert", hidden=32)
    with pytest.raises(StateDictMismatch, match=r"wrong shape: embeddings\.LayerNorm\.bias \(expected \(64,\)"):
        assemble_image_model(tiny_config(tiny_model_dir / "lm"), tmp_path / "initial", tmp_path / "bert")
    tiny_bert(tmp_path / "deeper", layers=5)
    with pytest.raises(StateDictMismatch, match=r"unexpected: encoder\.layer\.4\."):
        assemble_image_model(tiny_config(tiny_model_dir / "lm"), tmp_path / "initial", tmp_path / "deeper")
    with pytest.raises(FileNotFoundError, match=r"has none of model.safetensors, pytorch_model.bin"):
        connector_tensors_from_bert(tmp_path)


def test_old_bert_names_are_read(tmp_path):
    """The original bert-base-uncased checkpoint names LayerNorm parameters gamma and beta."""
    folder = tmp_path / "bert"
    folder.mkdir()
    torch.save(
        {
            "bert.embeddings.LayerNorm.gamma": torch.ones(4),
            "bert.embeddings.LayerNorm.beta": torch.zeros(4),
            "bert.embeddings.word_embeddings.weight": torch.zeros(9, 4),
            "cls.predictions.bias": torch.zeros(9),
        },
        folder / "pytorch_model.bin",
    )
    assert set(connector_tensors_from_bert(folder)) == {"embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias"}


@pytest.mark.slow
def test_pretrain_makes_an_image_model_that_adapt_takes_to_video(tiny_model_dir, tmp_path):
    tiny_bert(tmp_path / "bert")
    run = tmp_path / "pretrain"
    result = run_module(
        "simvlg_video.pretrain",
        *TINY_PRETRAIN,
        f"bert_path={tmp_path / 'bert'}",
        f"lm_path={tiny_model_dir / 'lm'}",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| pretrained |" in result.stdout and "shape_acc" in result.stdout  # the stills' held-out accuracy
    summary = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    captions, attributes = written_predictions(run / "eval", OmegaConf.load(run / "config.yaml").data.manifest)
    assert summary["phase"] == "summary" and captions.keys() == attributes.keys()
    assert summary["trained"]["object_acc"] == still_accuracy(captions, attributes)["object_acc"]
    assert read_model_config(run / "model" / MODEL_CONFIG).adapter is None  # an image model
    trained, _ = load_model_dir(run / "model")
    initial, _ = load_model_dir(run / "initial_model")
    assert not torch.equal(
        trained.connector.embeddings.position_embeddings.weight, initial.connector.embeddings.position_embeddings.weight
    )
    assert len(list((run / "visualize").glob("*.png"))) == 1

    evaluated = run_module("simvlg_video.evaluate", "--ckpt", str(run), "eval.batch_size=8", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    adapt = run_module(
        "simvlg_video.adapt",
        "--image-ckpt",
        str(run / "model"),
        "data.synthetic.num_clips=21",
        "data.synthetic.height=64",
        "data.synthetic.width=64",
        "data.synthetic.duration=1.0",
        "train.steps=2",
        "train.batch_size=4",
        "data.num_workers=0",
        "train.warmup_steps=1",
        "eval.batch_size=8",
        "eval.num_beams=1",
        "eval.max_new_tokens=4",
        "eval.visualize=0",
        f"hydra.run.dir={tmp_path / 'adapt'}",
        cwd=tmp_path,
    )
    assert adapt.returncode == 0, adapt.stderr[-3000:]
    assert "| image model |" in adapt.stdout and "| adapted |" in adapt.stdout


@pytest.mark.slow
def test_pretrain_reads_coco_image_lines_and_a_frozen_vit_file(tiny_model_dir, tmp_path):
    """data=coco on a converted Karpathy file of real JPEGs, with the ViT behind a weights file (frozen)."""
    root = tmp_path / "coco"
    images = []
    for index in range(12):
        name = f"COCO_val2014_{index:012d}.jpg"
        (root / "val2014").mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(index).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "val2014" / name)
        images.append(
            {
                "filepath": "val2014",
                "filename": name,
                "split": ["train", "test"][index % 2],
                "sentences": [{"raw": f"a picture number {index % 3}"}],
            }
        )
    (root / "dataset_coco.json").write_text(json.dumps({"images": images}))
    convert(["coco", "--root", str(root), "--karpathy", str(root / "dataset_coco.json")])
    check([str(root / "manifest.jsonl"), "--workers", "0", "--quiet"])
    model, _ = load_model_dir(tiny_model_dir)
    save_file({k: v.contiguous() for k, v in model.vit.state_dict().items()}, tmp_path / "vit.safetensors")
    run = tmp_path / "run"
    result = run_module(
        "simvlg_video.pretrain",
        "data=coco",
        f"data.root={root}",
        f"lm_path={tiny_model_dir / 'lm'}",
        f"vit_weights={tmp_path / 'vit.safetensors'}",
        "train.trainable=[ln_vision,VL_proj,connector,opt_proj]",
        "train.steps=3",
        "train.batch_size=4",
        "data.num_workers=0",
        "train.warmup_steps=1",
        "eval.num_beams=1",
        "eval.max_new_tokens=4",
        "eval.visualize=0",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "eval" / "test_metrics.json").read_text())["metrics"]["clips"] == 6
    stored = load_file(run / "model" / WEIGHTS)
    assert not any(name.startswith(("vit.", "lm.")) for name in stored)  # both frozen, behind pointers
    assert set(read_model_config(run / "model" / MODEL_CONFIG).frozen) == {"vit", "lm"}


def test_the_stills_set_is_balanced_and_reproducible(tmp_path):
    first = make_stills_dataset(tmp_path / "a", num_images=120, seed=3, size=32, show_progress=False)
    second = make_stills_dataset(tmp_path / "b", num_images=120, seed=3, size=32, show_progress=False)
    lines = [json.loads(line) for line in first.read_text().splitlines()]
    assert first.read_text() == second.read_text()
    assert all(
        (tmp_path / "a" / line["image"]).read_bytes() == (tmp_path / "b" / line["image"]).read_bytes() for line in lines
    )
    for split, share in (("train", 96), ("val", 12), ("test", 12)):  # 10 of each of the 12 shape-colour pairs
        chosen = [line for line in lines if line["split"] == split]
        assert len(chosen) == share
        assert {(line["attributes"]["shape"], line["attributes"]["colour"]) for line in chosen} == {
            (line["attributes"]["shape"], line["attributes"]["colour"]) for line in lines
        }


@pytest.mark.slow
@pytest.mark.parametrize("settings", [("merge_r=0",), ("merge_r=19", "merge_mode=weighted")])
def test_gradual_merging_is_a_setting_and_every_choice_trains(tiny_model_dir, tmp_path, settings):
    """r = 0 merges nothing (65 tokens reach the LLM); r = 19 per layer merges as far as each layer can."""
    run = tmp_path / "run"
    result = run_module(
        "simvlg_video.pretrain",
        *TINY_PRETRAIN,
        "eval.visualize=0",
        *settings,
        f"lm_path={tiny_model_dir / 'lm'}",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    model, cfg = load_model_dir(run / "model")
    r = int(settings[0].split("=")[1])
    assert cfg.connector.r == r and cfg.connector.merge_mode == ("weighted" if len(settings) > 1 else "mean")
    tokens = model.vit.patch_embed.num_patches + 1
    assert model.connector.merge_schedule(tokens)[-1] == (65 if r == 0 else 8)  # 65 -> 46 -> 27 -> 14 -> 8


def test_a_bad_merge_setting_is_one_line(tiny_model_dir, tmp_path):
    result = run_module(
        "simvlg_video.pretrain",
        "merge_mode=median",
        f"lm_path={tiny_model_dir / 'lm'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr  # bad input
    assert result.stderr.strip().splitlines()[-1].startswith("error: the starting image model: merge mode must be")


@pytest.mark.slow
def test_a_killed_image_run_resumes_exactly(tiny_model_dir, tmp_path):
    """SIGKILL after step 4 of 6, then resume=auto: the same trainable weights, bit for bit, and the same losses as
    the run never stopped (two loader workers decoding JPEGs, dropout on)."""
    settings = [
        *TINY_PRETRAIN,
        "eval.visualize=0",
        "train.steps=6",
        "train.checkpoint_every=2",
        "train.log_every=1",
        "data.num_workers=2",
        f"lm_path={tiny_model_dir / 'lm'}",
    ]
    _, arguments = run_whole_then_killed(settings, tmp_path)
    resumed = run_module("simvlg_video.pretrain", *arguments, "resume=auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_resumed_like_whole(tmp_path)


def run_whole_then_killed(settings: list[str], tmp_path: Path):
    """`pretrain` with `settings` run through into tmp/whole, then again into tmp/killed, which SIGKILLs itself right
    after step 4 ends, its checkpoint complete; returns (the whole run's result, the killed run's arguments)."""
    from test_resume import run_killed_at

    result = run_module("simvlg_video.pretrain", *settings, f"hydra.run.dir={tmp_path / 'whole'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    killed = tmp_path / "killed"
    arguments = [*settings, f"hydra.run.dir={killed}"]
    run_killed_at(arguments, tmp_path, 4, "saved", module="simvlg_video.pretrain")
    assert max(train_losses(killed)) == 4 and not records(killed, "summary")
    return result, arguments


def assert_resumed_like_whole(tmp_path: Path) -> None:
    """tmp/killed, resumed from its step-4 checkpoint, ended with tmp/whole's trainable weights, bit for bit, and its
    losses."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert [r["step"] for r in records(killed, "resume")] == [4]
    final = "checkpoints/00000006/trainable.safetensors"
    expected, got = load_file(whole / final), load_file(killed / final)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert train_losses(killed) == train_losses(whole)


def streamed_image_set(root: Path) -> str:
    """A stills set as a COCO-like folder (checked manifest, for evaluation) and its train split packed into
    img2dataset-style shards of 10 samples; returns the shard pattern."""
    from simvlg_video.data_tools.write_shards import write_shards

    stills = make_stills_dataset(root / "stills", num_images=60, size=64, show_progress=False)
    rows = [json.loads(line) for line in stills.read_text().splitlines()]
    for row in rows:
        row["image"] = f"stills/{row['image']}"
    (root / "manifest.checked.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return write_shards(root / "manifest.checked.jsonl", root / "shards", per_shard=10, show_progress=False)


@pytest.mark.slow
def test_an_image_run_streaming_shards_resumes_at_the_exact_sample(tiny_model_dir, tmp_path):
    """data=webdataset: two loader streams over tar shards, SIGKILL after step 4 of 6 (mid-shard: each stream has
    read 8 of its shard's 10 samples), resume=auto: bit-identical weights and losses."""
    pattern = streamed_image_set(tmp_path / "coco")
    settings = [
        "data=webdataset",
        f"data.root={tmp_path / 'coco'}",
        f"data.shards='{pattern}'",  # quoted for Hydra
        "data.shuffle_buffer=4",
        "train.steps=6",
        "train.batch_size=4",
        "data.num_workers=2",
        "train.warmup_steps=1",
        "train.checkpoint_every=2",
        "train.log_every=1",
        "eval.batch_size=8",
        "eval.num_beams=1",
        "eval.max_new_tokens=4",
        "eval.visualize=0",
        f"lm_path={tiny_model_dir / 'lm'}",
    ]
    result, arguments = run_whole_then_killed(settings, tmp_path)
    assert "| pretrained |" in result.stdout
    resumed = run_module("simvlg_video.pretrain", *arguments, "resume=auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_resumed_like_whole(tmp_path)


def test_missing_shards_are_one_line_naming_them(tiny_model_dir, tmp_path):
    streamed_image_set(tmp_path / "coco")
    result = run_module(
        "simvlg_video.pretrain",
        "data=webdataset",
        f"data.root={tmp_path / 'coco'}",
        f"data.shards='{tmp_path}/elsewhere/{{00000..00003}}.tar'",
        "train.steps=1",
        "train.warmup_steps=0",
        f"lm_path={tiny_model_dir / 'lm'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "4 of 4 shard(s) do not exist" in result.stderr and "elsewhere/00000.tar" in result.stderr


@pytest.mark.slow
def test_two_processes_stream_shards_each_from_its_own_position(tiny_model_dir, tmp_path):
    """torchrun, 2 processes x 1 loader worker: each rank's checkpointed data state is the work its own stream has
    left, of a world of 2, and both streamed every step's batch."""
    from test_distributed import TORCHRUN

    from simvlg_video.train.checkpoint import STATE

    pattern = streamed_image_set(tmp_path / "coco")
    run = tmp_path / "ddp"
    result = run_module(
        "simvlg_video.pretrain",
        "data=webdataset",
        f"data.root={tmp_path / 'coco'}",
        f"data.shards='{pattern}'",
        "train.steps=3",
        "train.batch_size=4",
        "data.num_workers=1",
        "train.warmup_steps=1",
        "train.checkpoint_every=3",
        "eval.batch_size=8",
        "eval.num_beams=1",
        "eval.max_new_tokens=4",
        "eval.visualize=0",
        f"lm_path={tiny_model_dir / 'lm'}",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
        launcher=TORCHRUN,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(run / "checkpoints" / "00000003" / STATE, weights_only=True)
    streams = [rank["batches"]["shards"] for rank in state["ranks"]]
    assert [(s["world_size"], s["streams"], s["handed_out"]) for s in streams] == [(2, 1, 3), (2, 1, 3)]
    # 12 samples read from shards of at most 10: each rank is into another shard of epoch 0, the one it reads next
    works = [s["work"][0] for s in streams]
    assert all(work["epoch"] == 0 and work["queues"][0][0][1] > 0 for work in works)
    assert works[0]["queues"][0][0][0] != works[1]["queues"][0][0][0]
