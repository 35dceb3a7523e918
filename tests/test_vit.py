"""ViT presets and the token path with a no-grad prefix."""

from __future__ import annotations

import pytest
import torch
from timm.models.eva import EvaAttention
from torch import nn

from simvlg_video.model.vit import build_vit, vit_tokens


def tiny_vit(**overrides) -> nn.Module:
    torch.manual_seed(0)
    return build_vit("tiny", **overrides).eval()


def test_tiny_preset_gives_65_raw_tokens_equal_to_timm_forward():
    vit = tiny_vit()
    images = torch.randn(2, 3, 64, 64)
    tokens = vit_tokens(vit, images)
    assert tokens.shape == (2, 65, 96)
    assert vit.num_prefix_tokens == 1 and vit.patch_embed.grid_size == (8, 8) and len(vit.blocks) == 4
    torch.testing.assert_close(tokens, vit.forward_features(images), atol=0, rtol=0)
    torch.testing.assert_close(tokens, vit(images), atol=0, rtol=0)  # no pooling, norm or head


def test_no_final_norm_and_eva_layernorm_eps():
    vit = tiny_vit()
    for name in ("norm", "fc_norm", "head"):
        assert isinstance(getattr(vit, name), nn.Identity), name
    norms = [m for m in vit.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * len(vit.blocks) and all(m.eps == 1e-6 for m in norms)


def test_overrides_change_the_preset():
    vit = tiny_vit(img_size=32, embed_dim=64, depth=3)
    assert vit_tokens(vit, torch.randn(1, 3, 32, 32)).shape == (1, 17, 64)
    assert len(vit.blocks) == 3


def test_unknown_preset_and_overrides_that_add_a_head_are_refused():
    with pytest.raises(ValueError, match="unknown ViT preset 'eva_vit_l'; presets: eva_vit_g, tiny"):
        build_vit("eva_vit_l")
    with pytest.raises(ValueError, match="`head`"):
        build_vit("tiny", num_classes=10)


def test_eva_vit_g_structure_on_the_meta_device():
    with torch.device("meta"):
        vit = build_vit("eva_vit_g")
        tokens = vit_tokens(vit, torch.empty(2, 3, 224, 224))
    assert tokens.shape == (2, 257, 1408)
    assert len(vit.blocks) == 39 and vit.patch_embed.grid_size == (16, 16)
    block = vit.blocks[0]
    assert isinstance(block.attn, EvaAttention) and block.attn.num_heads == 16
    assert block.mlp.fc1.out_features == 6144 and isinstance(block.mlp.act, nn.GELU)
    assert block.attn.qkv.bias is None and block.attn.q_bias.shape == block.attn.v_bias.shape == (1408,)
    assert block.gamma_1 is None and block.gamma_2 is None  # no layer scale
    assert all(m.eps == 1e-6 for m in vit.modules() if isinstance(m, nn.LayerNorm))

    width, hidden = 1408, 6144
    per_block = (
        2 * width  # norm1
        + width * 3 * width
        + 2 * width  # qkv weight, q_bias, v_bias
        + width * width
        + width  # proj
        + 2 * width  # norm2
        + width * hidden
        + hidden
        + hidden * width
        + width  # fc1, fc2
    )
    stem = 3 * 14 * 14 * width + width + width + 257 * width  # patch embed, cls token, position embedding
    assert sum(p.numel() for p in vit.parameters()) == stem + 39 * per_block == 985_894_528


def record_grad_mode(vit: nn.Module) -> list[bool]:
    """Per block, whether autograd was on while it ran (appended in run order)."""
    seen: list[bool] = []
    for block in vit.blocks:
        block.register_forward_hook(lambda module, args, out: seen.append(torch.is_grad_enabled()))
    return seen


def freeze_below(vit: nn.Module, first_trainable: int) -> None:
    for name, p in vit.named_parameters():
        parts = name.split(".")
        p.requires_grad_(parts[0] == "blocks" and int(parts[1]) >= first_trainable)


@pytest.mark.parametrize("grad_from_block", [0, 2, 4])
def test_grad_from_block_keeps_values_and_skips_autograd_below(grad_from_block):
    vit = tiny_vit()
    freeze_below(vit, grad_from_block)
    images = torch.randn(2, 3, 64, 64)
    expected = vit_tokens(vit, images)
    seen = record_grad_mode(vit)
    tokens = vit_tokens(vit, images, grad_from_block=grad_from_block)
    torch.testing.assert_close(tokens, expected, atol=0, rtol=0)
    assert seen == [i >= grad_from_block for i in range(4)]
    assert tokens.requires_grad == (grad_from_block < 4)
    if tokens.requires_grad:
        tokens.sum().backward()
        assert all((p.grad is not None) == p.requires_grad for p in vit.parameters())


def test_grad_from_block_refuses_to_drop_gradients_of_trainable_parameters_below_it():
    vit = tiny_vit()
    freeze_below(vit, 2)
    vit.blocks[1].norm1.weight.requires_grad_(True)
    with pytest.raises(ValueError, match=r"grad_from_block=2.*blocks\.1\.norm1\.weight"):
        vit_tokens(vit, torch.randn(1, 3, 64, 64), grad_from_block=2)
    vit.pos_embed.requires_grad_(True)
    with pytest.raises(ValueError, match="pos_embed"):
        vit_tokens(vit, torch.randn(1, 3, 64, 64), grad_from_block=1)


def test_bad_arguments_are_refused():
    vit = tiny_vit()
    with pytest.raises(ValueError, match=r"None or an int in 0..4"):
        vit_tokens(vit, torch.randn(1, 3, 64, 64), grad_from_block=5)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        vit_tokens(vit, torch.randn(1, 2, 3, 64, 64))
    vit.set_grad_checkpointing(True)
    with pytest.raises(ValueError, match="checkpoint"):
        vit_tokens(vit, torch.randn(1, 3, 64, 64))
