"""What `--help` of every command lists, generated from the schemas and the config tree so it cannot drift: each
setting as `key: type = default`, and each config group with its options.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf

from simvlg_video.adapters.placements import PLACEMENTS
from simvlg_video.data.clips import ClipData
from simvlg_video.data.samplers import SAMPLERS
from simvlg_video.errors import EXIT_STATUS_HELP

# The config groups a command line chooses from (GROUP=OPTION), with the key the options fill, and `model_config`,
# whose values are the architectures in configs/model/.
GROUPS = ("data", "sampler", "adapter", "experiment")
MODEL_CONFIGS = "model"


def config_tree() -> Path:
    """The folder of the config tree (inside the installed package)."""
    return Path(str(resources.files("simvlg_video.configs")))


def group_options(group: str) -> list[str]:
    """The options of a config group (or of `model_config`: the folder `model`), sorted."""
    return sorted(path.stem for path in (config_tree() / group).glob("*.yaml"))


def type_name(hint: Any) -> str:
    """A type annotation as the help shows it (`float | None`, `list[str]`, `any`)."""
    if hint is Any:
        return "any"
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " | ".join("None" if arg is type(None) else type_name(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is not None:
        return f"{typing.get_origin(hint).__name__}[{', '.join(type_name(a) for a in typing.get_args(hint))}]"
    return getattr(hint, "__name__", str(hint))


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return MISSING


def _shown(value: Any) -> str:
    if value is MISSING or value == MISSING:
        return "(required)"
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    # `$` would be taken for an interpolation (OmegaConf) or a placeholder (Hydra's help template) where this is shown
    return repr(value).replace("${", "{").replace("$", "")


def settings_lines(schema: type, prefix: str = "", skip: tuple[str, ...] = ()) -> list[str]:
    """`key: type = default` for every setting of a dataclass schema, nested sections flattened with dots; fields
    named in `skip` (config groups, listed on their own) and Hydra's instructions (`_target_`) are left out."""
    hints = typing.get_type_hints(schema)
    lines = []
    for field in dataclasses.fields(schema):
        if field.name in skip or (field.name.startswith("_") and field.name.endswith("_")):
            continue
        default = _default(field)
        if dataclasses.is_dataclass(hints[field.name]) and dataclasses.is_dataclass(default):
            lines += settings_lines(type(default), f"{prefix}{field.name}.")
        else:
            lines.append(f"{prefix}{field.name}: {type_name(hints[field.name])} = {_shown(default)}")
    return lines


def group_lines(defaults: dict[str, str]) -> list[str]:
    """One line per config group: its options, the default marked."""
    lines = []
    for group in GROUPS:
        options = [f"{name} (default)" if defaults.get(group) == name else name for name in group_options(group)]
        lines.append(f"{group}=: {', '.join(options)}")
    return lines


def group_settings_lines() -> list[str]:
    """The keys the group choices bring: `data.*` (ClipData), `sampler.train.*`/`sampler.eval.*` (each sampler's
    settings) and `adapter.*` (each placement's)."""
    lines = settings_lines(ClipData, "data.")
    for name, sampler in SAMPLERS.items():
        lines += [f"{line}   (sampler {name})" for line in settings_lines(sampler, "sampler.train.", skip=("name",))]
        lines += [f"{line}   (sampler {name})" for line in settings_lines(sampler, "sampler.eval.", skip=("name",))]
    for name, placement in PLACEMENTS.items():
        lines += [f"{line}   (adapter={name})" for line in settings_lines(placement, "adapter.", skip=("name",))]
    return lines


def indented(title: str, lines: list[str]) -> str:
    return "\n".join([title, *(f"  {line}" for line in lines)])


def yaml_group_defaults(config_name: str) -> dict[str, str]:
    """The group options a primary config file chooses by default (`data: shapes`; a choice by interpolation, such
    as adapt's `experiment: ${data}`, is left out)."""
    chosen = {}
    tree = OmegaConf.to_container(OmegaConf.load(config_tree() / f"{config_name}.yaml"), resolve=False)
    for entry in tree.get("defaults", []):
        if isinstance(entry, dict):
            for key, value in entry.items():
                group = str(key).removeprefix("optional ").strip()
                if group in GROUPS and isinstance(value, str) and "${" not in value:
                    chosen[group] = value
    return chosen


def stage_help(command: str, summary: str, schema: type) -> str:
    """`--help` of a training stage (adapt, pretrain): its groups, every setting and the exit statuses."""
    groups = group_lines(yaml_group_defaults(command))
    groups.append(f"model_config=: {', '.join(group_options(MODEL_CONFIGS))} (configs/model/), or a .yaml file")
    return "\n\n".join(
        [
            f"python -m simvlg_video.{command} [KEY=VALUE ...] [GROUP=OPTION ...]\n\n{summary}",
            indented("config groups (GROUP=OPTION, the default marked; experiment=NAME, ~experiment):", groups),
            indented(
                "settings (KEY=VALUE; key: type = default; the chosen options may set other values, `--cfg job` "
                "prints the composed config):",
                settings_lines(schema, skip=GROUPS),
            ),
            indented("settings the group options bring:", group_settings_lines()),
            EXIT_STATUS_HELP,
        ]
    )
