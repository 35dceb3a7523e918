"""Guards of a training run: non-finite steps are counted on the device and too many in a row stop the run; a
gradient norm far above its running average is flagged."""

from __future__ import annotations

import logging
import math

import torch

log = logging.getLogger(__name__)


class TooManyNonFiniteSteps(RuntimeError):
    """Several steps in a row had a non-finite loss or gradient: the run stops instead of spinning on bad data.
    `first_bad_step` is the first step of that run of skipped steps."""

    def __init__(self, message: str, first_bad_step: int = 0):
        super().__init__(message)
        self.first_bad_step = first_bad_step


class NonFiniteGuard:
    """Counts skipped steps, the longest run of consecutive ones and the step that run began at; `check` raises past
    `max_in_a_row`. Everything stays on the device: only `check` and `in_bad_run` read it."""

    def __init__(self, max_in_a_row: int, device: torch.device):
        if max_in_a_row < 1:
            raise ValueError(f"max_in_a_row must be >= 1, got {max_in_a_row}")
        self.max_in_a_row = max_in_a_row
        self.skipped = torch.zeros((), dtype=torch.int64, device=device)
        self.current_run = torch.zeros_like(self.skipped)
        self.longest_run = torch.zeros_like(self.skipped)
        self.current_start = torch.zeros_like(self.skipped)  # the step the current run of skipped steps began at
        self.longest_start = torch.zeros_like(self.skipped)

    def update(self, bad: torch.Tensor, step: int = 0) -> None:
        """Record step `step`; `bad` is a bool scalar tensor (True: the step was skipped)."""
        bad = bad.to(torch.int64)
        self.skipped += bad
        self.current_run.mul_(bad).add_(bad)
        self.current_start.copy_(torch.where(self.current_run == 1, step, self.current_start))
        self.longest_start.copy_(
            torch.where(self.current_run > self.longest_run, self.current_start, self.longest_start)
        )
        torch.maximum(self.longest_run, self.current_run, out=self.longest_run)

    def check(self, step: int) -> None:
        longest = int(self.longest_run)
        if longest >= self.max_in_a_row:
            raise TooManyNonFiniteSteps(
                f"{longest} steps in a row had a non-finite loss or gradient (limit train.max_nonfinite_in_a_row="
                f"{self.max_in_a_row}), the last at step {step}; the weights are those of the last finite step",
                first_bad_step=int(self.longest_start),
            )

    def in_bad_run(self) -> bool:
        """Whether the last recorded step was skipped (reads the device)."""
        return bool(self.current_run)

    def state_dict(self) -> dict:
        return {
            "skipped": int(self.skipped),
            "current_run": int(self.current_run),
            "longest_run": int(self.longest_run),
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("skipped", "current_run", "longest_run"):
            getattr(self, key).fill_(int(state[key]))


class GradNormWatch:
    """Flags a logged gradient norm far above the running average of earlier ones (a run starting to diverge)."""

    def __init__(self, factor: float = 10.0, warmup_logs: int = 3, smoothing: float = 0.9):
        self.factor = factor
        self.warmup_logs = warmup_logs
        self.smoothing = smoothing
        self.average: float | None = None
        self.seen = 0

    def is_spike(self, grad_norm: float, step: int) -> bool:
        if not math.isfinite(grad_norm):
            return False  # a skipped step, counted by NonFiniteGuard
        spike = self.seen >= self.warmup_logs and self.average is not None and grad_norm > self.factor * self.average
        if spike:
            log.warning(
                "gradient norm %.3g at step %d is over %gx its running average %.3g: the run may be diverging",
                grad_norm,
                step,
                self.factor,
                self.average,
            )
        else:
            self.average = (
                grad_norm if self.average is None else self.smoothing * self.average + (1 - self.smoothing) * grad_norm
            )
        self.seen += 1
        return spike

    def state_dict(self) -> dict:
        return {"average": self.average, "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.average, self.seen = state["average"], int(state["seen"])
