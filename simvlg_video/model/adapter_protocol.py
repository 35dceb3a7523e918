"""What the model, the optimiser and the tools ask of a temporal adapter, whatever its class.

Adapters (the modules that add time to an image model: `simvlg_video.adapters`) are found by this protocol, never by
class, so the model and the training code name no adapter. Every parameter of an adapter trains when adapters
train; each adapter says itself which of them weight decay must leave alone (zero-initialised gates, code tables),
how to switch to the plain matmul-softmax-matmul attention a straightforward port computes, and how to record and
show its attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

ADAPTERS = "adapters"  # the name that stands for every adapter in `train.trainable`


@dataclass
class AttentionMap:
    """Attention recorded in a forward, ready to draw: `weights[i, j]` is how much row i draws from frame j."""

    weights: torch.Tensor  # (rows, frames)
    title: str
    row_label: str  # "frame" when rows are frames too, else what a row is ("output token")


@runtime_checkable
class Adapter(Protocol):
    """A module added to an image model for video; every parameter of it trains when adapters train."""

    def no_decay_params(self) -> list[str]:
        """Names (relative to the module) of parameters weight decay must not pull towards zero."""

    def set_plain_attention(self, plain: bool) -> None:
        """True: compute attention as matmul-softmax-matmul, as a straightforward port does (same values, slower)."""

    def record_attention(self, on: bool) -> None:
        """Keep the next forwards' attention weights for :meth:`attention_map` (off in training: it costs memory)."""

    def attention_map(self) -> AttentionMap | None:
        """The attention recorded in the last forward of the first clip, None if none was recorded."""


class AttentionSwitches:
    """The protocol's two switches for an adapter module whose attention has a plain path and can be recorded: the
    module reads `self.plain` and, when `self.recording`, keeps its weights in `self.last_attention`."""

    plain = False
    recording = False
    last_attention: torch.Tensor | None = None

    def set_plain_attention(self, plain: bool) -> None:
        self.plain = plain

    def record_attention(self, on: bool) -> None:
        self.recording = on
        self.last_attention = None


def adapter_modules(model: nn.Module) -> list[tuple[str, Adapter]]:
    """Every adapter inside `model` with its qualified name (outermost ones; an adapter inside another is its part)."""
    found: list[tuple[str, Adapter]] = []
    for name, module in model.named_modules():
        if isinstance(module, Adapter) and not any(outer == "" or name.startswith(f"{outer}.") for outer, _ in found):
            found.append((name, module))
    return found


def _qualified(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def adapter_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(qualified name, parameter) of every parameter of every adapter inside `model`."""
    return [
        (_qualified(prefix, name), param)
        for prefix, adapter in adapter_modules(model)
        for name, param in adapter.named_parameters()
    ]


def no_decay_parameter_names(model: nn.Module) -> set[str]:
    """Qualified names of the adapter parameters that their adapters exempt from weight decay."""
    return {
        _qualified(prefix, name) for prefix, adapter in adapter_modules(model) for name in adapter.no_decay_params()
    }
