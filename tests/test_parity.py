"""Numerical parity with the reference: its EVA block, connector layer and temporal module written out from
the reference's description (plain tensor math on the checkpoint's own tensors, no timm or transformers) against our
timm/HF-based model with the same checkpoint imported. fp32, relative error <= 1e-5."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from reference_layout import CONNECTOR, TEMPORAL_HEADS, VIT, write_reference_files, write_tiny_lm

from simvlg_video.formats.lavis_checkpoint import import_lavis_checkpoint
from simvlg_video.formats.model_dir import load_model_dir
from simvlg_video.model.vit import clip_length, vit_tokens

Tensors = dict[str, torch.Tensor]
TEMPORAL_BLOCKS = [1, 2]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    variance = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(variance + eps) * weight + bias


def gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """(..., heads, Lq, d) x (..., heads, Lk, d) x (..., heads, Lk, e) -> (..., heads, Lq, e)."""
    logits = q @ k.transpose(-2, -1) * scale
    weights = torch.exp(logits - logits.amax(-1, keepdim=True))
    return (weights / weights.sum(-1, keepdim=True)) @ v


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., L, heads*d) -> (..., heads, L, d)."""
    return x.reshape(*x.shape[:-1], heads, -1).transpose(-3, -2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-3, -2).flatten(-2)


# --- the reference EVA ViT (BLIP-2's VisionTransformer) ---


def eva_block(x: torch.Tensor, sd: Tensors, i: int, heads: int) -> torch.Tensor:
    p = f"blocks.{i}."
    width = x.shape[-1]
    h = layer_norm(x, sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-6)
    qkv_bias = torch.cat([sd[p + "attn.q_bias"], torch.zeros(width), sd[p + "attn.v_bias"]])
    q, k, v = (h @ sd[p + "attn.qkv.weight"].T + qkv_bias).split(width, dim=-1)
    head_dim = width // heads
    attended = softmax_attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads), head_dim**-0.5)
    x = x + merge_heads(attended) @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
    return x


def eva_mlp(x: torch.Tensor, sd: Tensors, i: int) -> torch.Tensor:
    p = f"blocks.{i}."
    h = layer_norm(x, sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-6)
    h = gelu(h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
    return x + h @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]


def temporal_merge(x: torch.Tensor, sd: Tensors, i: int, num_frames: int, heads: int) -> torch.Tensor:
    """The reference module: per (clip, token) a sequence over frames; Q, K learned; V = x; no output projection."""
    p = f"visual_encoder.blocks.{i}.temporal_merge."
    frames, tokens, width = x.shape
    sequences = x.reshape(frames // num_frames, num_frames, tokens, width).transpose(1, 2)  # clip, token, T, C
    q = sequences @ sd[p + "query.weight"].T + sd[p + "query.bias"]
    k = sequences @ sd[p + "key.weight"].T + sd[p + "key.bias"]
    scale = q.shape[-1] ** -0.5  # the full query width, as the reference scales
    mixed = merge_heads(
        softmax_attention(split_heads(q, heads), split_heads(k, heads), split_heads(sequences, heads), scale)
    )
    return x + sd[p + "alpha"].reshape(()) * mixed.transpose(1, 2).reshape(frames, tokens, width)


def eva_vit(images: torch.Tensor, sd: Tensors, num_frames: int = 1, temporal: Tensors | None = None) -> torch.Tensor:
    patch = VIT["patch"]
    x = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + sd["pos_embed"]
    for i in range(VIT["depth"]):
        x = eva_block(x, sd, i, VIT["heads"])
        if temporal is not None and i in TEMPORAL_BLOCKS:
            x = temporal_merge(x, temporal, i, num_frames, TEMPORAL_HEADS)
        x = eva_mlp(x, sd, i)
    return x


# --- the reference connector: BERT fed inputs_embeds, r tokens merged by plain mean after each attention block ---


def tome_mean_merge(x: torch.Tensor, metric: torch.Tensor, r: int) -> torch.Tensor:
    """One sample: A = even positions, B = odd; CLS never merged; top-r A tokens join their best B by plain mean;
    output [unmerged A in order] + [B]."""
    r = min(r, (x.shape[0] - 1) // 2)
    unit = metric / metric.norm(dim=-1, keepdim=True)
    a_positions, b_positions = list(range(0, len(x), 2)), list(range(1, len(x), 2))
    scores = unit[a_positions] @ unit[b_positions].T
    scores[0] = -torch.inf
    best_score, best_b = scores.max(dim=-1)
    ranking = sorted(range(len(a_positions)), key=lambda a: -best_score[a].item())  # stable: ties keep order
    merged = set(ranking[:r])
    groups = {b: [x[b_positions[b]]] for b in range(len(b_positions))}
    for a in ranking[:r]:
        groups[best_b[a].item()].append(x[a_positions[a]])
    kept = [x[a_positions[a]] for a in range(len(a_positions)) if a not in merged]
    return torch.stack(kept + [torch.stack(groups[b]).mean(0) for b in range(len(b_positions))])


def bert_tome_layer(x: torch.Tensor, sd: Tensors, i: int, heads: int, r: int) -> torch.Tensor:
    p = f"VLconnector.encoder.layer.{i}."
    q, k, v = (
        x @ sd[f"{p}attention.self.{n}.weight"].T + sd[f"{p}attention.self.{n}.bias"] for n in ("query", "key", "value")
    )
    head_dim = x.shape[-1] // heads
    context = merge_heads(
        softmax_attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads), head_dim**-0.5)
    )
    h = context @ sd[p + "attention.output.dense.weight"].T + sd[p + "attention.output.dense.bias"]
    h = layer_norm(h + x, sd[p + "attention.output.LayerNorm.weight"], sd[p + "attention.output.LayerNorm.bias"], 1e-12)
    metric = k.reshape(*k.shape[:-1], heads, head_dim).mean(-2)  # the layer's keys averaged over heads
    h = torch.stack([tome_mean_merge(h[b], metric[b], r) for b in range(len(h))])
    inner = gelu(h @ sd[p + "intermediate.dense.weight"].T + sd[p + "intermediate.dense.bias"])
    out = inner @ sd[p + "output.dense.weight"].T + sd[p + "output.dense.bias"]
    return layer_norm(out + h, sd[p + "output.LayerNorm.weight"], sd[p + "output.LayerNorm.bias"], 1e-12)


