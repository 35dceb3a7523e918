"""What a training run steps with besides the model and its batches: optimiser, schedule, guards and grad scaler,
created together and saved and restored together."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from simvlg_video.model.parallel import unwrap
from simvlg_video.train.config import TrainConfig
from simvlg_video.train.guards import GradNormWatch, NonFiniteGuard
from simvlg_video.train.optim import build_optimizer, warmup_cosine


@dataclass
class Session:
    """What a training run steps with besides the model and its batches; all of it is restored on resume."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train: TrainConfig
    precision: str
    guard: NonFiniteGuard
    grad_watch: GradNormWatch
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def create(cls, model: nn.Module, train: TrainConfig, precision: str = "fp32") -> Session:
        """AdamW over the model's trainable parameters, warmup then cosine, a grad scaler for fp16, fresh guards."""
        optimizer = build_optimizer(model, lr=train.lr, weight_decay=train.weight_decay)
        scheduler = warmup_cosine(
            optimizer,
            train.warmup_steps,
            train.steps,
            train.warmup_start_lr,
            train.lr if train.min_lr is None else train.min_lr,
        )
        device = next(unwrap(model).parameters()).device
        return cls(
            optimizer,
            scheduler,
            train,
            precision,
            NonFiniteGuard(train.max_nonfinite_in_a_row, device),
            GradNormWatch(train.grad_norm_spike),
            torch.amp.GradScaler(device.type) if precision == "fp16" else None,
        )

    def state_dict(self) -> dict:
        """Schedule, guards and grad scaler (the optimiser's state is saved with the model's tensors)."""
        return {
            "scheduler": self.scheduler.state_dict(),
            "guard": self.guard.state_dict(),
            "grad_watch": self.grad_watch.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a checkpoint's session. The guard's runs of skipped steps start again at zero (its count of
        skipped steps goes on): a run the guard stopped is resumed to try again, changed or not."""
        self.scheduler.load_state_dict(state["scheduler"])
        self.guard.load_state_dict({**state["guard"], "current_run": 0, "longest_run": 0})
        self.grad_watch.load_state_dict(state["grad_watch"])
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])

    def set_learning_rate(self, lr: float, min_lr: float | None) -> None:
        """Follow the schedule to another peak (`lr`) and end (`min_lr`; None: `lr`) from the current step on: a
        resume that changes train.lr or train.min_lr, whose restored optimiser and schedule hold the old ones."""
        step = self.scheduler.last_epoch
        for group, factor in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas):
            factor.base_lr, factor.min_lr = lr, lr if min_lr is None else min_lr
            group["initial_lr"] = lr
            group["lr"] = factor.lr_at(step)
        self.scheduler.base_lrs = [lr] * len(self.optimizer.param_groups)
