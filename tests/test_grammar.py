"""One grammar for every command: paths as flags or positionals, every setting as an override with the same key in
every command (`eval.num_beams=1` means the same in adapt, pretrain, evaluate, caption and visualize), a misspelt key
refused by name with exit status 2, and `--help` listing every setting."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from adapt_runs import TINY_RUN, command_env, run_module
from omegaconf import OmegaConf

from simvlg_video.configs import AdaptConfig, CaptionSettings, EvalConfig, EvaluateSettings, PretrainConfig
from simvlg_video.configs.commands import compose_settings
from simvlg_video.configs.listing import GROUPS, MODEL_CONFIGS, group_options, settings_lines
from simvlg_video.data.clips import FrameReading
from simvlg_video.data.manifest import read_manifest
from simvlg_video.data.samplers import Uniform
from simvlg_video.errors import SettingsError
from simvlg_video.eval.inference import (
    Decoding,
    EvalSampler,
    InferenceConfig,
    inference_from,
    read_inference_config,
    stored_inference,
)
from simvlg_video.model.captioner import VideoCaptioner

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "simvlg_video" / "assets" / "tiny_image_model"
SHARED = [
    "eval.num_beams=1",
    "eval.max_new_tokens=3",
    "data.num_frames=2",
    "sampler=uniform",
    "precision=fp32",
    "device=cpu",
]
MISSPELT = "eval.num_beam=1"
TINY_PRETRAIN = [
    "data.synthetic.num_images=60",
    "data.synthetic.size=64",
    "train.steps=2",
    "train.batch_size=4",
    "data.num_workers=0",
    "train.warmup_steps=1",
    "eval.batch_size=8",
    "eval.visualize=0",
]


def without_shared(settings: list[str]) -> list[str]:
    """`settings` less the keys SHARED sets (one value per key on a command line)."""
    shared = {item.split("=")[0] for item in SHARED}
    return [item for item in settings if item.split("=")[0] not in shared]


def refused_by_name(result: subprocess.CompletedProcess, hydra: bool = False) -> None:
    """Exit status 2, the misspelt key named, no traceback; one `error: ...` line where the command is ours."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "eval.num_beam" in result.stderr and "Traceback" not in result.stderr
    if not hydra:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "'num_beam'" in lines[0], lines


