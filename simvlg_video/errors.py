"""The one family of exceptions the toolkit raises for what a user handed over or asked for.

Library code never exits the process: a bad file, a bad setting or an impossible request raises a `UserError` whose
message names the file, key or setting and what was expected. Only the commands (`python -m ...` entry points and
their console scripts) turn one into an exit status and one `error: ...` line on stderr, so the library can be used
from a notebook or another program by catching `UserError`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

OK = 0  # everything asked for was done
SOME_FAILED = 1  # the command ran, but some of its inputs could not be used (each named on stderr)
BAD_INPUT = 2  # a usage error or bad input: nothing was done (one `error: ...` line)
INTERRUPTED = 75  # a training run stopped by SIGTERM or SIGUSR1 after saving a checkpoint: resume=auto continues it
# (75 is sysexits' EX_TEMPFAIL, "try again later", which batch scripts requeue on)
EXIT_STATUS_HELP = (
    "exit status: 0 when everything asked for was done, 1 when some inputs failed (each named on stderr), "
    "2 for a usage error or bad input (one line: error: ...), 75 when training was stopped by SIGTERM or SIGUSR1 "
    "after saving a checkpoint (resume=auto continues it)"
)


class UserError(Exception):
    """Bad input or a request that cannot be met, named by the code that found it; the message is for the user."""


class UsageError(UserError, ValueError):
    """A command line or call that asks for something the command cannot do (a flag without its value, a missing
    input)."""


class InputError(UserError, ValueError):
    """A file or folder given to a command that cannot be used as what it was given for (a checkpoint that is none,
    a model's part that is missing)."""


class SettingsError(UserError, ValueError):
    """Settings that do not fit their schema: an unknown key, a wrong type, an unknown choice."""


class Interrupted(Exception):
    """Not the user's error: the command was asked to stop (a signal) and saved its work first; the message says
    where and how to continue. Commands exit with INTERRUPTED for it."""


def report_interrupted(stop: Interrupted) -> int:
    """Print how an interrupted command continues; returns INTERRUPTED."""
    print(stop, file=sys.stderr)
    return INTERRUPTED


def report(error: UserError) -> int:
    """Print `error` as the one line a command shows for it; returns the exit status for bad input."""
    print(f"error: {error}", file=sys.stderr)
    return BAD_INPUT


def exit_status(body: Callable[[], object]) -> int:
    """A command's exit status: what `body` returns when that is a status (an int; anything else: OK), BAD_INPUT
    after one line for a UserError, or INTERRUPTED after saying how to continue."""
    try:
        status = body()
    except UserError as error:
        return report(error)
    except Interrupted as stop:
        return report_interrupted(stop)
    return status if isinstance(status, int) and not isinstance(status, bool) else OK
