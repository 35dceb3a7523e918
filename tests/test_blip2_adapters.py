"""Temporal adapters on a BLIP-2 captioner: identity at initialisation for both placements, frame order seen only with
time codes, what a query's place in the frame is, which parts train, and the pictures of what the Q-Former reads."""

from __future__ import annotations

import pytest
import torch
from blip2_layout import QFORMER, VISION

from simvlg_video.adapters.placements import MergedTokens, Reference
from simvlg_video.adapters.position_codes import TIME_ENCODINGS
from simvlg_video.adapters.token_pool import TemporalTokenPool
from simvlg_video.formats.model_dir import load_model_dir
from simvlg_video.model.adapter_protocol import ADAPTERS
from simvlg_video.model.freeze import apply_freeze_policy
from simvlg_video.model.vit import token_positions
from simvlg_video.train.config import TrainConfig

PLACEMENTS = {
    "reference-all": lambda m, t: Reference(qk_dim=16, num_heads=4, time_encoding=t).apply(m),
    "reference-[1]": lambda m, t: Reference(blocks=[1], qk_dim=16, num_heads=4, time_encoding=t).apply(m),
    "merged_tokens": lambda m, t: MergedTokens(num_heads=4, time_encoding=t, space_encoding="none").apply(m),
    "merged_tokens+space": lambda m, t: MergedTokens(num_heads=4, time_encoding=t).apply(m),
}


def clip(seed: int, frames: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, frames, 3, VISION["image"], VISION["image"], generator=generator)


@pytest.mark.parametrize("num_frames", [2, 4])
@pytest.mark.parametrize("time_encoding", TIME_ENCODINGS)
@pytest.mark.parametrize("placement", PLACEMENTS)
@torch.no_grad()
def test_gates_at_zero_reproduce_the_image_model(blip2_model_dirs, placement, time_encoding, num_frames):
    image_model = load_model_dir(blip2_model_dirs["hf"])[0].eval()
    video_model = load_model_dir(blip2_model_dirs["hf"])[0].eval()
    PLACEMENTS[placement](video_model, time_encoding)
    frame = clip(num_frames, 1)
    expected = image_model.encode(frame)
    assert (video_model.encode(frame.expand(-1, num_frames, -1, -1, -1)) - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("time_encoding", TIME_ENCODINGS)
@pytest.mark.parametrize("placement", ["reference-all", "merged_tokens+space"])
@torch.no_grad()
def test_only_time_aware_variants_see_frame_order(blip2_model_dirs, placement, time_encoding):
    model = load_model_dir(blip2_model_dirs["hf"])[0].eval()
    PLACEMENTS[placement](model, time_encoding)
    torch.manual_seed(0)
    for name, param in model.named_parameters():  # open every gate, give learned frame codes values
        if name.endswith("alpha"):
            param.fill_(1.0)
        elif name.endswith(("time_pool.out.weight", "time.table")):
            param.normal_()
    video = clip(5, 4)
    forward, backward = model.encode(video), model.encode(video.flip(1))
    if time_encoding == "none":
        torch.testing.assert_close(forward, backward, rtol=1e-5, atol=1e-5)
    else:
        assert (forward - backward).abs().max().item() > 1e-3


@torch.no_grad()
def test_a_querys_place_is_the_attention_weighted_mean_place_of_the_patches_it_reads(blip2_model_dirs):
    """Checked against the cross-attention weights transformers returns itself (eager attention)."""
    model = load_model_dir(blip2_model_dirs["hf"])[0].eval()
    tokens = model.ln_vision(model.frame_tokens(clip(6, 1))[:, 0])
    places = token_positions(model.vit)
    output = model.connector(tokens, token_positions=places)
    ours = model.connector.last_token_positions()

    connector = model.connector
    connector.set_attn_implementation("eager")
    reference = connector.qformer(
        query_embeds=connector.query_tokens.expand(2, -1, -1), encoder_hidden_states=tokens, output_attentions=True
    )
    reads = torch.stack(reference.cross_attentions).mean(dim=(0, 2))  # layers, then heads: (B, queries, N)
    assert len(reference.cross_attentions) == 2  # layers 0 and 2 of 3 read the ViT tokens
    torch.testing.assert_close(output, reference.last_hidden_state)
    torch.testing.assert_close(ours, reads @ places.expand(2, -1, -1), rtol=1e-5, atol=1e-6)
    assert ours.shape == (2, QFORMER["queries"], 2) and ((ours > 0) & (ours < 1)).all()
    assert (ours[0] - ours[1]).abs().max() > 1e-3  # places follow the image


@torch.no_grad()
def test_the_merged_token_pool_gets_each_frames_query_places(blip2_model_dirs):
    model = load_model_dir(blip2_model_dirs["hf"])[0].eval()
    MergedTokens(num_heads=4).apply(model)
    seen = {}
    model.time_pool.register_forward_hook(lambda module, args, out: seen.update(tokens=args[0], places=args[1]))
    video = clip(7, 3)
    model.encode(video)
    assert isinstance(model.time_pool, TemporalTokenPool) and model.time_pool.dim == QFORMER["hidden"]
    assert seen["tokens"].shape == (2, 3, QFORMER["queries"], QFORMER["hidden"])
    assert seen["places"].shape == (2, 3, QFORMER["queries"], 2)
    assert (seen["places"][:, 0] - seen["places"][:, 1]).abs().max() > 1e-4  # each frame's own places


def test_the_default_trainable_parts_train_the_qformer_and_nothing_frozen(blip2_model_dirs):
    """`train.trainable`'s default names VL_proj, which the Q-Former model holds as the identity (no tensors)."""
    model = load_model_dir(blip2_model_dirs["hf"])[0]
    MergedTokens(num_heads=4).apply(model)
    counts = apply_freeze_policy(model, TrainConfig().trainable)
    model.train()
    loss = model(clip(8, 2), ["a red circle moves up", "a blue square falls"])
    loss.backward()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(
        name.split(".")[0] in {"time_pool", "ln_vision", "connector", "opt_proj"} for name in trainable
    )
    assert "connector.query_tokens" in trainable
    assert counts["frozen"] == sum(p.numel() for part in (model.vit, model.lm) for p in part.parameters())
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert not model.vit.training and not model.lm.training and model.connector.training
    assert ADAPTERS in TrainConfig().trainable


@torch.no_grad()
def test_pictures_group_the_patches_by_the_query_that_reads_them_most(blip2_model_dirs):
    model = load_model_dir(blip2_model_dirs["hf"])[0].eval()
    model.connector.record_assignments(True)
    model.encode(clip(9, 1))
    assignment = model.connector.last_token_assignment()
    model.connector.record_assignments(False)
    assert assignment.shape == (2, 1 + (VISION["image"] // VISION["patch"]) ** 2)
    assert assignment.min() >= 0 and assignment.max() < QFORMER["queries"] and len(assignment.unique()) > 1
    with pytest.raises(RuntimeError, match="record_assignments"):
        model.connector.last_token_assignment()