@pytest.mark.slow
def test_every_command_takes_the_same_settings_and_refuses_a_misspelt_key(tiny_model_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    adapted = run_module(
        "simvlg_video.adapt",
        "--image-ckpt",
        str(tiny_model_dir),
        *without_shared(TINY_RUN),
        *SHARED,
        "eval.before=false",
        "eval.visualize=0",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert adapted.returncode == 0, adapted.stderr[-3000:]
    config = OmegaConf.load(run / "config.yaml")
    assert (config.eval.num_beams, config.eval.max_new_tokens, config.data.num_frames) == (1, 3, 2)
    assert (config.sampler.eval.name, config.precision, config.device) == ("uniform", "fp32", "cpu")
    stored = OmegaConf.to_container(OmegaConf.load(run / "model" / "model.yaml").inference)
    assert (stored["eval"]["num_beams"], stored["eval"]["max_new_tokens"], stored["data"]["num_frames"]) == (1, 3, 2)
    assert stored["sampler"] == {"eval": {"name": "uniform"}} and stored["precision"] == "fp32"

    pretrained = run_module(
        "simvlg_video.pretrain", *TINY_PRETRAIN, *SHARED, f"hydra.run.dir={tmp_path / 'image'}", cwd=tmp_path
    )
    assert pretrained.returncode == 0, pretrained.stderr[-3000:]
    image_config = OmegaConf.load(tmp_path / "image" / "config.yaml")
    assert (image_config.eval.num_beams, image_config.eval.max_new_tokens, image_config.data.num_frames) == (1, 3, 2)

    manifest = Path(config.data.manifest)
    video = str(read_manifest(manifest, "test")[0].video_path)
    evaluated = run_module("simvlg_video.evaluate", "--ckpt", str(run), *SHARED, "eval.split=val", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    settings = json.loads((run / "eval" / "val_metrics.json").read_text())["settings"]  # the model's own settings
    assert (settings["eval"]["num_beams"], settings["data"]["num_frames"], settings["eval"]["split"]) == (1, 2, "val")
    captioned = run_module("simvlg_video.caption", "--ckpt", str(run), video, *SHARED, cwd=tmp_path)
    assert captioned.returncode == 0 and captioned.stdout.startswith(video), captioned.stderr[-3000:]
    picture = tmp_path / "picture.png"
    drawn = run_module(
        "simvlg_video.visualize", "--ckpt", str(run), video, "--out", str(picture), *SHARED, cwd=tmp_path
    )
    assert drawn.returncode == 0 and picture.is_file(), drawn.stderr[-3000:]

    for module, arguments in (
        ("simvlg_video.evaluate", ["--ckpt", str(run)]),
        ("simvlg_video.caption", ["--ckpt", str(run), video]),
        ("simvlg_video.visualize", ["--ckpt", str(run), video, "--out", str(tmp_path / "not_drawn.png")]),
    ):
        refused_by_name(run_module(module, *arguments, *SHARED, MISSPELT, cwd=tmp_path))
    assert not (tmp_path / "not_drawn.png").exists()
    for module in ("simvlg_video.adapt", "simvlg_video.pretrain"):
        result = run_module(module, *SHARED, MISSPELT, f"hydra.run.dir={tmp_path / 'refused'}", cwd=tmp_path)
        refused_by_name(result, hydra=True)
    assert not (tmp_path / "refused").exists()


def test_a_setting_another_command_has_is_refused_where_it_does_not_apply(tiny_model_dir: Path):
    """`eval.split` chooses what evaluate scores; caption has no split, and says so."""
    from simvlg_video.configs.commands import open_for_command
    from simvlg_video.errors import SettingsError

    with pytest.raises(SettingsError, match=r"eval\.split.*Key 'split' not in 'Decoding'.*caption --help"):
        open_for_command("caption", tiny_model_dir, ["eval.split=val"])
    with pytest.raises(SettingsError, match=r"precision must be one of fp32, bf16, fp16; got 'fp17'"):
        open_for_command("caption", tiny_model_dir, ["precision=fp17"])
    with pytest.raises(SettingsError, match=r"device must be auto, cpu, cuda or cuda:N; got 'tpu'"):
        open_for_command("caption", tiny_model_dir, ["device=tpu"])


SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
SETTINGS = {
    "simvlg-adapt": AdaptConfig,
    "simvlg-pretrain": PretrainConfig,
    "simvlg-evaluate": EvaluateSettings,
    "simvlg-caption": CaptionSettings,
    "simvlg-visualize": CaptionSettings,
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_console_script_answers_help_with_its_settings_and_exit_statuses(script: str, tmp_path: Path):
    """The function each console script calls, as the script calls it: `--help` exits 0, lists every setting as
    `key: type = default` and documents the exit statuses."""
    module, function = SCRIPTS[script].split(":")
    call = f"import sys; sys.argv = [{script!r}, '--help']; from {module} import {function}; sys.exit({function}())"
    shown = subprocess.run(
        [sys.executable, "-c", call], cwd=tmp_path, env=command_env(tmp_path), capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr[-3000:]
    text = " ".join(shown.stdout.split())  # argparse wraps its epilog's lines
    assert "exit status: 0 when everything asked for was done, 1 when some inputs failed" in text
    assert "2 for a usage error or bad input" in text
    if script in SETTINGS:
        for line in settings_lines(SETTINGS[script], skip=(*GROUPS, "sampler")):
            assert " ".join(line.split()) in text, line
    if script in ("simvlg-adapt", "simvlg-pretrain"):
        assert "data.num_workers: int = 2" in text and "sampler.eval.rate: float = 2.0" in text
        for group in GROUPS:
            assert f"{group}=: " in text


def test_the_flat_inference_form_of_earlier_versions_still_loads():
    """The bundled image model stores its settings as earlier versions wrote them (every key at the top, the
    sampler by name): they are read under the nested keys, known keys only, and take today's overrides."""
    raw = OmegaConf.to_container(OmegaConf.load(BUNDLED / "model.yaml").inference)
    assert {"num_frames", "num_beams", "num_workers"} <= raw.keys() and raw["sampler"] == {"name": "uniform"}
    own = stored_inference(BUNDLED)
    assert own == InferenceConfig(
        FrameReading(num_frames=1, num_workers=2),
        EvalSampler(Uniform()),
        Decoding(batch_size=32, num_beams=5, min_new_tokens=1, max_new_tokens=8),
        precision="fp32",
    )
    changed = inference_from(compose_settings("caption", own, ["eval.num_beams=2", "data.num_frames=3"]))
    assert (changed.eval.num_beams, changed.data.num_frames, changed.eval.max_new_tokens) == (2, 3, 8)
    with pytest.raises(SettingsError, match=r"model\.yaml: inference: Key 'num_beam' not in 'InferenceConfig'"):
        read_inference_config({**raw, "num_beam": 3}, "model.yaml: inference")
    with pytest.raises(SettingsError, match=r"num_beams and eval\.num_beams are both given"):
        read_inference_config({**raw, "eval": {"num_beams": 2}}, "model.yaml: inference")


def documented_groups(text: str) -> dict[str, set[str]]:
    """{group: options} of the table headed | group | options |, whose rows read | `GROUP=` | `option`, ... |."""
    table = text[text.index("| group | options |") :].split("\n\n")[0]
    rows = re.findall(r"^\| `(\w+)=` \| (.*) \|$", table, flags=re.M)
    return {group: set(re.findall(r"`([\w.]+)`", options)) for group, options in rows}


def test_the_readme_and_the_architecture_list_every_config_group_and_option():
    tree = {group: set(group_options(group)) for group in GROUPS}
    tree["model_config"] = set(group_options(MODEL_CONFIGS))
    for doc in (REPO / "README.md", REPO / "docs" / "architecture.md"):
        assert documented_groups(doc.read_text()) == tree, doc.name


def test_decoding_has_its_defaults_in_one_schema():
    """adapt's and pretrain's `eval:`, a model's stored settings and the captioning commands share Decoding; the
    captioner's `generate` has no decoding defaults of its own."""
    assert issubclass(EvalConfig, Decoding) and issubclass(EvaluateSettings, InferenceConfig)
    assert InferenceConfig().eval == Decoding() and CaptionSettings().eval == Decoding()
    for method in (VideoCaptioner.generate, VideoCaptioner.generate_ids):
        parameters = inspect.signature(method).parameters
        for name in Decoding().generation:
            assert parameters[name].default is inspect.Parameter.empty, (method.__name__, name)
