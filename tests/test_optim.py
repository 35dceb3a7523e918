"""Optimiser groups (what decays, what trains) and the warmup-cosine schedule's exact values and resume."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from simvlg_video.train.optim import build_optimizer, parameter_groups, warmup_cosine


class GatedBlock(nn.Module):
    """A frozen base layer plus a trainable norm, projection and zero-initialised scalar gate."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.norm = nn.LayerNorm(4)
        self.proj = nn.Linear(4, 3)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate * self.proj(self.norm(self.frozen(x)))


def group_names(groups: list[dict]) -> dict[float, set[str]]:
    return {group["weight_decay"]: set(group["param_names"]) for group in groups}


def test_decay_split_and_frozen_params_left_out() -> None:
    groups = parameter_groups(GatedBlock(), weight_decay=0.05)
    assert group_names(groups) == {0.05: {"proj.weight"}, 0.0: {"norm.weight", "norm.bias", "proj.bias", "gate"}}
    model = GatedBlock()
    for group in parameter_groups(model, weight_decay=0.05):
        named = dict(model.named_parameters())
        assert all(p is named[n] for n, p in zip(group["param_names"], group["params"], strict=True))


@pytest.mark.parametrize("placement", ["merged_tokens", "reference"])
def test_no_gate_norm_bias_or_code_table_is_decayed(tiny_model_dir, placement: str) -> None:
    """Read back from the optimiser a captioner's groups: only weight matrices decay, and no adapter's gate."""
    from simvlg_video.adapters.placements import MergedTokens, Reference
    from simvlg_video.formats.model_dir import load_model_dir
    from simvlg_video.model.freeze import apply_freeze_policy

    model, _ = load_model_dir(tiny_model_dir)
    (
        MergedTokens(num_heads=4, time_encoding="learned_index")
        if placement == "merged_tokens"
        else Reference(qk_dim=32, num_heads=4, time_encoding="learned_index")
    ).apply(model)
    apply_freeze_policy(model, ["adapters", "ln_vision", "VL_proj", "connector", "opt_proj"])
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    decayed = {name for group in optimizer.param_groups if group["weight_decay"] > 0 for name in group["param_names"]}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert decayed and decayed < trainable
    exempt = ("bias", "LayerNorm.weight", "ln_vision.weight", "alpha", "time.table", "time_pool.out.weight")
    assert not [name for name in decayed if name.endswith(exempt)]
    gates = {"merged_tokens": "time_pool.out.weight", "reference": "vit.blocks.0.temporal_merge.alpha"}
    assert gates[placement] in trainable - decayed
    assert {name for name in decayed if "time.table" in name} == set()
    assert any(name.endswith("time.table") for name in trainable)


def test_optimizer_updates_only_trainable_and_keeps_names() -> None:
    torch.manual_seed(0)
    model = GatedBlock()
    with torch.no_grad():
        model.gate.fill_(0.5)
    frozen_before = model.frozen.weight.clone()
    optimizer = build_optimizer(model, lr=1e-2, weight_decay=0.05)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]
    assert all(g["lr"] == 1e-2 and g["fused"] for g in optimizer.param_groups)  # CPU has the fused kernel too
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    assert torch.equal(model.frozen.weight, frozen_before)
    saved = optimizer.state_dict()["param_groups"]
    assert saved[0]["param_names"] == ["proj.weight"]


def test_no_trainable_parameters_is_an_error() -> None:
    with pytest.raises(ValueError, match="requires_grad"):
        parameter_groups(nn.Linear(2, 2).requires_grad_(False), weight_decay=0.05)


def reference_schedule(
    base_lr: float = 1e-5, lr_start: float = 1e-8, min_lr: float = 1e-6, warmup: int = 1000, total: int = 50_000
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """The reference video recipe's schedule (the number of steps scaled down where a test steps through it)."""
    optimizer = build_optimizer(nn.Linear(3, 3), lr=base_lr)
    return optimizer, warmup_cosine(
        optimizer, warmup_steps=warmup, total_steps=total, warmup_start_lr=lr_start, min_lr=min_lr
    )


def lrs_by_step(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int
) -> list[float]:
    """The lr the optimiser holds before each of `steps` optimiser steps, stepping as the training loop does."""
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_schedule_values_as_the_training_loop_sees_them() -> None:
    lrs = lrs_by_step(*reference_schedule(warmup=10, total=110), steps=121)
    expected = {0: 1e-8, 5: 1e-8 + (1e-5 - 1e-8) / 2, 10: 1e-5, 60: (1e-5 + 1e-6) / 2, 110: 1e-6, 120: 1e-6}
    assert {step: lrs[step] for step in expected} == pytest.approx(expected, rel=1e-12, abs=0)
    assert max(lrs) == lrs[10]
    assert all(a < b for a, b in itertools.pairwise(lrs[:11]))
    assert all(a > b for a, b in itertools.pairwise(lrs[10:111]))


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 1e-8),
        (1000, 1e-5),
        (1000 + 49_000 // 2, (1e-5 + 1e-6) / 2),
        (50_000, 1e-6),
        (1000 + 49_000 // 4, 1e-6 + 9e-6 * 0.5 * (1 + math.cos(math.pi / 4))),
    ],
)
def test_reference_recipe_values(step: int, expected: float) -> None:
    _, scheduler = reference_schedule()
    assert scheduler.lr_lambdas[0](step) * 1e-5 == pytest.approx(expected, rel=1e-12, abs=0)


def test_zero_warmup_starts_at_base_lr() -> None:
    optimizer = build_optimizer(nn.Linear(2, 2), lr=1e-3)
    warmup_cosine(optimizer, warmup_steps=0, total_steps=10, warmup_start_lr=0.0, min_lr=0.0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3, rel=1e-12)


def test_resume_continues_the_same_schedule() -> None:
    optimizer, scheduler = reference_schedule(warmup=10, total=110)
    lrs_by_step(optimizer, scheduler, steps=7)
    optimizer_state, scheduler_state = optimizer.state_dict(), scheduler.state_dict()
    expected = lrs_by_step(optimizer, scheduler, steps=10)

    # Built with other settings: the checkpoint's schedule (settings and position) wins, as exact resume needs.
    resumed_optimizer, resumed_scheduler = reference_schedule(
        base_lr=3e-4, lr_start=1e-7, min_lr=0.0, warmup=3, total=500
    )
    resumed_optimizer.load_state_dict(optimizer_state)
    resumed_scheduler.load_state_dict(scheduler_state)
    assert resumed_scheduler.last_epoch == 7
    assert lrs_by_step(resumed_optimizer, resumed_scheduler, steps=10) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"warmup_steps": 10, "total_steps": 5}, "total_steps"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"min_lr": 1.0}, "min_lr"),
        ({"warmup_start_lr": -1e-6}, "warmup_start_lr"),
    ],
)
def test_bad_schedule_settings(kwargs: dict, message: str) -> None:
    settings = {"warmup_steps": 1, "total_steps": 10, "warmup_start_lr": 1e-6, "min_lr": 1e-5} | kwargs
    optimizer = build_optimizer(nn.Linear(2, 2), lr=1e-3)
    with pytest.raises(ValueError, match=message):
        warmup_cosine(optimizer, **settings)
