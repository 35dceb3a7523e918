"""A model directory is data: what its model.yaml names is chosen by name from the toolkit's own registries, and
anything that names code (an import path, `_target_`, `_args_`, `_partial_`) is refused, naming the file and the key,
before anything is built or touched. Directories written with the toolkit's own `_target_` strings still load."""

from __future__ import annotations

import re
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from adapt_runs import run_module
from omegaconf import OmegaConf

from simvlg_video.adapters.placements import Reference
from simvlg_video.configs.commands import command_parser, open_for_command, split_overrides
from simvlg_video.data.clips import FrameReading
from simvlg_video.data.manifest import read_manifest
from simvlg_video.data.samplers import Fps, Uniform
from simvlg_video.errors import SettingsError
from simvlg_video.eval.inference import Decoding, EvalSampler, InferenceConfig, open_model
from simvlg_video.formats.model_dir import MODEL_CONFIG, load_model_dir, save_model_dir
from simvlg_video.model.config import ModelDirError

REFERENCE = Reference(qk_dim=16, num_heads=4, blocks=[1, 3])


@pytest.fixture(scope="module")
def video_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A video model directory as `adapt` exports one: the reference placement and the run's caption settings."""
    model, cfg = load_model_dir(tiny_model_dir)
    REFERENCE.apply(model)
    with torch.no_grad():
        for index in REFERENCE.blocks:
            model.vit.blocks[index].temporal_merge.alpha.fill_(0.5)
    cfg.adapter = asdict(REFERENCE)
    cfg.inference = asdict(
        InferenceConfig(FrameReading(2, num_workers=0), EvalSampler(Uniform()), Decoding(num_beams=1, max_new_tokens=4))
    )
    return save_model_dir(model, cfg, tmp_path_factory.mktemp("video_model") / "model", base_dir=tiny_model_dir)


@pytest.fixture
def model_dir(video_model_dir: Path, tmp_path: Path) -> Path:
    """A private copy this test may rewrite."""
    return Path(shutil.copytree(video_model_dir, tmp_path / "model"))


def rewrite(model_dir: Path, key: str, value) -> None:
    """Set one key of model.yaml (the weights file's fingerprint covers weights.safetensors only)."""
    config = OmegaConf.load(model_dir / MODEL_CONFIG)
    OmegaConf.update(config, key, value, merge=False)
    OmegaConf.save(config, model_dir / MODEL_CONFIG)


def code_naming(marker: Path) -> list[tuple[object, str]]:
    """(settings that would create or touch `marker` if followed, what the refusal says)."""
    return [
        ({"_target_": "os.system", "_args_": [f"touch {marker}"]}, "_target_: 'os.system' is an import path"),
        ({"_target_": "pathlib.Path.touch", "_args_": [str(marker)]}, "'pathlib.Path.touch' is an import path"),
        ({"_target_": "pathlib.Path.touch", "_partial_": True}, "'pathlib.Path.touch' is an import path"),
        ({"name": "reference", "_args_": [str(marker)]}, "_args_: an instruction to build code"),
    ]


def refusals(marker: Path, key: str) -> list[tuple[object, str]]:
    """(settings of `key`, what the refusal says) for every way to name code or an unknown part."""
    touch = {"_target_": "pathlib.Path.touch", "_args_": [str(marker)]}
    if key == "adapter":
        nested, legacy = {"name": "reference", "blocks": touch}, "simvlg_video.adapters.placements.Reference"
    else:
        nested, legacy = {"name": "fps", "rate": touch}, "simvlg_video.data.sampling.uniform"
    return [
        *code_naming(marker),
        (nested, "._target_: an instruction to build code"),  # below a known name
        ({"_target_": legacy, "_args_": [str(marker)]}, "_args_: an instruction"),  # a known old-style path, and more
        ({"name": "no_such_part"}, "unknown"),
        ("pathlib.Path.touch", "unknown"),  # an import path given as the name
    ]


