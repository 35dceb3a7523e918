"""The reference temporal adapter and its patching into a timm ViT instance."""

from __future__ import annotations

import pytest
import torch
from timm.models.eva import EvaBlock
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from simvlg_video.adapters import Reference, TemporalAttentionMerge, remove_temporal_adapters
from simvlg_video.adapters.patch import TemporalEvaBlock
from simvlg_video.model.adapter_protocol import (
    AttentionMap,
    adapter_modules,
    adapter_parameters,
    no_decay_parameter_names,
)
from simvlg_video.model.vit import build_vit, clip_length, vit_tokens

ADAPTER = dict(qk_dim=32, num_heads=4)
MODULE = dict(ADAPTER, time_encoding="none", max_frames=64)
PLACEMENTS = [{"blocks": "all"}, {"blocks": "last_k", "last_k": 2}, {"blocks": [0]}]
ADAPTER_TENSORS = ("query.weight", "query.bias", "key.weight", "key.bias", "alpha")


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return build_vit("tiny", img_size=32, embed_dim=64, depth=3).eval()


def add_temporal_adapters(vit: nn.Module, **settings) -> list[int]:
    """The reference placement's ViT patch with the given settings."""
    return Reference(**settings).patch_vit(vit)


def patched_tokens(vit: nn.Module, clips: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, H, W) -> (B, T, N, C) through a (patched) ViT."""
    with clip_length(vit, clips.shape[1]):
        return vit_tokens(vit, clips.flatten(0, 1)).unflatten(0, clips.shape[:2])


def open_gates(vit: nn.Module, value: float = 0.7) -> None:
    with torch.no_grad():
        for name, param in adapter_parameters(vit):
            if name.endswith("alpha"):
                param.fill_(value)


def naive_merge(module: TemporalAttentionMerge, x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """REFERENCE.md section 2 written out with einsum, independent of the module's reshapes."""
    heads, qk_dim = module.num_heads, module.qk_dim
    clip = x.unflatten(0, (-1, num_frames))  # b t n c
    q = module.query(clip).unflatten(-1, (heads, -1))
    k = module.key(clip).unflatten(-1, (heads, -1))
    v = clip.unflatten(-1, (heads, -1))
    weights = (torch.einsum("btnhd,bsnhd->bnhts", q, k) * qk_dim**-0.5).softmax(dim=-1)
    mixed = torch.einsum("bnhts,bsnhd->btnhd", weights, v).flatten(-2)
    return (clip + module.alpha * mixed).flatten(0, 1)


# --- the module on its own ---


def test_parameter_count_at_eva_g_width_matches_the_reference():
    defaults = Reference()  # the placement's defaults are the reference module's
    module = TemporalAttentionMerge(
        1408, defaults.qk_dim, defaults.num_heads, defaults.time_encoding, defaults.max_frames
    )
    assert sum(p.numel() for p in module.parameters()) == 721_409
    assert sorted(module.state_dict()) == sorted(ADAPTER_TENSORS)
    assert module.alpha.shape == () and module.alpha.item() == 0.0


def test_module_computes_the_reference_formula():
    torch.manual_seed(1)
    module = TemporalAttentionMerge(64, **MODULE)
    with torch.no_grad():
        module.alpha.fill_(0.9)
    x = torch.randn(2 * 3, 5, 64)
    torch.testing.assert_close(module(x, 3), naive_merge(module, x, 3), atol=1e-5, rtol=1e-5)


def test_module_rejects_a_batch_not_made_of_whole_clips():
    with pytest.raises(ValueError, match="7 frames cannot be split into clips of 2"):
        TemporalAttentionMerge(64, **MODULE)(torch.randn(7, 5, 64), 2)


def test_module_rejects_heads_that_do_not_divide_the_widths():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        TemporalAttentionMerge(64, qk_dim=30, num_heads=4, time_encoding="none", max_frames=64)


# --- patched ViT: identity at initialisation and what an open gate does ---


