"""The process's world: its rank among torchrun's processes, its device, the collectives that join the processes.

A leaf module of the package: everything else may import it, it imports nothing of ours.

Launched by `torchrun --nproc_per_node N -m simvlg_video.adapt ...`, every process reads RANK / WORLD_SIZE /
LOCAL_RANK from the environment. One process group serves CPU tensors through gloo and GPU tensors through NCCL,
so host-side counts never wait for the device. Without torchrun every collective here is a no-op on one process.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


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


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def pick_device(name: str, world: World = World()) -> torch.device:
    """`auto` is CUDA when present, else CPU; asking for CUDA without a GPU is an error, not a fallback.

    Under torchrun each process drives the GPU numbered by its LOCAL_RANK (device=cpu keeps every process on CPU).
    """
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} was asked for but no CUDA GPU is available")
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", world.local_rank) if world.distributed else torch.device("cuda")
    return torch.device("cpu" if name == "auto" else name)


def share_cpu_with_loaders(device: torch.device, num_workers: int) -> int:
    """On a CPU, the loader's worker processes and torch's compute threads share the cores: each worker gets one,
    compute the rest (at least one thread: threads beyond the free cores only contend with the workers). A GPU run
    keeps torch's default. Returns the compute thread count."""
    if device.type == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores - num_workers))
    return torch.get_num_threads()


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
