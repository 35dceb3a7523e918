"""Every config file is composed with adapt.yaml (or pretrain.yaml) and what it configures is instantiated and used;
the config tree is found from an installed wheel too."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from adapt_runs import compose_adapt as compose_config
from adapt_runs import installed_wheel
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import OPTConfig

from simvlg_video.adapters.placements import placement_from
from simvlg_video.data.clips import ClipData
from simvlg_video.data.manifest import write_manifest
from simvlg_video.data.samplers import sampler_from
from simvlg_video.data.shard_progress import StreamWork
from simvlg_video.data.shards import TarShardStream, list_shards
from simvlg_video.data_tools.make_shapes import make_shapes_dataset
from simvlg_video.data_tools.make_stills import make_stills_dataset
from simvlg_video.data_tools.write_shards import write_shards
from simvlg_video.eval.inference import EvalSampler, InferenceConfig, inference_from
from simvlg_video.formats.model_dir import build_from_pointers, load_model_dir, read_model_config, stored_tensors
from simvlg_video.model.adapter_protocol import adapter_parameters
from simvlg_video.model.config import load_model_config
from simvlg_video.model.lm import build_word_tokenizer

CONFIGS = Path(str(resources.files("simvlg_video.configs")))
GROUPS = ("data", "sampler", "adapter", "experiment")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


PRETRAIN_EXPERIMENTS = ("simvlg_image",)  # recipes of the image stage, composed with pretrain.yaml


def compose_adapt(*overrides: str, config: str = "adapt"):
    cfg = compose_config("data.root=/datasets/x", *overrides, config=config)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    return cfg


def test_pretrain_composes_the_image_stage_demo() -> None:
    cfg = compose_adapt(config="pretrain")
    data = instantiate(cfg.data)
    assert isinstance(data, ClipData) and data.num_frames == 1 and cfg.model_config == "tiny"
    assert cfg.adapter.name == "none" and "adapters" not in cfg.train.trainable
    assert not cfg.eval.before  # the starting model is untrained
    with pytest.raises(ConfigCompositionException, match="image_ckpt"):  # adapt's keys are not pretrain's
        compose_adapt("image_ckpt=x", config="pretrain")


@pytest.mark.parametrize("name", options("sampler"))
def test_sampler_configs_instantiate_to_samplers_of_the_requested_length(name: str) -> None:
    cfg = compose_adapt(f"sampler={name}")
    keyframes = list(range(0, 300, 25))
    for phase, rng in (("train", np.random.default_rng(0)), ("eval", None)):
        sampler = sampler_from(cfg.sampler[phase]).build()
        indices = sampler(300, cfg.data.num_frames, rng, fps=25.0, keyframes=keyframes)
        assert len(indices) == cfg.data.num_frames and all(0 <= i < 300 for i in indices)
        assert indices == sorted(indices)


@pytest.mark.parametrize("name", options("sampler"))
def test_the_saved_inference_settings_carry_the_eval_sampler_resolved(name: str) -> None:
    """The model folder stores the eval sampler by name as plain JSON: a value it takes from the sampler file (fps's
    `rate: ${..train.rate}`) must be resolved there, or the folder's sampler cannot be built on its own."""
    cfg = compose_config("data.root=/datasets/x", f"sampler={name}")  # unresolved, as a run holds it
    stored = json.loads(json.dumps(asdict(inference_from(cfg).sampler)))
    assert stored["eval"]["name"] == cfg.sampler.eval.name
    saved = InferenceConfig(sampler=EvalSampler(sampler_from(stored["eval"]))).frame_sampler
    keyframes = list(range(0, 300, 25))
    expected = sampler_from(compose_adapt(f"sampler={name}").sampler.eval).build()(
        300, cfg.data.num_frames, None, fps=25.0, keyframes=keyframes
    )
    assert saved(300, cfg.data.num_frames, None, fps=25.0, keyframes=keyframes) == expected


@pytest.mark.parametrize("name", options("adapter"))
def test_adapter_configs_patch_a_model_that_starts_as_the_image_model(name: str, tiny_model_dir: Path) -> None:
    cfg = compose_adapt(f"adapter={name}")
    model, _ = load_model_dir(tiny_model_dir)
    model.eval()
    size = model.vit.patch_embed.img_size
    still = torch.randn(2, 1, 3, *size).expand(-1, 3, -1, -1, -1)
    with torch.no_grad():
        image_model = model.encode(still[:, :1])
        placement_from(cfg.adapter).apply(model)
        video_model = model.encode(still)
    assert bool(adapter_parameters(model)) == (name != "none")
    torch.testing.assert_close(video_model, image_model, atol=1e-5, rtol=1e-5)