@pytest.mark.parametrize("num_frames", [1, 2, 4])
@pytest.mark.parametrize("placement", PLACEMENTS)
@torch.no_grad()
def test_one_repeated_frame_gives_the_image_model_output(num_frames, placement):
    vit = tiny_vit()
    frames = torch.randn(2, 3, 32, 32)
    expected = vit_tokens(vit, frames)
    add_temporal_adapters(vit, **placement, **ADAPTER)
    actual = patched_tokens(vit, frames[:, None].expand(-1, num_frames, -1, -1, -1))
    assert (actual - expected[:, None]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("placement", PLACEMENTS)
@torch.no_grad()
def test_closed_gates_keep_different_frames_independent(placement):
    vit = tiny_vit()
    clips = torch.randn(2, 4, 3, 32, 32)
    expected = vit_tokens(vit, clips.flatten(0, 1)).unflatten(0, (2, 4))
    add_temporal_adapters(vit, **placement, **ADAPTER)
    assert (patched_tokens(vit, clips) - expected).abs().max().item() <= 1e-5


@torch.no_grad()
def test_open_gates_mix_the_frames_of_a_clip_and_only_of_that_clip():
    vit = tiny_vit()
    clips = torch.randn(2, 4, 3, 32, 32)
    image_model = vit_tokens(vit, clips.flatten(0, 1)).unflatten(0, (2, 4))
    add_temporal_adapters(vit, blocks="last_k", last_k=2, **ADAPTER)
    open_gates(vit)
    before = patched_tokens(vit, clips)
    assert (before - image_model).abs().max().item() > 1e-2

    changed = clips.clone()
    changed[0, 3] = torch.randn(3, 32, 32)
    after = patched_tokens(vit, changed)
    assert (after[0, :3] - before[0, :3]).abs().max().item() > 1e-3  # frames 0-2 of clip 0 see frame 3
    torch.testing.assert_close(after[1], before[1], atol=1e-6, rtol=0)  # clip 1 does not


@torch.no_grad()
def test_frame_order_is_invisible_permuting_frames_permutes_outputs():
    """The reference has no temporal position information: it is permutation-equivariant over frames."""
    vit = tiny_vit()
    add_temporal_adapters(vit, **ADAPTER)
    open_gates(vit)
    clips = torch.randn(2, 4, 3, 32, 32)
    order = torch.tensor([2, 0, 3, 1])
    out = patched_tokens(vit, clips)
    torch.testing.assert_close(patched_tokens(vit, clips[:, order]), out[:, order], atol=1e-5, rtol=1e-5)


def test_bf16_autocast_runs_and_stays_close_to_fp32():
    vit = tiny_vit()
    add_temporal_adapters(vit, **ADAPTER)
    open_gates(vit, 0.5)
    clips = torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad():
        reference = patched_tokens(vit, clips)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = patched_tokens(vit, clips)
    assert torch.isfinite(low).all()
    assert (low.float() - reference).abs().max().item() < 0.1 * reference.abs().max().item()


# --- parameter names, state dicts, gradients ---


def test_state_dict_is_the_base_plus_the_adapter_tensors_and_base_weights_still_load():
    vit = tiny_vit()
    base = {k: v.clone() for k, v in vit.state_dict().items()}
    assert add_temporal_adapters(vit, blocks=[0, 2], **ADAPTER) == [0, 2]
    new_keys = {f"blocks.{i}.temporal_merge.{t}" for i in (0, 2) for t in ADAPTER_TENSORS}
    assert set(vit.state_dict()) == set(base) | new_keys

    with torch.no_grad():
        for p in vit.parameters():
            p.zero_()
    result = vit.load_state_dict(base, strict=False)
    assert set(result.missing_keys) == new_keys and not result.unexpected_keys
    assert all(torch.equal(vit.state_dict()[k], v) for k, v in base.items())


def test_adapters_are_found_by_the_protocol_not_by_class():
    vit = tiny_vit()
    add_temporal_adapters(vit, blocks="last_k", last_k=2, **ADAPTER)
    names = [name for name, _ in adapter_parameters(vit)]
    assert sorted(names) == sorted(f"blocks.{i}.temporal_merge.{t}" for i in (1, 2) for t in ADAPTER_TENSORS)
    assert no_decay_parameter_names(vit) == {
        f"blocks.{i}.temporal_merge.{t}" for i in (1, 2) for t in ("alpha", "query.bias", "key.bias")
    }

    class Scaler(nn.Module):
        """Any module that keeps the protocol is an adapter: its parameters train, it names its undecayed ones."""

        def __init__(self):
            super().__init__()
            self.gate = nn.Parameter(torch.zeros(3, 3))
            self.mix = nn.Parameter(torch.ones(3, 3))

        def no_decay_params(self) -> list[str]:
            return ["gate"]

        def set_plain_attention(self, plain: bool) -> None: ...

        def record_attention(self, on: bool) -> None: ...

        def attention_map(self) -> AttentionMap | None:
            return None

    holder = nn.Sequential(nn.Linear(3, 3), Scaler())
    assert [name for name, _ in adapter_modules(holder)] == ["1"]
    assert [name for name, _ in adapter_parameters(holder)] == ["1.gate", "1.mix"]
    assert no_decay_parameter_names(holder) == {"1.gate"}


def test_only_adapter_parameters_receive_gradients_when_only_adapters_train():
    vit = tiny_vit()
    add_temporal_adapters(vit, blocks="last_k", last_k=2, **ADAPTER)
    open_gates(vit)
    adapters = dict(adapter_parameters(vit))
    for name, p in vit.named_parameters():
        p.requires_grad_(name in adapters)
    patched_tokens(vit, torch.randn(2, 2, 3, 32, 32)).square().mean().backward()
    for name, p in vit.named_parameters():
        if name in adapters:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_remove_restores_classes_keys_and_outputs_and_allows_patching_again():
    vit = tiny_vit()
    base_keys = list(vit.state_dict())
    frames = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = vit_tokens(vit, frames)
    add_temporal_adapters(vit, blocks=[1], **ADAPTER)
    open_gates(vit)
    assert type(vit.blocks[1]) is TemporalEvaBlock
    assert remove_temporal_adapters(vit) == [1]
    assert all(type(block) is EvaBlock for block in vit.blocks)
    assert list(vit.state_dict()) == base_keys
    with torch.no_grad():
        torch.testing.assert_close(vit_tokens(vit, frames), expected, atol=0, rtol=0)  # runs without T again
    assert remove_temporal_adapters(vit) == []
    assert add_temporal_adapters(vit, blocks="all", **ADAPTER) == [0, 1, 2]


# --- per-forward state and errors ---


def test_patched_block_without_num_frames_fails_clearly():
    vit = tiny_vit()
    add_temporal_adapters(vit, **ADAPTER)
    with pytest.raises(RuntimeError, match="clip_length"):
        vit_tokens(vit, torch.randn(2, 3, 32, 32))


def test_clip_length_nests_restores_and_validates():
    vit = tiny_vit()
    add_temporal_adapters(vit, **ADAPTER)
    frames = torch.randn(4, 3, 32, 32)
    with clip_length(vit, 2):
        with clip_length(vit, 4):
            vit_tokens(vit, frames)
        with pytest.raises(ValueError, match="4 frames cannot be split into clips of 3"), clip_length(vit, 3):
            vit_tokens(vit, frames)
        vit_tokens(vit, frames)  # back to 2 after the inner contexts, even the failed one
    with pytest.raises(RuntimeError, match="clip_length"):
        vit_tokens(vit, frames)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="positive int"), clip_length(vit, bad):
            pass


