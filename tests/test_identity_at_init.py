"""With every gate at 0, the video model on a clip of one repeated frame is exactly the image model on that frame."""

from __future__ import annotations

import pytest
import torch

from simvlg_video.adapters.placements import reference
from simvlg_video.model.model_dir import load_model_dir


def lm_logits(model, frames: torch.Tensor, captions: list[str]) -> torch.Tensor:
    ids, mask, _ = model.text.training_batch(captions, frames.device)
    embeds = model.embed_with_soft_prompt(model.encode(frames), ids)
    return model.lm(inputs_embeds=embeds).logits


@pytest.mark.parametrize("num_frames", [1, 2, 4])
@pytest.mark.parametrize("placement", [{"blocks": "all"}, {"blocks": "last_k", "last_k": 2}, {"blocks": [1]}])
@torch.no_grad()
def test_gates_at_zero_reproduce_the_image_model(tiny_model_dir, num_frames, placement):
    image_model = load_model_dir(tiny_model_dir)[0].eval()
    video_model = load_model_dir(tiny_model_dir)[0].eval()
    reference(video_model, qk_dim=32, num_heads=4, **placement)
    torch.manual_seed(num_frames)
    frame = torch.randn(2, 1, 3, 64, 64)
    captions = ["a red circle moves to the left", "a blue square"]

    expected = lm_logits(image_model, frame, captions)
    actual = lm_logits(video_model, frame.expand(-1, num_frames, -1, -1, -1), captions)
    assert (actual - expected).abs().max().item() <= 1e-5


@torch.no_grad()
def test_open_gates_make_the_video_model_differ(tiny_model_dir):
    """The check above is not vacuous: once a gate opens, frames of a moving clip change the output."""
    image_model = load_model_dir(tiny_model_dir)[0].eval()
    video_model = load_model_dir(tiny_model_dir)[0].eval()
    reference(video_model, qk_dim=32, num_heads=4)
    for block in video_model.vit.blocks:
        block.temporal_merge.alpha.fill_(1.0)
    clip = torch.randn(1, 4, 3, 64, 64)
    assert not torch.allclose(video_model.encode(clip), image_model.encode(clip), atol=1e-4)