@pytest.mark.parametrize("key", ["adapter", "inference.sampler.eval", "inference.sampler"])  # the last: old form
def test_a_model_yaml_that_names_code_is_refused_before_anything_is_built(model_dir: Path, tmp_path: Path, key: str):
    marker = tmp_path / "touched"
    config_file = model_dir / MODEL_CONFIG
    for settings, said in refusals(marker, key):
        rewrite(model_dir, key, settings)
        for load in (load_model_dir, open_model):  # open_model: what caption, evaluate and visualize use
            with pytest.raises(ModelDirError) as error:
                load(model_dir)
            message = str(error.value)
            assert message.startswith(f"{config_file}: {key}:") and said in message, message
            assert not marker.exists(), settings


@pytest.mark.parametrize("key", ["adapter", "inference.sampler.eval"])
def test_the_same_directory_with_a_part_chosen_by_name_loads(model_dir: Path, video_model_dir: Path, key: str):
    """Positive control for the refusals: the exported model.yaml names both parts by name, and loads."""
    text = (model_dir / MODEL_CONFIG).read_text()
    assert "_target_" not in text and "_partial_" not in text
    if key == "adapter":
        rewrite(model_dir, key, {"name": "reference", "qk_dim": 16, "num_heads": 4, "blocks": [1, 3]})
    else:
        rewrite(model_dir, key, {"name": "fps", "rate": 3.0})
    opened = open_model(model_dir)
    assert opened.config.adapter == asdict(REFERENCE)
    expected, _ = load_model_dir(video_model_dir)
    assert torch.equal(opened.model.vit.blocks[3].temporal_merge.alpha, expected.vit.blocks[3].temporal_merge.alpha)
    assert opened.inference.sampler.eval == (Fps(rate=3.0) if key != "adapter" else Uniform())


def test_anything_else_that_names_code_is_refused_too(model_dir: Path, tmp_path: Path):
    """Any instruction anywhere in model.yaml, and ViT settings that are not the ViT's (timm.create_model would read a
    checkpoint_path that no fingerprint checks)."""
    rewrite(model_dir, "connector.num_layers", {"_target_": "pathlib.Path.touch", "_args_": [str(tmp_path / "x")]})
    with pytest.raises(ModelDirError, match=r"model\.yaml: connector\.num_layers\._target_: an instruction"):
        load_model_dir(model_dir)
    rewrite(model_dir, "connector.num_layers", 4)
    rewrite(model_dir, "vit.overrides.checkpoint_path", str(tmp_path / "elsewhere.pth"))
    with pytest.raises(ModelDirError, match=r"model\.yaml: vit\.overrides\.checkpoint_path is not a setting of the"):
        load_model_dir(model_dir)


def test_a_directory_written_with_the_toolkits_own_target_strings_loads_by_name(model_dir: Path):
    """Format 2 as earlier versions wrote it: the exact `_target_` strings of the toolkit's placements and samplers
    are translated to names by a string lookup, and the settings read back as the by-name form."""
    old_adapter = {"_target_": "simvlg_video.adapters.placements.Reference", **asdict(REFERENCE)}
    del old_adapter["name"]
    rewrite(model_dir, "adapter", old_adapter)
    rewrite(model_dir, "inference.sampler", {"_target_": "simvlg_video.data.sampling.at_rate", "_partial_": True})
    rewrite(model_dir, "inference.sampler.rate", 5.0)
    opened = open_model(model_dir)
    assert opened.config.adapter == asdict(REFERENCE)
    assert opened.inference.sampler.eval == Fps(rate=5.0)
    assert all(hasattr(opened.model.vit.blocks[i], "temporal_merge") for i in REFERENCE.blocks)
    rewrite(model_dir, "inference.sampler", {"_target_": "simvlg_video.data.sampling.uniform", "_partial_": True})
    assert open_model(model_dir).inference.sampler.eval == Uniform()


