"""The settings of the captioning commands (`evaluate`, `caption`, `visualize`): composed by Hydra from
`evaluate.yaml` or `caption.yaml` like adapt's, over the settings the model stores, so the keys, the group choices
(`sampler=NAME`) and the refusals are adapt's.

    evaluate --ckpt RUN_DIR eval.num_beams=3 data.num_frames=8 sampler=fps sampler.eval.rate=4 precision=bf16

Order: the schema's defaults, then the model's own settings (model.yaml `inference:`), then a `sampler=NAME` choice
(that sampler config's eval part replaces the model's sampler), then the other overrides in order.
"""

from __future__ import annotations

import argparse
import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from simvlg_video.configs import CaptionSettings, EvaluateSettings, register_schemas
from simvlg_video.configs.listing import group_options, indented, settings_lines
from simvlg_video.data.samplers import SAMPLERS
from simvlg_video.errors import EXIT_STATUS_HELP, SettingsError
from simvlg_video.eval.inference import (
    InferenceConfig,
    OpenedModel,
    find_model_dir,
    inference_from,
    open_model,
    stored_inference,
)
from simvlg_video.precision import compute_dtype
from simvlg_video.world import World, pick_device

MODEL_SETTINGS = "model_settings"  # the ConfigStore node the YAML files place the model's own settings from
CONFIGS = {"evaluate": "evaluate", "caption": "caption", "visualize": "caption"}  # command -> its config file
SCHEMAS = {"evaluate": EvaluateSettings, "caption": CaptionSettings}  # config file -> its schema
# An argument that is a Hydra override (`key=value`, `+key=value`, `~key`), not a path or a flag.
_OVERRIDE = re.compile(r"^(~[A-Za-z_][\w.]*(=.*)?|\+?[A-Za-z_][\w.]*=.*)$", re.S)


def command_parser(doc: str, command: str) -> argparse.ArgumentParser:
    """The parser of a captioning command: its flags and positionals are added by the command; `--help` ends with
    the settings and the exit statuses."""
    return argparse.ArgumentParser(
        prog=f"python -m simvlg_video.{command}",
        description=doc,
        epilog=settings_help(command),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def split_overrides(argv: Sequence[str], parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """(the overrides, the other arguments) of a command line: an override is `key=value` (or `+key=value`,
    `~key`) anywhere, unless it is the value of one of the parser's flags (`--out a=b.json`) or an existing file or
    folder."""
    value_flags = {flag for action in parser._actions if action.nargs != 0 for flag in action.option_strings}
    overrides, rest = [], []
    after_flag = False
    for argument in argv:
        if not after_flag and _OVERRIDE.match(argument) and not Path(argument).exists():
            overrides.append(argument)
        else:
            rest.append(argument)
        after_flag = argument in value_flags
    return overrides, rest


def override_keys(overrides: Sequence[str]) -> set[str]:
    """The keys (or groups) the overrides set, as Hydra parses them; a malformed one is a SettingsError."""
    try:
        return {override.key_or_group for override in OverridesParser.create().parse_overrides(list(overrides))}
    except HydraException as error:
        raise SettingsError(_one_line(error)) from None


def compose_settings(command: str, own: InferenceConfig, overrides: Sequence[str]) -> DictConfig:
    """`command`'s settings (evaluate, caption or visualize) with the model's `own` under the overrides; an unknown
    key, a wrong type or an unknown option is a SettingsError naming it."""
    register_schemas()
    settings = asdict(own)
    if "sampler" in override_keys(overrides):  # a sampler config chosen: the model's sampler is not merged under it
        del settings["sampler"]
    else:  # typed, so that `sampler.eval.KEY=...` is checked against the model's own sampler
        settings["sampler"] = {"eval": OmegaConf.structured(own.sampler.eval)}
    ConfigStore.instance().store(name=MODEL_SETTINGS, node=settings)
    try:
        with _config_module():
            cfg = compose(CONFIGS[command], overrides=list(overrides))
        inference_from(cfg)  # the sampler and its settings checked by name
        compute_dtype(cfg.precision)
        if cfg.device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", cfg.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N; got {cfg.device!r}")
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        raise SettingsError(f"{_one_line(error)} (the settings: python -m simvlg_video.{command} --help)") from None
    return cfg


@dataclass
class CommandModel:
    """A model a captioning command opened: the model, the command's composed settings and the model's own."""

    opened: OpenedModel
    settings: DictConfig
    own: InferenceConfig


def open_for_command(
    command: str, ckpt: str | Path, overrides: Sequence[str] = (), world: World = World()
) -> CommandModel:
    """Open the model of `ckpt` (a run or model directory) with `command`'s settings: its own, under the overrides
    (checked before the model is loaded); under torchrun on the GPU of this process's LOCAL_RANK."""
    model_dir, _ = find_model_dir(ckpt)
    own = stored_inference(model_dir)
    cfg = compose_settings(command, own, overrides)
    named_precision = "precision" in override_keys(overrides)
    device = pick_command_device(cfg.device, world)
    opened = open_model(ckpt, inference_from(cfg), device, keep_precision=named_precision)
    return CommandModel(opened, cfg, own)


def pick_command_device(name: str, world: World = World()) -> torch.device:
    """The device a command's `device=` names (auto: a GPU when there is one, LOCAL_RANK's under torchrun); one
    that is not there is a SettingsError."""
    try:
        return pick_device(name, world)
    except RuntimeError as error:
        raise SettingsError(str(error)) from None


@contextlib.contextmanager
def _config_module() -> Iterator[None]:
    """Hydra initialised on the toolkit's config tree for one composition; a Hydra app around it (a notebook, a
    sweep) gets its own state back."""
    outer = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("simvlg_video.configs", version_base="1.3"):
            yield
    finally:
        GlobalHydra.instance().clear()
        if outer is not None:
            GlobalHydra.instance().initialize(outer)


def _one_line(error: BaseException) -> str:
    """An error of Hydra or OmegaConf (and its cause) as one line."""
    parts = [str(error)]
    if error.__cause__ is not None and str(error.__cause__) not in parts[0]:
        parts.append(str(error.__cause__))
    lines = [line.strip() for part in parts for line in part.split("Config search path:")[0].splitlines()]
    noise = ("full_key:", "object_type=", "reference_type=", "To append to your config")  # not advice that helps
    kept = [line for line in lines if line and not line.startswith(noise)]
    options = next((i for i, line in enumerate(kept) if line.startswith("Available options")), None)
    if options is not None:  # Hydra lists a group's options one per line
        kept[options:] = [f"{kept[options]} {', '.join(kept[options + 1 :])}"]
    return " ".join(kept)


def settings_help(command: str) -> str:
    """The part of `--help` that lists a captioning command's settings and exit statuses."""
    sampler_lines = [
        f"{line}   (sampler {name})"
        for name, sampler in SAMPLERS.items()
        for line in settings_lines(sampler, "sampler.eval.", skip=("name",))
    ]
    return "\n\n".join(
        [
            indented(
                "settings (KEY=VALUE anywhere on the command line; key: type = default, where the model's own "
                "settings, its model.yaml `inference:`, replace the defaults):",
                settings_lines(SCHEMAS[CONFIGS[command]], skip=("sampler",)),
            ),
            indented(
                "frame sampler: sampler=NAME takes that sampler config's eval part; its settings:",
                [f"sampler=: {', '.join(group_options('sampler'))} (default: the model's own)", *sampler_lines],
            ),
            EXIT_STATUS_HELP,
        ]
    )
