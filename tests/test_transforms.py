"""Frame transforms: shapes, normalisation values, crop geometry, one crop and one flip per clip, reproducibility."""

from __future__ import annotations

import pytest
import torch

from simvlg_video.data.transforms import FrameTransform

SIZE = 16
# The published CLIP normalisation, pinned here: a changed constant in the code under test must fail the tests, not
# move their expected values with it.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RED, BLUE = (255, 0, 0), (0, 0, 255)


def solid_clip(colour: tuple[int, int, int], frames: int = 3, height: int = 24, width: int = 32) -> torch.Tensor:
    return torch.tensor(colour, dtype=torch.uint8).expand(frames, height, width, 3).clone()


def noise_clip(frames: int = 4, height: int = 30, width: int = 40, seed: int = 0) -> torch.Tensor:
    """One random frame repeated: any per-frame difference in the output comes from the transform."""
    frame = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return frame.expand(frames, height, width, 3).clone()


def red_fraction(output: torch.Tensor) -> float:
    """Fraction of output pixels that were red before normalisation."""
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    pixels = output * std + mean  # back to [0, 1]
    return ((pixels[..., 0, :, :] > 0.5) & (pixels[..., 2, :, :] < 0.5)).float().mean().item()


@pytest.mark.parametrize("train", [False, True])
def test_clips_of_different_sizes_become_one_float_batch(train: bool) -> None:
    clips = [noise_clip(height=30, width=40), noise_clip(height=50, width=20), noise_clip(height=16, width=16)]
    out = FrameTransform(size=SIZE, train=train)(clips, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 4, 3, SIZE, SIZE)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_a_5d_tensor_gives_the_same_result_as_a_list_of_clips() -> None:
    batch = torch.stack([noise_clip(seed=1), noise_clip(seed=2)])
    transform = FrameTransform(size=SIZE)
    torch.testing.assert_close(transform(batch), transform(list(batch)), rtol=0, atol=0)


@pytest.mark.parametrize("train", [False, True])
def test_normalisation_uses_clip_mean_and_std(train: bool) -> None:
    colour = (255, 0, 128)
    out = FrameTransform(size=SIZE, train=train)([solid_clip(colour)], generator=torch.Generator().manual_seed(0))
    expected = [(value / 255 - mean) / std for value, mean, std in zip(colour, CLIP_MEAN, CLIP_STD)]
    for channel in range(3):
        torch.testing.assert_close(
            out[0, :, channel], torch.full((3, SIZE, SIZE), expected[channel]), rtol=0, atol=1e-5
        )


def test_custom_mean_and_std() -> None:
    out = FrameTransform(size=SIZE, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))([solid_clip((255, 0, 255))])
    torch.testing.assert_close(out[0, 0, :, 0, 0], torch.tensor([1.0, -1.0, 1.0]), rtol=0, atol=1e-6)


def test_bicubic_overshoot_is_clamped_to_the_pixel_range() -> None:
    clip = torch.zeros(1, 32, 32, 3, dtype=torch.uint8)
    clip[:, :, ::2] = 255  # one-pixel stripes ring under bicubic resampling
    out = FrameTransform(size=SIZE, mean=(0, 0, 0), std=(1, 1, 1))([clip])
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize(
    ("height", "width", "red_area"),
    [
        (20, 40, (slice(None), slice(0, 10))),  # wide frame: its left quarter lies outside the centre square
        (40, 20, (slice(0, 10), slice(None))),  # tall frame: its top quarter lies outside the centre square
    ],
)
def test_eval_resizes_the_shorter_side_and_crops_the_centre(height: int, width: int, red_area) -> None:
    clip = solid_clip(BLUE, height=height, width=width)
    clip[:, red_area[0], red_area[1]] = torch.tensor(RED, dtype=torch.uint8)
    out = FrameTransform(size=10)([clip])
    assert out.shape == (1, 3, 3, 10, 10)
    assert red_fraction(out) == 0.0
    # without the crop the red quarter would be in view: a square frame keeps it
    square = solid_clip(BLUE, height=40, width=40)
    square[:, :, :10] = torch.tensor(RED, dtype=torch.uint8)
    assert red_fraction(FrameTransform(size=10)([square])) == pytest.approx(0.25, abs=0.05)


def test_train_uses_one_crop_and_one_flip_for_all_frames_of_a_clip() -> None:
    transform = FrameTransform(size=SIZE, train=True, hflip=True)
    for seed in range(10):
        clips = [noise_clip(seed=seed), noise_clip(seed=seed + 100)]
        out = transform(clips, generator=torch.Generator().manual_seed(seed))
        for clip in out:
            for frame in clip[1:]:
                torch.testing.assert_close(frame, clip[0], rtol=0, atol=0)


