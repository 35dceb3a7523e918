"""Fine-tuning moves only the trainable modules: the frozen ViT and LM stay bit-identical and in eval mode."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from simvlg_video.adapters.placements import Reference
from simvlg_video.formats.model_dir import load_model_dir
from simvlg_video.model.freeze import apply_freeze_policy
from simvlg_video.train.config import TrainConfig
from simvlg_video.train.loop import fit
from simvlg_video.train.session import Session

TRAINABLE = ["adapters", "ln_vision", "VL_proj", "connector", "opt_proj"]


def session(model, steps: int, lr: float, warmup_steps: int, precision: str = "fp32") -> Session:
    settings = TrainConfig(
        steps=steps,
        lr=lr,
        weight_decay=0.05,
        warmup_steps=warmup_steps,
        warmup_start_lr=1e-3,
        min_lr=1e-3,
        max_nonfinite_in_a_row=10**9,
    )
    return Session.create(model, settings, precision)


def test_frozen_tensors_bit_identical_after_training(tiny_model_dir):
    torch.manual_seed(0)
    model, _ = load_model_dir(tiny_model_dir)
    Reference(blocks="last_k", last_k=2, qk_dim=32, num_heads=4).apply(model)
    apply_freeze_policy(model, TRAINABLE)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    clips = torch.randn(2, 3, 3, 64, 64)
    batches = itertools.repeat((clips, ["a red circle moves to the left", "a blue square grows"]))

    result = fit(model, batches, session(model, steps=4, lr=1e-2, warmup_steps=1), steps=4, show_progress=False)

    assert result.steps == 4 and len(result.losses) == 4
    assert not model.lm.training, "the frozen LM must stay in eval mode while the rest trains"
    trainable_names = {name for name, p in model.named_parameters() if p.requires_grad}
    frozen_names = set(before) - trainable_names
    assert any(name.startswith("vit.") for name in frozen_names)
    assert any(name.startswith("lm.") for name in frozen_names)
    for name in frozen_names:
        assert torch.equal(before[name], model.state_dict()[name]), f"frozen tensor {name} changed"
    moved = [name for name in trainable_names if not torch.equal(before[name], model.state_dict()[name])]
    assert any("temporal_merge.alpha" in name for name in moved)
    assert any(name.startswith("connector.") for name in moved)


def test_a_non_finite_loss_skips_its_step_without_touching_weights_or_optimiser_state(tiny_model_dir):
    torch.manual_seed(0)
    model, _ = load_model_dir(tiny_model_dir)
    Reference(blocks="last_k", last_k=1, qk_dim=32, num_heads=4).apply(model)
    apply_freeze_policy(model, TRAINABLE)
    captions = ["a red circle moves to the left", "a blue square grows"]
    good = torch.randn(2, 3, 3, 64, 64)
    poisoned = good.clone()
    poisoned[0, 1, 0, 5, 5] = float("nan")  # one bad pixel: NaN activations, NaN loss, NaN gradients
    steps = session(model, steps=4, lr=1e-2, warmup_steps=1)
    optimizer = steps.optimizer
    assert optimizer.defaults["fused"], "the device-side skip needs the fused AdamW"
    fit(model, iter([(good, captions)]), steps, steps=1, show_progress=False)
    weights = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    state = {
        name: {k: v.clone() for k, v in optimizer.state[p].items()}
        for name, p in model.named_parameters()
        if p.requires_grad
    }

    result = fit(model, iter([(poisoned, captions)]), steps, steps=2, start_step=1, show_progress=False)

    assert result.skipped_nonfinite == 1 and result.steps == 0 and result.losses == []
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p.detach(), weights[name]), name
            for key, value in optimizer.state[p].items():
                assert torch.equal(value, state[name][key]), f"{name}.{key}"
    result = fit(model, iter([(good, captions)]), steps, steps=3, start_step=2, show_progress=False)
    assert result.steps == 1 and all(torch.isfinite(p).all() for p in model.parameters())


def test_fp16_trains_through_a_grad_scaler_and_refuses_to_run_without_one(tiny_model_dir):
    torch.manual_seed(0)
    model, _ = load_model_dir(tiny_model_dir)
    apply_freeze_policy(model, ["ln_vision", "VL_proj", "connector", "opt_proj"])
    batches = itertools.repeat((torch.randn(2, 2, 3, 64, 64), ["a red circle moves to the left", "a blue square"]))
    fp16 = session(model, steps=3, lr=1e-3, warmup_steps=0, precision="fp16")
    fp16.scaler = None
    with pytest.raises(ValueError, match="fp16 needs a GradScaler"):
        fit(model, batches, fp16, steps=3, show_progress=False)
    before = model.opt_proj.weight.detach().clone()
    scaler = fp16.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)

    result = fit(model, batches, fp16, steps=3, show_progress=False)

    assert result.steps == 3 and all(math.isfinite(loss) for loss in result.losses)
    assert not torch.equal(model.opt_proj.weight, before)
    assert model.opt_proj.weight.dtype == torch.float32, "the trained weights stay fp32 (autocast only)"
    assert scaler.get_scale() >= 2.0**10, "no overflow on this batch: the scale must not have been cut"
