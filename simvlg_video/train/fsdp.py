"""FSDP for models that do not fit one GPU: PyTorch's `fully_shard` with one unit per transformer layer.

Each layer of every top-level layer list (ViT blocks, connector layers, LM decoder layers) becomes a unit whose
parameters are gathered just before it runs and freed after; the remaining parameters (embeddings, projections,
norms) form the root unit. Temporal adapters patched into a ViT block belong to that block's unit. Scalar
parameters (the adapters' zero-initialised gates) cannot be sharded: they stay whole on every rank and their
gradients are averaged over ranks as soon as they are computed, as DDP would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn


def layer_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """The outermost ModuleLists of `model` (a ModuleList inside another's layer is part of that layer)."""
    found: list[tuple[str, nn.ModuleList]] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and not any(name.startswith(outer + ".") for outer, _ in found):
            found.append((name, module))
    return found


def _average_over_ranks(parameter: torch.Tensor) -> None:
    dist.all_reduce(parameter.grad)
    parameter.grad.div_(dist.get_world_size())


def shard_model(model: nn.Module) -> nn.Module:
    """Shard `model` in place across the default process group and return it."""
    from torch.distributed.fsdp import fully_shard

    scalars = {p for p in model.parameters() if p.ndim == 0}
    for parameter in scalars:
        if parameter.requires_grad:
            parameter.register_post_accumulate_grad_hook(_average_over_ranks)
    for _, layers in layer_lists(model):
        for layer in layers:
            fully_shard(layer, ignored_params=scalars)
    fully_shard(model, ignored_params=scalars)
    return model


def is_sharded(model: nn.Module) -> bool:
    return any(hasattr(p, "device_mesh") for p in model.parameters())


@contextlib.contextmanager
def gathered_root(model: nn.Module) -> Iterator[None]:
    """Hold the root unit's parameters whole while calling methods other than `forward` (e.g. `generate`): layer
    units gather themselves when called, the root does so only in its own forward."""
    unshard = getattr(model, "unshard", None)
    if unshard is None:
        yield
        return
    unshard()
    try:
        yield
    finally:
        model.reshard()
