"""Starting a training process: `--flag VALUE` options as Hydra overrides, and torchrun's processes sharing one run
directory, on every node and through every restart."""

from __future__ import annotations

import logging
import os
import re
import shlex
import socket
import time
import uuid
from pathlib import Path

from simvlg_video.durable import write_text_atomically
from simvlg_video.errors import UsageError, UserError
from simvlg_video.world import World, gather, on_main, restart_count, torchrun_run_id

log = logging.getLogger(__name__)
SHARED_CHECK = ".shared_check"  # RUN_DIR/SHARED_CHECK: rank 0's token, read back by every other rank
SHARED_CHECK_TRIES = 10  # reads, a second apart, before a rank says it cannot see the token (network filesystems
# may show a new file late)


class RunDirNotShared(UserError, OSError):
    """Under torchrun, a process that cannot see what rank 0 writes into the run directory."""


def flags_to_overrides(argv: list[str], flags: dict[str, str]) -> list[str]:
    """Rewrite `--image-ckpt PATH` / `--image-ckpt=PATH` style flags into Hydra `key=value` overrides; a flag
    without its value is a UsageError."""
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        name, has_value, value = arg.partition("=")
        if name in flags:
            if not has_value:
                value = next(args, None)
                if value is None:
                    raise UsageError(f"{name} needs a value")
            quoted = value if re.fullmatch(r"[\w./~-]+", value) else "'" + value.replace("'", "\\'") + "'"
            out.append(f"{flags[name]}={quoted}")
        else:
            out.append(arg)
    return out


def launch_arguments(arguments: list[str], world: World) -> list[str]:
    """The user's Hydra overrides with what a training process adds to them.

    Under torchrun every process of a launch, on every node and after every restart, writes one run directory: the
    one given (`hydra.run.dir`), else runs/<torchrun's run id> (`--rdzv-id`; a fresh one per `--standalone`
    launch), with Hydra's own files and log written by rank 0 only. A restart (`--max-restarts`) continues the run
    from its newest checkpoint (`resume=auto`, whatever `resume` the first attempt had). A resumed run keeps the
    `.hydra/` files of the run it continues (they describe the same settings), so a resume that is refused leaves
    every file untouched.
    """
    given = {override_key(argument): argument.partition("=")[2] for argument in arguments}
    extra = []
    if restart_count() > 0:
        arguments = [argument for argument in arguments if override_key(argument) != "resume"]
        given["resume"] = "auto"
        extra.append("resume=auto")
        log.warning("torchrun restart %d: continuing the run from its newest checkpoint", restart_count())
    if given.get("resume", "null") not in ("null", ""):
        extra.append("hydra.output_subdir=null")
    run_id = torchrun_run_id()
    if run_id is None and not world.distributed:
        return [*extra, *arguments]
    if run_id is None and "hydra.run.dir" not in given:
        raise UsageError(
            "under torchrun without --rdzv-id, give hydra.run.dir=PATH: every process, on every node and after "
            "every restart, must write the same run directory"
        )
    folders = {"hydra.run.dir": f"runs/{run_id}", "hydra.sweep.dir": f"multirun/{run_id}"}
    if run_id is None:  # a sweep's jobs go under the run directory given
        folders = {"hydra.sweep.dir": given["hydra.run.dir"]}
    extra += [f"{key}={folder}" for key, folder in folders.items() if key not in given]
    if not world.is_main:
        extra += [f"hydra.job.name=adapt_rank{world.rank}"]
        if "hydra.output_subdir=null" not in extra:
            extra.append("hydra.output_subdir=null")
    return [*extra, *arguments]


def check_shared_run_dir(run_dir: Path, world: World) -> None:
    """Every process must see what rank 0 writes into the run directory (the manifest, the imported model,
    checkpoints): rank 0 writes a token there, every other rank reads it back, and a process that cannot is named
    on every rank (RunDirNotShared) before any work."""
    if not world.distributed:
        return

    def write_token() -> str:
        token = uuid.uuid4().hex
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomically(run_dir / SHARED_CHECK, token)
        return token

    token = on_main(write_token, world, "writing the run directory's check file")
    blind = None
    if not world.is_main and _read_token(run_dir / SHARED_CHECK) != token:
        blind = f"rank {world.rank} on {socket.gethostname()}"
    blind_ranks = [who for who in gather(blind, world) if who is not None]
    if world.is_main:
        (run_dir / SHARED_CHECK).unlink(missing_ok=True)
    if blind_ranks:
        raise RunDirNotShared(
            f"the run directory {run_dir.resolve()} must be on a filesystem every node sees (the same path on each): "
            f"{', '.join(blind_ranks)} cannot read the file rank 0 wrote there; give hydra.run.dir on a shared "
            "filesystem"
        )


def _read_token(path: Path) -> str | None:
    for attempt in range(SHARED_CHECK_TRIES):
        try:
            os.listdir(path.parent)  # refreshes a network filesystem's view of the folder
            return path.read_text()
        except OSError:
            if attempt + 1 < SHARED_CHECK_TRIES:
                time.sleep(1)
    return None


def override_key(override: str) -> str:
    """The key a Hydra override sets or removes (`train.lr=1e-4`, `+key=value`, `~key`)."""
    return override.split("=", 1)[0].lstrip("+~")


def rerun_command(module: str, overrides: list[str], run_dir: Path, world: World, settings: dict[str, str]) -> str:
    """The command line that runs `module` again in `run_dir` with the run's own `overrides` and `settings`
    replacing theirs (e.g. resume=auto train.lr=...), as processes of the same count."""
    kept = [item for item in overrides if override_key(item) not in {*settings, "hydra.run.dir"}]
    arguments = [*kept, f"hydra.run.dir={run_dir}", *(f"{key}={value}" for key, value in settings.items())]
    launcher = ["python"]
    if world.distributed:
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world.world_size))
        launcher = ["torchrun", "--nproc_per_node", str(per_node)]
        if per_node != world.world_size:
            launcher += ["--nnodes", str(world.world_size // per_node), "[the run's rendezvous options]"]
    return " ".join([*launcher, "-m", module, *map(shlex.quote, arguments)])
