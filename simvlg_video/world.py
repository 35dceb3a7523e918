"""The process's world: its rank among torchrun's processes, its device, the collectives that join the processes.

Near the bottom of the package: everything else may import it, and it imports only `errors`.

Launched by `torchrun --nproc_per_node N -m simvlg_video.adapt ...`, every process reads RANK / WORLD_SIZE /
LOCAL_RANK from the environment. One process group serves CPU tensors through gloo and GPU tensors through NCCL,
so host-side counts never wait for the device. Without torchrun every collective here is a no-op on one process.
Collectives give up after the group's timeout (a dead peer brings the others down); work that rank 0 does alone
waits on the rendezvous store instead (`on_main`), which has no such limit.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from simvlg_video.errors import UserError

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_TIMEOUT_MIN = 30.0  # torch's own default, for commands that do not set one
STORE_POLL_S = 60  # how long one wait on the store lasts before rank 0's work is waited for again (no limit overall)


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


def world_from_env() -> World:
    """This process's place as torchrun describes it, before (or without) joining the process group."""
    if not launched_by_torchrun():
        return World()
    return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))


def torchrun_run_id() -> str | None:
    """torchrun's run id (`--rdzv-id`, a fresh one per `--standalone` launch): the same on every node and for every
    restart of one launch; None outside torchrun or when no id was given (torchrun's "none")."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    return run_id if run_id and run_id != "none" else None


def restart_count() -> int:
    """How many times torchrun's agent restarted this process's workers (`--max-restarts`); 0 outside torchrun."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def init_world(timeout_min: float = DEFAULT_TIMEOUT_MIN) -> World:
    """Join the process group torchrun set up (once per process), its collectives limited to `timeout_min`
    minutes; one process: World()."""
    if not launched_by_torchrun():
        return World()
    world = world_from_env()
    if not dist.is_initialized():
        backend = "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(world.local_rank)
            backend = "cpu:gloo,cuda:nccl"
        timeout = datetime.timedelta(minutes=timeout_min)
        dist.init_process_group(backend, timeout=timeout, **_attempt_store(world, timeout))
    return World(dist.get_rank(), dist.get_world_size(), world.local_rank)


def _attempt_store(world: World, timeout: datetime.timedelta) -> dict:
    """The store arguments that give each restart of the workers keys of its own. torchrun's agent keeps one store
    for all restarts of a launch, so a restarted group would read the addresses its dead predecessor published
    there; a prefix per restart keeps them apart (outside the agent's store: torch's own env:// rendezvous)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    agent_store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world.world_size,
        is_master=False,
        timeout=timeout,
    )
    store = dist.PrefixStore(f"simvlg_video/attempt_{restart_count()}", agent_store)
    return {"store": store, "rank": world.rank, "world_size": world.world_size}


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


def max_over_ranks(value: int, world: World) -> int:
    """The largest of every rank's `value` (through gloo: it never waits for a GPU)."""
    if not world.distributed:
        return value
    box = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return int(box.item())


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


class MainRankFailed(RuntimeError):
    """What a rank other than 0 raises when the work rank 0 did alone failed with an error that cannot travel."""


_main_work_count = 0  # on_main calls so far in this process (every rank makes them in the same order)


def on_main(work: Callable[[], T], world: World, what: str) -> T:
    """`work()` done by rank 0 alone, its result on every rank. The other ranks wait on the rendezvous store, not in
    a collective, so rank-0-only work (probing videos, importing a checkpoint) may take longer than the collective
    timeout; an exception `work` raises on rank 0 is raised on every rank, so no rank is left waiting."""
    global _main_work_count
    if not world.distributed:
        return work()
    _main_work_count += 1
    key = f"simvlg_video/main_work/{_main_work_count}"
    store = dist.distributed_c10d._get_default_store()
    if world.is_main:
        try:
            result = work()
        except Exception as error:
            store.set(key, _to_store(error=error))
            raise
        store.set(key, _to_store(result))
        return result
    while True:
        try:
            store.wait([key], datetime.timedelta(seconds=STORE_POLL_S))
            break
        except dist.DistStoreError as timed_out:  # only a timeout: a lost store is a DistNetworkError
            if "timeout" not in str(timed_out).lower():
                raise
            log.info("rank %d: waiting for rank 0 to finish %s", world.rank, what)
    return _from_store(json.loads(store.get(key)), what)


def _to_store(outcome: Any = None, error: Exception | None = None) -> bytes:
    """Rank 0's result (None, a string, a number or a path) or error as JSON: the store is a network service, so
    nothing read from it may choose code to run (no pickle)."""
    if error is not None:
        return json.dumps({"error": type(error).__name__, "message": str(error)}).encode()
    if isinstance(outcome, Path):
        return json.dumps({"path": str(outcome)}).encode()
    if outcome is not None and not isinstance(outcome, (str, int, float, bool)):
        raise TypeError(f"on_main returns None, a string, a number or a path, not {type(outcome).__name__}")
    return json.dumps({"value": outcome}).encode()


def _from_store(sent: dict, what: str) -> Any:
    """What `_to_store` wrote: the result, or the error raised again, as the same user error where it is one of
    the toolkit's (chosen by name among UserError's subclasses), else as MainRankFailed."""
    if "path" in sent:
        return Path(sent["path"])
    if "value" in sent:
        return sent["value"]
    kind = next((c for c in _user_error_classes() if c.__name__ == sent["error"]), None)
    if kind is not None:
        raise kind(sent["message"])
    raise MainRankFailed(f"rank 0 failed while {what}: {sent['error']}: {sent['message']}")


def _user_error_classes() -> list[type[UserError]]:
    found, todo = [], [UserError]
    while todo:
        kind = todo.pop()
        found.append(kind)
        todo.extend(kind.__subclasses__())
    return found
