"""Built-in parts chosen by name: how a file or a command line says which placement, connector or frame sampler it
means, without naming code.

A choice is `{name: NAME, setting: value, ...}` (or just `NAME`), looked up in one of the toolkit's registries (a
dict of typed dataclasses) and type-checked against that dataclass. Hydra's instructions (`_target_`, `_args_`,
`_partial_`, ...) are refused wherever they stand, and an import path is never followed, not even to check it. Model
directories written before names existed hold the exact `_target_` strings of the toolkit's own classes and
functions; those strings (and only those) are translated to names by a string lookup.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from simvlg_video.errors import UserError

Choice = TypeVar("Choice")


class ChoiceError(UserError, ValueError):
    """Settings that do not choose a built-in part: an unknown name, an import path, a wrong setting."""


def is_instruction(key: Any) -> bool:
    """Whether a key is one of Hydra's instructions (`_target_`, `_args_`, `_partial_`, `_recursive_`, ...)."""
    return isinstance(key, str) and len(key) > 2 and key.startswith("_") and key.endswith("_")


def instruction_keys(tree: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every instruction key in `tree` (nested mappings and lists), in order."""
    if isinstance(tree, DictConfig | ListConfig):
        tree = OmegaConf.to_container(tree, resolve=False)
    found = []
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            path = f"{prefix}{key}"
            if is_instruction(key):
                found.append(path)
            found += instruction_keys(value, f"{path}.")
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            found += instruction_keys(value, f"{prefix}{index}.")
    return found


def choose(
    settings: Any,
    registry: Mapping[str, type[Choice]],
    what: str,
    legacy_targets: Mapping[str, str],
    legacy_keys: Mapping[str, Any] | None = None,
) -> Choice:
    """The `registry` dataclass `settings` names, holding its settings.

    `legacy_targets` maps the exact `_target_` strings earlier versions wrote to names; `legacy_keys` are the other
    instructions those versions wrote beside them, with the one value each always had (`_partial_: true`). Messages
    are relative to where the settings stand; the caller names the file and the key.
    """
    if isinstance(settings, DictConfig):
        settings = OmegaConf.to_container(settings, resolve=True)
    if is_dataclass(settings) and not isinstance(settings, type):  # one already chosen: checked again all the same
        settings = asdict(settings)
    if isinstance(settings, str):
        settings = {"name": settings}
    names = ", ".join(registry)
    if not isinstance(settings, Mapping):
        raise ChoiceError(f"expected a {what} name ({names}) or {{name: ..., settings}}, got {settings!r}")
    settings = dict(settings)
    if "_target_" in settings:
        settings = _translated(settings, what, names, legacy_targets, legacy_keys or {})
    refused = instruction_keys(settings)
    if refused:
        raise ChoiceError(
            f"{refused[0]}: an instruction to build code, which this toolkit never follows; choose a {what} by name "
            f"({names})"
        )
    name = settings.get("name")
    if not isinstance(name, str) or name not in registry:
        raise ChoiceError(f"unknown {what} {name!r}; known: {names}")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(registry[name]), settings))
    except OmegaConfBaseException as error:
        raise ChoiceError(f"{what} {name}: {str(error).splitlines()[0]}") from None


def _translated(
    settings: dict, what: str, names: str, legacy_targets: Mapping[str, str], legacy_keys: Mapping[str, Any]
) -> dict:
    """Old-style settings with the `_target_` of one of the toolkit's own parts, as `{name: ...}` settings."""
    target = settings.pop("_target_")
    if not isinstance(target, str) or target not in legacy_targets or "name" in settings:
        raise ChoiceError(
            f"_target_: {target!r} is an import path, which this toolkit never follows; choose a {what} by name "
            f"({names})"
        )
    for key, value in legacy_keys.items():
        if key in settings and settings[key] == value:
            del settings[key]
    return {"name": legacy_targets[target], **settings}