def test_train_is_reproducible_from_the_generator_and_varies_with_it() -> None:
    transform = FrameTransform(size=SIZE, train=True, hflip=True)
    clips = [noise_clip(seed=1), noise_clip(seed=2)]
    first = transform(clips, generator=torch.Generator().manual_seed(5))
    again = transform(clips, generator=torch.Generator().manual_seed(5))
    other = transform(clips, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, other)
    assert not torch.equal(first[0], FrameTransform(size=SIZE)(clips)[0])  # train differs from the eval crop


def test_train_crop_boxes_respect_scale_and_ratio() -> None:
    transform = FrameTransform(size=SIZE, train=True, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3))
    generator = torch.Generator().manual_seed(0)
    areas = []
    for _ in range(300):
        top, left, height, width = transform._crop_box(120, 160, generator)
        assert top >= 0 and top + height <= 120 and left >= 0 and left + width <= 160
        assert 3 / 4 - 0.03 <= width / height <= 4 / 3 + 0.03
        areas.append(height * width / (120 * 160))
    assert 0.5 - 0.02 <= min(areas) < 0.6 and 0.9 < max(areas) <= 1.0


def test_train_crop_falls_back_to_a_centred_box_for_extreme_shapes() -> None:
    transform = FrameTransform(size=SIZE, train=True, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3))
    assert transform._crop_box(10, 200, torch.Generator().manual_seed(0)) == (0, 93, 10, 13)


def half_red_half_blue_square() -> torch.Tensor:
    clip = solid_clip(BLUE, height=32, width=32)
    clip[:, :, :16] = torch.tensor(RED, dtype=torch.uint8)
    return clip


def left_is_red(clip_out: torch.Tensor) -> bool:
    return red_fraction(clip_out[..., : SIZE // 2]) > 0.9


@pytest.mark.parametrize(("hflip", "expect_flips"), [(False, False), (True, True)])
def test_hflip_flag_controls_mirroring(hflip: bool, expect_flips: bool) -> None:
    # scale and ratio of 1 make the crop the whole frame, so only a flip can move the red half
    transform = FrameTransform(size=SIZE, train=True, hflip=hflip, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    generator = torch.Generator().manual_seed(0)
    red_on_left = [left_is_red(transform([half_red_half_blue_square()], generator=generator)[0]) for _ in range(20)]
    assert (not all(red_on_left)) == expect_flips
    assert any(red_on_left)


def test_eval_never_flips() -> None:
    transform = FrameTransform(size=SIZE, train=False, hflip=True)
    assert all(left_is_red(transform([half_red_half_blue_square()])[0]) for _ in range(10))


@pytest.mark.parametrize(
    ("clips", "message"),
    [
        ([], "no clips"),
        ([torch.zeros(2, 8, 8, 3)], r"clip 0 must be a uint8 tensor \(T, H, W, 3\), got torch.float32"),
        ([torch.zeros(8, 8, 3, dtype=torch.uint8)], r"clip 0 must be a uint8 tensor"),
        ([torch.zeros(2, 3, 8, 8, dtype=torch.uint8)], r"clip 0 must be a uint8 tensor"),
        (torch.zeros(2, 8, 8, 3, dtype=torch.uint8), r"batch tensor must be \(B, T, H, W, 3\)"),
        (
            [torch.zeros(2, 8, 8, 3, dtype=torch.uint8), torch.zeros(3, 8, 8, 3, dtype=torch.uint8)],
            r"same number of frames, got \[2, 3\]",
        ),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(clips, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FrameTransform(size=SIZE)(clips)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 0}, "size must be >= 1"),
        ({"scale": (0.0, 1.0)}, "scale must be"),
        ({"scale": (0.8, 0.5)}, "scale must be"),
        ({"ratio": (2.0, 1.0)}, "ratio must be"),
        ({"std": (0.1, 0.0, 0.1)}, "std > 0"),
    ],
)
def test_bad_settings_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FrameTransform(**kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("train", [False, True])
def test_gpu_output_matches_cpu(train: bool) -> None:
    clips = [noise_clip(seed=1), noise_clip(seed=2, height=50, width=20)]
    transform = FrameTransform(size=SIZE, train=train, hflip=True)
    on_cpu = transform(clips, generator=torch.Generator().manual_seed(3))
    on_gpu = transform(clips, generator=torch.Generator().manual_seed(3), device="cuda")
    assert on_gpu.device.type == "cuda"
    # the CPU resizes uint8 (rounded to whole levels), the GPU float: one level apart at most
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=0, atol=1.01 / 255 / min(CLIP_STD))