def stand_in_dataset(root: Path, images: bool = False) -> None:
    """A dataset folder as `check_videos` leaves it: real H.264 clips (or JPEG images) and a checked manifest."""
    if images:
        stills = make_stills_dataset(root / "generated", num_images=24, seed=5, size=32, show_progress=False)
        rows = [json.loads(line) for line in stills.read_text().splitlines()]
        for row in rows:
            row["image"] = f"generated/{row['image']}"
    else:
        shapes = make_shapes_dataset(
            root / "generated", num_clips=14, seed=5, height=32, width=32, duration=0.5, show_progress=False
        )
        rows = [json.loads(line) for line in shapes.read_text().splitlines()]
        for row in rows:
            row["video"] = f"generated/{row['video']}"
    write_manifest(root / "manifest.checked.jsonl", rows)


@pytest.mark.parametrize("name", options("data"))
def test_data_configs_build_clips_that_load(name: str, tmp_path: Path) -> None:
    cfg = compose_adapt(f"data={name}", f"data.root={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}")
    if cfg.data.synthetic is None:
        stand_in_dataset(tmp_path, images=cfg.data.num_frames == 1)
    elif "num_images" in cfg.data.synthetic:  # stills
        cfg.data.synthetic.num_images, cfg.data.synthetic.size = 24, 32
    else:
        cfg.data.synthetic.num_clips, cfg.data.synthetic.duration = 14, 0.5
    if OmegaConf.is_missing(cfg.data, "shards"):  # webdataset: training images come from tar shards
        cfg.data.shards = write_shards(
            tmp_path / "manifest.checked.jsonl", tmp_path / "shards", per_shard=5, show_progress=False
        )
    data = instantiate(cfg.data)
    assert isinstance(data, ClipData) and data.num_frames == cfg.data.num_frames
    if data.shards:
        stream = TarShardStream(list_shards(data.shards), 2, data.shard_reading(torch.device("cpu")))
        batch = next(stream.batches(0, StreamWork()))
        frames = data.train_transform(32)(batch["frames"], generator=torch.Generator().manual_seed(0))
        assert frames.shape == (2, 1, 3, 32, 32) and all(batch["captions"])
    records = data.records(data.train_split)
    from simvlg_video.data.dataset import clip_loader

    loader = clip_loader(
        records[:2], data.reading, sampler_from(cfg.sampler.train).build(), train=True, batch_size=2, num_workers=0
    )
    batch = next(iter(loader))
    frames = data.train_transform(32)(batch["frames"], generator=torch.Generator().manual_seed(0))
    assert frames.shape == (2, data.num_frames, 3, 32, 32) and len(batch["captions"]) == 2


def experiment_settings(name: str) -> dict:
    """What an experiment file sets, following its defaults list, read independently of Hydra."""
    raw = yaml.safe_load((CONFIGS / "experiment" / f"{name}.yaml").read_text())
    settings: dict = {}
    for parent in raw.pop("defaults", []):
        if parent != "_self_":
            settings = merge(settings, experiment_settings(parent))
    return merge(settings, raw)


def merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        out.update(leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


@pytest.mark.parametrize("name", options("experiment"))
def test_every_setting_of_an_experiment_is_in_force(name: str) -> None:
    """No override may silently fail to apply (the reference's max_len that never reached the model)."""
    if name in PRETRAIN_EXPERIMENTS:
        cfg = compose_adapt(f"experiment={name}", config="pretrain")
    elif name in options("data"):  # a dataset's recipe comes with the dataset
        cfg = compose_adapt(f"data={name}")
        assert compose_adapt(f"data={name}", f"experiment={name}") == cfg
        assert compose_adapt(f"data={name}", "~experiment").train == compose_adapt("~experiment").train
    else:
        cfg = compose_adapt(f"experiment={name}")
    for key, value in leaves(experiment_settings(name)).items():
        assert OmegaConf.select(cfg, key) == value, key


def test_the_event_recipe_runs_from_the_bundled_model_with_the_default_pool() -> None:
    """`adapt data=events` needs no other image model (the bundled LM knows the event words: test_events.py), and
    its pool reads frames as moments of the clip and starts from the clip view."""
    cfg = compose_adapt("data=events")
    assert cfg.image_ckpt is None and cfg.data.num_frames == 8 and cfg.train.steps == 3000
    adapter = cfg.adapter
    assert (adapter.queries, adapter.time_encoding, adapter.space_encoding) == ("clip_view", "clip_time", "sinusoidal")
    anchor = compose_adapt("data=events", "adapter=reference", "adapter.time_encoding=clip_time").adapter
    assert instantiate(anchor).time_encoding == "clip_time"


@pytest.mark.parametrize("name", [name for name in options("experiment") if name not in PRETRAIN_EXPERIMENTS])
def test_only_the_demo_scores_the_image_model_before_training(name: str) -> None:
    """eval.before scores the image model on the whole test split (beam 5 on a dataset): opt-in for the dataset
    recipes, on for the demo, whose before/after table is the point."""
    data = f"data={name}" if name in options("data") else "data=shapes"
    cfg = compose_adapt(data, f"experiment={name}")
    assert cfg.eval.before is (name == "shapes")
    assert compose_adapt().eval.before is True  # the bare command is the demo
    assert compose_adapt("data=msrvtt", "eval.before=true").eval.before is True


def opt_2_7b_folder(folder: Path) -> Path:
    """config.json of OPT-2.7B (no weights: the architecture is built on the meta device) and a tokenizer."""
    folder.mkdir()
    tokenizer = build_word_tokenizer(["a b"])
    tokenizer.save_pretrained(folder)
    OPTConfig(
        hidden_size=2560,
        num_hidden_layers=32,
        num_attention_heads=32,
        ffn_dim=10240,
        vocab_size=50272,
        max_position_embeddings=2048,
        word_embed_proj_dim=2560,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(folder)
    return folder


def test_the_tiny_model_config_is_the_bundled_models_architecture() -> None:
    from simvlg_video.data_tools.build_tiny_image_model import BUNDLED, tiny_model_config

    bundled = read_model_config(BUNDLED / "model.yaml")
    tiny = load_model_config("tiny")
    assert (tiny.vit, tiny.connector, tiny.image_size) == (bundled.vit, bundled.connector, bundled.image_size)
    assert tiny_model_config().connector == bundled.connector


def blip2_trainable_by_hand() -> int:
    """BLIP-2 OPT-2.7B's trainable tensors written out from REFERENCE.md section 9: ln_vision(1408), 32 queries of 768,
    the Q-Former's query path (12 layers of self-attention and feed-forward, cross-attention to 1408-wide ViT tokens in
    layers 0, 2, ..., 10, its input LayerNorm) and opt_proj (768 -> 2560)."""
    h, inner, vision, layers, cross = 768, 3072, 1408, 12, 6
    attention = 4 * (h * h + h) + 2 * h  # query, key, value, output dense, LayerNorm
    cross_attention = 2 * (h * h + h) + 2 * (vision * h + h) + 2 * h  # query and output; key and value read the ViT
    feed_forward = (h * inner + inner) + (inner * h + h) + 2 * h
    qformer = layers * (attention + feed_forward) + cross * cross_attention + 2 * h
    return 2 * vision + 32 * h + qformer + (h * 2560 + 2560)


@pytest.mark.parametrize("name", [name for name in options("model") if name != "tiny"])
def test_model_configs_describe_the_reference_architectures(name: str, tmp_path: Path) -> None:
    cfg = load_model_config(name)
    cfg.lm.path = str(opt_2_7b_folder(tmp_path / "lm"))
    model = build_from_pointers(cfg, tmp_path, meta=True)  # full size without allocating it
    tokens = model.vit.patch_embed.num_patches + 1
    assert model.opt_proj.out_features == 2560 and len(model.vit.blocks) == 39 and tokens == 257
    trainable = sum(t.numel() for t in stored_tensors(model, cfg).values() if t.ndim)  # the ViT comes from a file
    trainable -= sum(p.numel() for p in model.vit.parameters())
    if cfg.connector.kind == "tome":
        assert model.connector.merge_schedule(tokens)[-1] == 29
        assert 88e6 < trainable < 89e6  # REFERENCE.md: about 88.5M
    else:
        assert model.connector.output_tokens(tokens) == 32 and model.ln_vision.eps == 1e-5  # LAVIS's ln_vision
        assert trainable == blip2_trainable_by_hand() == 107_133_696


@pytest.mark.slow
def test_an_installed_wheel_finds_its_configs(tmp_path: Path) -> None:
    """Not the editable checkout: a wheel installed into a folder of its own composes the same config tree."""
    site = installed_wheel(tmp_path)
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    shown = subprocess.run(
        [sys.executable, "-m", "simvlg_video.adapt", "--cfg", "job", "adapter=reference"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    located = subprocess.run(
        [sys.executable, "-c", "import simvlg_video.configs as c; print(c.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    assert located.startswith(str(site))
    cfg = yaml.safe_load(shown.stdout)
    assert cfg["adapter"]["name"] == "reference" and cfg["train"]["steps"] > 0