def connector(x: torch.Tensor, sd: Tensors) -> torch.Tensor:
    e = "VLconnector.embeddings."
    h = x + sd[e + "position_embeddings.weight"][: x.shape[1]] + sd[e + "token_type_embeddings.weight"][0]
    h = layer_norm(h, sd[e + "LayerNorm.weight"], sd[e + "LayerNorm.bias"], 1e-12)
    for i in range(CONNECTOR["layers"]):
        h = bert_tome_layer(h, sd, i, CONNECTOR["heads"], CONNECTOR["r"])
    return h


def encode(frames: torch.Tensor, vit: Tensors, sd: Tensors) -> torch.Tensor:
    """Video soft prompt: ViT per frame (temporal modules inside), mean over time, ln_vision, VL_proj, connector,
    opt_proj."""
    batch, num_frames = frames.shape[:2]
    tokens = eva_vit(frames.flatten(0, 1), vit, num_frames, sd).unflatten(0, (batch, num_frames)).mean(1)
    tokens = layer_norm(tokens, sd["ln_vision.weight"], sd["ln_vision.bias"], 1e-5)
    tokens = connector(tokens @ sd["VL_proj.weight"].T + sd["VL_proj.bias"], sd)
    return tokens @ sd["opt_proj.weight"].T + sd["opt_proj.bias"]


# --- the comparisons ---


@pytest.fixture(scope="module")
def video_files(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("reference")
    return write_reference_files(out, temporal_blocks=TEMPORAL_BLOCKS, lm_path=write_tiny_lm(Path(out) / "lm"))


@pytest.fixture
def imported(video_files, tmp_path_factory: pytest.TempPathFactory):
    """The checkpoint imported as a model directory and loaded (a fresh model per test: tests switch kernels)."""
    out = import_lavis_checkpoint(
        video_files.ckpt,
        video_files.vit_weights,
        video_files.lm_path,
        video_files.model_cfg,
        tmp_path_factory.mktemp("imported"),
        temporal_heads=TEMPORAL_HEADS,
    )
    model, _ = load_model_dir(out)
    return model.eval()


@pytest.fixture
def vit_state(video_files) -> Tensors:
    return {k: v for k, v in video_files.vit_state.items() if not k.startswith(f"blocks.{VIT['depth']}.")}


def test_eva_vit_matches_the_reference_block_math(imported, video_files, vit_state):
    torch.manual_seed(0)
    images = torch.randn(3, 3, VIT["image"], VIT["image"])
    with torch.no_grad(), clip_length(imported.vit, 1):
        for fused in (True, False):
            for module in imported.vit.modules():
                if hasattr(module, "fused_attn"):
                    module.fused_attn = fused
            ours = vit_tokens(imported.vit, images)
            expected = eva_vit(images, vit_state, 1, video_files.state)
            assert relative_error(ours, expected) <= 1e-5, f"fused_attn={fused}"


@pytest.mark.parametrize("plain", [False, True])
def test_temporal_module_matches_the_reference_math(imported, video_files, plain):
    torch.manual_seed(1)
    module = imported.vit.blocks[1].temporal_merge
    module.set_plain_attention(plain)
    assert module.plain == plain
    x = torch.randn(2 * 3, 17, VIT["width"])
    with torch.no_grad():
        assert relative_error(module(x, 3), temporal_merge(x, video_files.state, 1, 3, TEMPORAL_HEADS)) <= 1e-5


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_connector_matches_the_reference_layer_math(imported, video_files, attn_implementation):
    torch.manual_seed(2)
    imported.connector.set_attn_implementation(attn_implementation)
    x = torch.randn(2, 17, CONNECTOR["hidden"])
    with torch.no_grad():
        ours = imported.connector(x)
    expected = connector(x, video_files.state)
    assert ours.shape == expected.shape == (2, 9, CONNECTOR["hidden"])
    assert relative_error(ours, expected) <= 1e-5


def test_video_soft_prompt_matches_the_reference_pipeline(imported, video_files, vit_state):
    torch.manual_seed(3)
    frames = torch.randn(2, 3, 3, VIT["image"], VIT["image"])
    with torch.no_grad():
        ours = imported.encode(frames)
    expected = encode(frames, vit_state, video_files.state)
    assert ours.shape == expected.shape == (2, 9, 40)
    assert relative_error(ours, expected) <= 1e-5
