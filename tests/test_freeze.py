"""The freeze policy on a small captioner-shaped model with a real (tiny) timm ViT and temporal adapters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from simvlg_video.adapters import Reference
from simvlg_video.model.adapter_protocol import adapter_modules, adapter_parameters
from simvlg_video.model.freeze import apply_freeze_policy
from simvlg_video.model.vit import build_vit, clip_length, vit_tokens

REFERENCE_TRAINABLE = ["adapters", "ln_vision", "VL_proj", "connector", "opt_proj"]


class SmallCaptioner(nn.Module):
    """The captioner's attribute layout with small parts; `vit` has drop path so train/eval mode matters."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.vit = build_vit("tiny", img_size=32, embed_dim=64, depth=3, drop_path_rate=0.5)
        Reference(blocks="last_k", last_k=2, qk_dim=32, num_heads=4).patch_vit(self.vit)
        self.ln_vision = nn.LayerNorm(64)
        self.VL_proj = nn.Linear(64, 32)
        self.connector = nn.Sequential(nn.Linear(32, 32), nn.Dropout(0.5), nn.Linear(32, 32))
        self.opt_proj = nn.Linear(32, 48)
        self.lm = nn.Sequential(nn.Linear(48, 48), nn.Dropout(0.5), nn.Linear(48, 10))

    def vision(self, clips: torch.Tensor) -> torch.Tensor:
        with clip_length(self.vit, clips.shape[1]):
            tokens = vit_tokens(self.vit, clips.flatten(0, 1)).unflatten(0, clips.shape[:2])
        return tokens.mean(dim=1)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.lm(self.opt_proj(self.connector(self.VL_proj(self.ln_vision(self.vision(clips))))))


def numel(params) -> int:
    return sum(p.numel() for p in params)


def test_reference_policy_sets_requires_grad_and_counts():
    model = SmallCaptioner()
    counts = apply_freeze_policy(model, REFERENCE_TRAINABLE)
    expected = {id(p) for _, p in adapter_parameters(model)}
    for name in REFERENCE_TRAINABLE[1:]:
        expected |= {id(p) for p in getattr(model, name).parameters()}
    assert {id(p) for p in model.parameters() if p.requires_grad} == expected
    assert counts["trainable"] == numel(p for p in model.parameters() if id(p) in expected)
    assert counts["trainable"] + counts["frozen"] == numel(model.parameters())
    assert counts["frozen"] == numel(model.lm.parameters()) + numel(
        p for n, p in model.vit.named_parameters() if "temporal_merge" not in n
    )


def test_frozen_parts_stay_in_eval_mode_through_train():
    model = SmallCaptioner()
    apply_freeze_policy(model, REFERENCE_TRAINABLE)
    holds_adapters = {"", "vit", "vit.blocks", "vit.blocks.1", "vit.blocks.2"}  # containers follow train()
    for _ in range(2):
        model.eval()
        model.train()
        for name, module in model.named_modules():
            trains = name.split(".")[0] in REFERENCE_TRAINABLE or ".temporal_merge" in name
            assert module.training == (trains or name in holds_adapters), name


def test_frozen_vit_is_deterministic_in_train_mode_while_trainable_dropout_is_not():
    """Drop path (p=0.5) inside the frozen ViT stays off; dropout in the trainable connector stays on."""
    model = SmallCaptioner()
    apply_freeze_policy(model, REFERENCE_TRAINABLE)
    model.train()
    clips = torch.randn(2, 2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.vision(clips), model.vision(clips), atol=0, rtol=0)
        assert not torch.equal(model(clips), model(clips))


def test_only_trainable_parameters_receive_gradients():
    model = SmallCaptioner()
    apply_freeze_policy(model, REFERENCE_TRAINABLE)
    with torch.no_grad():
        for name, p in adapter_parameters(model):
            if name.endswith("alpha"):
                p.fill_(0.5)
    model.train()
    model(torch.randn(2, 2, 3, 32, 32)).logsumexp(-1).mean().backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
        if p.requires_grad:
            assert p.grad.abs().sum() > 0, name


def test_reapplying_releases_previous_pins():
    model = SmallCaptioner()
    apply_freeze_policy(model, REFERENCE_TRAINABLE)
    apply_freeze_policy(model, ["lm"])
    model.train()
    assert model.lm[1].training  # was pinned to eval by the first policy
    assert not model.connector[1].training and not model.ln_vision.training
    assert all(not m.training for _, m in adapter_modules(model))
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"lm"}


def test_policy_errors_name_what_is_wrong():
    model = SmallCaptioner()
    with pytest.raises(ValueError, match=r"unknown trainable part\(s\) \['Qformer'\].*'vit', 'ln_vision'"):
        apply_freeze_policy(model, ["Qformer", "ln_vision"])
    with pytest.raises(TypeError, match="list of names"):
        apply_freeze_policy(model, "connector")
    plain = nn.Module()
    plain.vit = build_vit("tiny", img_size=32, embed_dim=64, depth=1)
    with pytest.raises(ValueError, match="no adapter modules"):
        apply_freeze_policy(plain, ["adapters"])
