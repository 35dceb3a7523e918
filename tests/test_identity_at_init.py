"""With every gate at 0, the video model on a clip of one repeated frame is exactly the image model on that frame,
for every placement and time encoding; once gates open, only the time-aware variants see frame order."""

from __future__ import annotations

import pytest
import torch

from simvlg_video.adapters.placements import MergedTokens, Reference
from simvlg_video.adapters.position_codes import TIME_ENCODINGS
from simvlg_video.formats.model_dir import load_model_dir

PLACEMENTS = {
    "reference-all": lambda m, t: Reference(qk_dim=32, num_heads=4, time_encoding=t).apply(m),
    "reference-last2": lambda m, t: Reference(blocks="last_k", last_k=2, qk_dim=32, num_heads=4, time_encoding=t).apply(
        m
    ),
    "reference-[1]": lambda m, t: Reference(blocks=[1], qk_dim=32, num_heads=4, time_encoding=t).apply(m),
    "merged_tokens": lambda m, t: MergedTokens(num_heads=4, time_encoding=t, space_encoding="none").apply(m),
    "merged_tokens+space": lambda m, t: MergedTokens(num_heads=4, time_encoding=t, space_encoding="sinusoidal").apply(
        m
    ),
    "merged_tokens+space/frames_no_grad": lambda m, t: MergedTokens(
        num_heads=4, time_encoding=t, space_encoding="sinusoidal", frame_gradients=False
    ).apply(m),
    "merged_tokens+space/spans": lambda m, t: MergedTokens(
        num_heads=4, time_encoding=t, space_encoding="sinusoidal", spans=2
    ).apply(m),
    "merged_tokens+space/frame_average": lambda m, t: MergedTokens(
        num_heads=4, time_encoding=t, space_encoding="sinusoidal", queries="frame_average"
    ).apply(m),
}


def lm_logits(model, frames: torch.Tensor, captions: list[str]) -> torch.Tensor:
    ids, _, _ = model.text.training_batch(captions, frames.device)
    return model.lm(inputs_embeds=model.embed_with_soft_prompt(model.encode(frames), ids)).logits


def open_gates(model) -> None:
    """Give every adapter a non-zero gate and non-zero learned frame codes."""
    for name, param in model.named_parameters():
        if name.endswith("alpha"):
            param.data.fill_(1.0)
        elif name.endswith("time_pool.out.weight") or name.endswith("time.table"):  # the merged-token pool's gate
            param.data.normal_()


@pytest.mark.parametrize("num_frames", [1, 2, 4])
@pytest.mark.parametrize("time_encoding", TIME_ENCODINGS)
@pytest.mark.parametrize("placement", PLACEMENTS)
@torch.no_grad()
def test_gates_at_zero_reproduce_the_image_model(tiny_model_dir, placement, time_encoding, num_frames):
    image_model = load_model_dir(tiny_model_dir)[0].eval()
    video_model = load_model_dir(tiny_model_dir)[0].eval()
    PLACEMENTS[placement](video_model, time_encoding)
    torch.manual_seed(num_frames)
    frame = torch.randn(2, 1, 3, 64, 64)
    captions = ["a red circle moves to the left", "a blue square"]

    expected = lm_logits(image_model, frame, captions)
    actual = lm_logits(video_model, frame.expand(-1, num_frames, -1, -1, -1), captions)
    assert (actual - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("time_encoding", TIME_ENCODINGS)
@pytest.mark.parametrize(
    "placement",
    [
        "reference-all",
        "merged_tokens",
        "merged_tokens+space",
        "merged_tokens+space/frame_average",
        "merged_tokens+space/spans",
    ],
)
@torch.no_grad()
def test_only_time_aware_variants_see_frame_order(tiny_model_dir, placement, time_encoding):
    model = load_model_dir(tiny_model_dir)[0].eval()
    PLACEMENTS[placement](model, time_encoding)
    open_gates(model)
    torch.manual_seed(0)
    clip = torch.randn(2, 4, 3, 64, 64)

    forward, backward = model.encode(clip), model.encode(clip.flip(1))
    image_model = load_model_dir(tiny_model_dir)[0].eval()
    assert not torch.allclose(forward, image_model.encode(clip), atol=1e-4), "open gates must change the output"
    if time_encoding == "none":
        torch.testing.assert_close(forward, backward, rtol=1e-5, atol=1e-5)
    else:
        assert (forward - backward).abs().max().item() > 1e-3


def test_frames_without_gradients_give_the_same_prompt_and_the_connector_learns_through_the_clip_view(tiny_model_dir):
    models, pool_inputs = [], []
    for frame_gradients in (True, False):
        model = load_model_dir(tiny_model_dir)[0].eval()
        torch.manual_seed(0)
        MergedTokens(num_heads=4, frame_gradients=frame_gradients).apply(model)
        open_gates(model)
        model.time_pool.register_forward_hook(lambda _m, args, _out: pool_inputs.append(args[0]))
        models.append(model)
    torch.manual_seed(1)
    clip = torch.randn(2, 4, 3, 64, 64)
    prompts = [model.encode(clip) for model in models]
    torch.testing.assert_close(prompts[0], prompts[1], rtol=0, atol=0)
    assert [tokens.requires_grad for tokens in pool_inputs] == [True, False]  # no graph through the frames' pass
    for prompt in prompts:
        prompt.square().sum().backward()
    grads = [torch.cat([p.grad.flatten() for p in m.connector.parameters() if p.grad is not None]) for m in models]
    assert grads[1].abs().sum() > 0 and not torch.allclose(grads[0], grads[1])  # learns, through the clip view only
