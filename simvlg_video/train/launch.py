"""Starting a training process: `--flag VALUE` options as Hydra overrides, and torchrun's processes sharing one run
directory."""

from __future__ import annotations

import os
import re
import shlex
from datetime import datetime
from pathlib import Path

from simvlg_video.errors import UsageError
from simvlg_video.world import World, broadcast


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


def launch_overrides(arguments: list[str], world: World) -> list[str]:
    """Hydra overrides a training process adds to the user's.

    Under torchrun, the processes of one launch share rank 0's timestamped output folder (unless one is given), with
    Hydra's own files and log written by rank 0 only. A resumed run (`resume=...`) keeps the `.hydra/` files of the
    run it continues (they describe the same settings), so a resume that is refused leaves every file untouched.
    """
    given = {override_key(argument): argument.partition("=")[2] for argument in arguments}
    extra = []
    if given.get("resume", "null") not in ("null", ""):
        extra.append("hydra.output_subdir=null")
    if not world.distributed:
        return extra
    stamp = broadcast(datetime.now().strftime("%Y-%m-%d_%H-%M-%S"), world)
    extra += [
        f"{key}={folder}/{stamp}"
        for key, folder in (("hydra.run.dir", "runs"), ("hydra.sweep.dir", "multirun"))
        if key not in given
    ]
    if not world.is_main:
        extra += [f"hydra.job.name=adapt_rank{world.rank}"]
        if "hydra.output_subdir=null" not in extra:
            extra.append("hydra.output_subdir=null")
    return extra


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
