"""AdamW over the trainable parameters, and the reference learning-rate schedule (linear warmup, then cosine).

Weight decay follows the reference recipe: none on biases and norm weights (every tensor with fewer than two
dimensions), `weight_decay` on the matrices, except those an adapter declares its own (its zero-initialised gate,
its frame-code table): decaying a gate towards zero would fight the very signal that opens it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from simvlg_video.model.adapter_protocol import no_decay_parameter_names
from simvlg_video.model.parallel import unwrap


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into a decayed group (matrices) and an undecayed one (biases, norms, and what the
    adapters exempt: gates, code tables).

    Each group carries `param_names` beside `params` (the key torch's optimisers use for names), so an optimiser's
    state dict says which tensor each slot belongs to. Empty groups are left out.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    model = unwrap(model)
    exempt = no_decay_parameter_names(model)
    decay: dict[str, nn.Parameter] = {}
    no_decay: dict[str, nn.Parameter] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 and name not in exempt else no_decay)[name] = param
    if not decay and not no_decay:
        raise ValueError(f"{type(model).__name__} has no parameter with requires_grad=True; nothing to optimise")
    groups = []
    for params, group_decay in ((decay, weight_decay), (no_decay, 0.0)):
        if params:
            groups.append({"params": list(params.values()), "param_names": list(params), "weight_decay": group_decay})
    return groups


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over `parameter_groups(model, weight_decay)`.

    The fused kernel (one launch per step on a GPU) is used wherever torch has it (CUDA and CPU float tensors): it
    can also skip a step on the device when the loss was not finite (see `train.loop.fit`).
    """
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    groups = parameter_groups(model, weight_decay)
    fused = all(p.device.type in ("cuda", "cpu") and p.is_floating_point() for group in groups for p in group["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)


class WarmupCosineFactor:
    """The factor LambdaLR multiplies one group's base lr by at a given step.

    A callable object rather than a closure so that LambdaLR's state_dict records the schedule's settings.
    """

    def __init__(self, base_lr: float, warmup_steps: int, total_steps: int, warmup_start_lr: float, min_lr: float):
        self.base_lr = base_lr
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.warmup_start_lr = warmup_start_lr
        self.min_lr = min_lr

    def lr_at(self, step: int) -> float:
        """Linear from warmup_start_lr (step 0) to base_lr (step warmup_steps), cosine to min_lr (step total_steps)."""
        if step < self.warmup_steps:
            return self.warmup_start_lr + (self.base_lr - self.warmup_start_lr) * step / self.warmup_steps
        if step >= self.total_steps:
            return self.min_lr
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def __call__(self, step: int) -> float:
        return self.lr_at(step) / self.base_lr


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    warmup_start_lr: float,
    min_lr: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    """The reference schedule: linear warmup from `warmup_start_lr` to each group's lr, then cosine to `min_lr`.

    Step s of the scheduler (s = number of `scheduler.step()` calls so far) gives the lr for optimiser step s; from
    `total_steps` on the lr stays at `min_lr`. The reference video recipe: warmup 1k steps from 1e-8 to 1e-5, cosine
    to 1e-6 at 50k.
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if total_steps < warmup_steps:
        raise ValueError(f"total_steps ({total_steps}) must be >= warmup_steps ({warmup_steps})")
    if warmup_start_lr < 0 or min_lr < 0:
        raise ValueError(f"warmup_start_lr and min_lr must be >= 0, got {warmup_start_lr} and {min_lr}")
    factors = []
    for index, group in enumerate(optimizer.param_groups):
        base_lr = group.get("initial_lr", group["lr"])
        if base_lr <= 0 or min_lr > base_lr:
            raise ValueError(f"param group {index}: lr {base_lr} must be > 0 and >= min_lr {min_lr}")
        factors.append(WarmupCosineFactor(base_lr, warmup_steps, total_steps, warmup_start_lr, min_lr))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factors)
