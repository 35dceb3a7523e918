"""Which parts of a model train; everything else is frozen: no gradients, and eval mode that `train()` cannot undo.

Mode pinning: every frozen module that has no trainable module below it gets an instance-level `train` that always
switches it to eval mode. A later `model.train()` reaches it through its parent and leaves it in eval, so dropout
and drop-path of a frozen part never switch on (the reference left a frozen module in training mode). Trainable
parts and the containers that hold them (e.g. a patched ViT block around its adapter) follow `train()` as usual.
Calling `apply_freeze_policy` again first releases the previous pins.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial

from torch import nn

from simvlg_video.model.adapter_protocol import ADAPTERS, adapter_modules, adapter_parameters

log = logging.getLogger(__name__)


def _stay_in_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    """The `train` of a frozen module: whatever mode is asked for, the module and its children go to eval."""
    return nn.Module.train(module, False)


def _is_pinned(module: nn.Module) -> bool:
    pin = module.__dict__.get("train")
    return isinstance(pin, partial) and pin.func is _stay_in_eval


def _release_pins(model: nn.Module) -> None:
    for module in model.modules():
        if _is_pinned(module):
            del module.__dict__["train"]


def _pin_frozen(module: nn.Module, prefix: str, trainable: set[str], above_trainable: set[str]) -> None:
    """Pin every maximal subtree of `module` that contains no trainable module."""
    for name, child in module.named_children():
        qualified = f"{prefix}.{name}" if prefix else name
        if qualified in trainable:
            continue
        if qualified in above_trainable:
            _pin_frozen(child, qualified, trainable, above_trainable)
        else:
            child.train = partial(_stay_in_eval, child)
            child.train()


def _ancestors(names: list[str]) -> set[str]:
    """Every module name strictly above the given ones ("vit.blocks.3" -> vit, vit.blocks)."""
    out = set()
    for name in names:
        parts = name.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return out


def trainable_parts(trainable: Sequence[str], model: nn.Module) -> list[str]:
    """A run's `train.trainable`, less `adapters` when the chosen placement adds none (adapter=none: the floor)."""
    parts = list(trainable)
    if ADAPTERS in parts and not adapter_parameters(model):
        log.info("the adapter choice adds no modules; training %s", ", ".join(t for t in parts if t != ADAPTERS))
        parts.remove(ADAPTERS)
    return parts


def apply_freeze_policy(model: nn.Module, trainable: Sequence[str]) -> dict[str, int]:
    """Train only the named top-level submodules (and, for "adapters", every adapter anywhere); freeze the rest.

    Returns parameter counts for logging: {"trainable": n, "frozen": n}.
    """
    if isinstance(trainable, str):
        raise TypeError(f"trainable must be a list of names, got the string {trainable!r}")
    parts = dict(model.named_children())
    unknown = [name for name in trainable if name != ADAPTERS and name not in parts]
    if unknown:
        raise ValueError(
            f"unknown trainable part(s) {unknown}; the model's top-level submodules are {list(parts)} "
            f"(plus {ADAPTERS!r} for every temporal adapter)"
        )
    trainable_modules = [name for name in trainable if name != ADAPTERS]
    trainable_params = [p for name in trainable_modules for p in parts[name].parameters()]
    if ADAPTERS in trainable:
        adapters = adapter_modules(model)
        if not adapters:
            raise ValueError(f"{ADAPTERS!r} is listed as trainable but the model has no adapter modules")
        trainable_modules += [name for name, _ in adapters]
        trainable_params += [p for _, p in adapter_parameters(model)]

    for p in model.parameters():
        p.requires_grad_(False)
    for p in trainable_params:
        p.requires_grad_(True)

    _release_pins(model)
    _pin_frozen(model, "", set(trainable_modules), _ancestors(trainable_modules))

    counts = {"trainable": 0, "frozen": 0}
    for p in model.parameters():
        counts["trainable" if p.requires_grad else "frozen"] += p.numel()
    return counts