def test_caption_and_evaluate_choose_another_sampler_by_name(model_dir: Path):
    """`sampler=NAME` takes another sampler config's eval part, `sampler.eval.KEY=VALUE` changes a setting of the
    sampler in use (the model's own, or the chosen one); an import path or a wrong setting is refused, naming it."""
    opened = open_for_command("caption", model_dir, ["sampler=fps", "sampler.eval.rate=4", "eval.num_beams=2"]).opened
    assert opened.inference.sampler.eval == Fps(rate=4.0) and opened.inference.eval.num_beams == 2
    assert opened.inference.frame_sampler(100, 4, None, fps=25.0) == [37, 43, 50, 56]  # 4 frames/s, centred
    rewrite(model_dir, "inference.sampler.eval", {"name": "fps", "rate": 2.0})
    assert open_for_command("caption", model_dir, ["sampler=head"]).opened.inference.sampler.eval.name == "head"
    assert open_for_command("evaluate", model_dir, ["sampler.eval.rate=3"]).opened.inference.sampler.eval.rate == 3.0
    for wrong, said in (
        ("sampler=pathlib.Path.touch", "Could not find 'sampler/pathlib.Path.touch'"),
        ("sampler.eval._target_=pathlib.Path.touch", "Key '_target_' not in 'Fps'"),
        ("sampler.eval.rate=fast", "sampler.eval.rate=fast"),
    ):
        with pytest.raises(SettingsError, match=re.escape(said)):
            open_for_command("caption", model_dir, [wrong])


def test_overrides_are_told_from_paths_and_flag_values(tmp_path: Path):
    parser = command_parser("", "caption")
    parser.add_argument("--out")
    (tmp_path / "a=b.mp4").touch()  # a file whose name looks like a setting is a file
    argv = ["--ckpt", "x", "sampler=fps", "eval.num_beams=2", str(tmp_path / "a=b.mp4"), "--out", "c=d.json", "~x"]
    overrides, rest = split_overrides(argv, parser)
    assert overrides == ["sampler=fps", "eval.num_beams=2", "~x"]
    assert rest == ["--ckpt", "x", str(tmp_path / "a=b.mp4"), "--out", "c=d.json"]


def one_line_refusal(result, config_file: Path, key: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {config_file}: {key}:"), result.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.java
def test_caption_and_evaluate_refuse_a_model_that_names_code(model_dir: Path, shapes_set: Path, tmp_path: Path):
    marker = tmp_path / "touched"
    video = str(read_manifest(shapes_set, "test")[0].video_path)
    config_file = model_dir / MODEL_CONFIG
    good = config_file.read_text()
    for key in ("adapter", "inference.sampler"):
        rewrite(model_dir, key, {"_target_": "pathlib.Path.touch", "_args_": [str(marker)]})
        captioned = run_module("simvlg_video.caption", "--ckpt", str(model_dir), video, cwd=tmp_path)
        assert captioned.returncode == 2 and not captioned.stdout  # documented: 2 for a usage error
        one_line_refusal(captioned, config_file, key)
        scored = run_module(
            "simvlg_video.evaluate", "--ckpt", str(model_dir), "--manifest", str(shapes_set), cwd=tmp_path
        )
        assert scored.returncode != 0
        one_line_refusal(scored, config_file, key)
        assert not marker.exists() and not (model_dir / "eval").exists()
        config_file.write_text(good)
    # positive control: the same directory, its parts chosen by name
    captioned = run_module("simvlg_video.caption", "--ckpt", str(model_dir), video, cwd=tmp_path)
    assert captioned.returncode == 0 and captioned.stdout.startswith(video), captioned.stderr[-2000:]
    scored = run_module("simvlg_video.evaluate", "--ckpt", str(model_dir), "--manifest", str(shapes_set), cwd=tmp_path)
    assert scored.returncode == 0 and (model_dir / "eval" / "test_metrics.json").is_file(), scored.stderr[-2000:]
