"""torchrun support: the process group, the model wrapper (DDP or FSDP), and the few collectives a run needs.

Launched by `torchrun --nproc_per_node N -m simvlg_video.adapt ...`, every process reads RANK / WORLD_SIZE /
LOCAL_RANK from the environment. One process group serves CPU tensors through gloo and GPU tensors through NCCL,
so host-side counts never wait for the device. Without torchrun everything here is a no-op on one process.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_world(timeout_s: float = 1800) -> World:
    """Join the process group torchrun set up (once per process); one process: World()."""
    if not launched_by_torchrun():
        return World()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            backend = "cpu:gloo,cuda:nccl"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


def device_for(world: World, name: str) -> torch.device:
    """Each torchrun process drives the GPU numbered by its LOCAL_RANK (device=cpu keeps every process on CPU)."""
    if world.distributed and name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", world.local_rank)
    from simvlg_video.runtime import pick_device

    return pick_device(name)


def broadcast(value: Any, world: World) -> Any:
    """Rank 0's `value` on every rank (a picklable object)."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any, world: World) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if not world.distributed:
        return [value]
    values: list[Any] = [None] * world.world_size
    dist.all_gather_object(values, value)
    return values


def sum_over_ranks(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """The element-wise sum over ranks (a new tensor; `tensor` itself is left as it is)."""
    if not world.distributed:
        return tensor.clone()
    total = tensor.clone()
    dist.all_reduce(total)
    return total


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


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
        from simvlg_video.train.fsdp import shard_model

        return shard_model(model)
    raise ValueError(f"train.strategy must be ddp or fsdp, got {strategy!r}")


def unwrap(model: nn.Module) -> nn.Module:
    """The captioner inside a DDP wrapper (FSDP shards the model in place, so it is its own module)."""
    return getattr(model, "module", model)


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