@torch.no_grad()
def test_clip_length_set_before_patching_reaches_the_adapters():
    vit = tiny_vit()
    clips = torch.randn(1, 2, 3, 32, 32)
    with clip_length(vit, 2):
        add_temporal_adapters(vit, **ADAPTER)
        open_gates(vit)
        early = vit_tokens(vit, clips.flatten(0, 1))
    assert torch.equal(early.unflatten(0, (1, 2)), patched_tokens(vit, clips))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"blocks": [3]}, r"block index 3 is out of range; valid block indices are 0..2"),
        ({"blocks": [-1]}, r"valid block indices are 0..2"),
        ({"blocks": 5}, r"valid block indices are 0..2"),
        ({"blocks": [0, 0]}, "repeat"),
        ({"blocks": []}, "empty"),
        ({"blocks": "first"}, "'all', 'last_k' or block indices"),
        ({"blocks": "last_k"}, r"last_k in 1..3"),
        ({"blocks": "last_k", "last_k": 4}, r"last_k in 1..3"),
        ({"blocks": "all", "last_k": 2}, "only used with blocks='last_k'"),
    ],
)
def test_bad_block_choices_are_refused(kwargs, message):
    vit = tiny_vit()
    with pytest.raises(ValueError, match=message):
        add_temporal_adapters(vit, **kwargs, **ADAPTER)
    assert all(type(block) is EvaBlock for block in vit.blocks)


def test_patching_twice_is_an_error():
    vit = tiny_vit()
    add_temporal_adapters(vit, blocks=[2], **ADAPTER)
    with pytest.raises(RuntimeError, match=r"already has temporal adapters in blocks \[2\]"):
        add_temporal_adapters(vit, blocks=[0], **ADAPTER)


def test_unsupported_block_classes_are_refused():
    vit = tiny_vit()
    vit.blocks[0] = nn.Identity()
    with pytest.raises(TypeError, match=r"blocks.0 is a Identity; supported block classes"):
        add_temporal_adapters(vit, **ADAPTER)


# --- the plain timm ViT block (layer scale ls1 / ls2) ---


@torch.no_grad()
def test_vision_transformer_blocks_patch_with_identity_at_init():
    torch.manual_seed(0)
    vit = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=0, init_values=0.1
    ).eval()
    frame = torch.randn(2, 3, 32, 32)
    expected = vit.forward_features(frame)
    add_temporal_adapters(vit, **ADAPTER)
    clips = frame[:, None].expand(-1, 3, -1, -1, -1).flatten(0, 1)
    with clip_length(vit, 3):
        actual = vit.forward_features(clips).unflatten(0, (2, 3))
        assert (actual - expected[:, None]).abs().max().item() <= 1e-5
        open_gates(vit)
        assert (vit.forward_features(clips).unflatten(0, (2, 3)) - expected[:, None]).abs().max().item() > 1e-2
