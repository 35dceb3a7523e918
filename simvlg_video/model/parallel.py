"""How a model is spread over torchrun's processes: a DDP replica per process, or FSDP shards.

FSDP (`fully_shard`) makes one unit of each layer of every top-level layer list (ViT blocks, connector layers, LM
decoder layers): its parameters are gathered just before it runs and freed after; the remaining parameters
(embeddings, projections, norms) form the root unit. Temporal adapters patched into a ViT block belong to that
block's unit. Scalar parameters (the adapters' zero-initialised gates) cannot be sharded: they stay whole on every
rank and their gradients are averaged over ranks as soon as they are computed, as DDP would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from simvlg_video.world import World


def wrap_model(model: nn.Module, world: World, strategy: str) -> nn.Module:
    """The module the training step calls: the model itself on one process, else DDP or FSDP around it.

    DDP keeps a full replica per process and all-reduces the trainable gradients (frozen parameters have no
    gradient hooks). FSDP (`fully_shard`, one unit per ViT block, connector layer and LM decoder layer) shards
    parameters, gradients and optimiser state for models that do not fit one GPU.
    """
    if not world.distributed:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [world.local_rank] if next(model.parameters()).is_cuda else None
        return DistributedDataParallel(model, device_ids=device_ids)
    if strategy == "fsdp":
        return shard_model(model)
    raise ValueError(f"train.strategy must be ddp or fsdp, got {strategy!r}")


def unwrap(model: nn.Module) -> nn.Module:
    """The captioner inside a DDP wrapper (FSDP shards the model in place, so it is its own module)."""
    return getattr(model, "module", model)


def whole_on_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors whole, detached, contiguous, on the CPU; FSDP shards are gathered (a collective: call it on every
    rank)."""
    return {
        name: (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().cpu().contiguous()
        for name, t in tensors.items()
    }


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
