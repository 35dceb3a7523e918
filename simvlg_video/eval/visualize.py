"""Pictures of what a video model does with a clip: sampled frames, the connector's groups, temporal attention, caption.

Patches of one group share a colour: a ToMe merge group, or (BLIP-2's Q-Former) the patches one query reads most.
The attention panel is what the model's adapter records (see `model.adapter_protocol.AttentionMap`): for the
merged-token pool, how much each output token draws from each frame; for the reference placement, the
frame-to-frame attention of its last adapted ViT block.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from simvlg_video.data.dataset import clip_loader
from simvlg_video.data.manifest import ClipRecord
from simvlg_video.errors import UserError
from simvlg_video.eval.inference import InferenceConfig
from simvlg_video.model.adapter_protocol import AttentionMap, adapter_modules
from simvlg_video.model.captioner import VideoCaptioner
from simvlg_video.model.config import ModelConfig


class CannotDecode(UserError, ValueError):
    """The clip to draw did not decode."""


def group_colours(assignment: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Patch tokens' group ids (CLS dropped) -> an RGB image of the patch grid, one colour per group."""
    palette = plt.get_cmap("tab20")(np.linspace(0, 1, 20))[:, :3]
    shuffled = np.random.default_rng(0).permutation(int(assignment.max()) + 1)
    return palette[shuffled[assignment[1:]] % len(palette)].reshape(*grid, 3)


def recorded_attention(model: VideoCaptioner) -> AttentionMap | None:
    """The attention the adapters recorded in the last forward: the pool's, else the last adapted ViT block's."""
    maps = [adapter.attention_map() for _, adapter in adapter_modules(model)]
    maps = [found for found in maps if found is not None]
    return maps[-1] if maps else None


def _record(model: VideoCaptioner, on: bool) -> None:
    model.connector.record_assignments(on)
    for _, adapter in adapter_modules(model):
        adapter.record_attention(on)


@torch.no_grad()
def draw_clip(
    model: VideoCaptioner, config: ModelConfig, inference: InferenceConfig, record: ClipRecord, out: Path
) -> str:
    """Draw one clip's picture into `out` (PNG); returns the caption."""
    batch = next(
        iter(
            clip_loader([record], inference.reading, inference.frame_sampler, train=False, batch_size=1, num_workers=0)
        )
    )
    if not batch["clip_ids"]:
        raise CannotDecode(f"cannot decode {record.video_path}: {batch['skipped'][0]['reason']}")
    clip, frame_numbers = batch["frames"][0], batch["frame_indices"][0]
    model.eval()
    device = next(model.parameters()).device
    frames = inference.transform(config.image_size)([clip], device=device)
    _record(model, True)
    try:
        caption = model.generate(frames, **inference.generation)[0]
        model.encode(frames)  # once more with a batch of one clip, so the recorded groups and weights are this clip's
        assignments = model.connector.last_token_assignment().cpu().numpy()
        attention = recorded_attention(model)
    finally:
        _record(model, False)
    _draw(
        clip,
        frame_numbers,
        assignments,
        attention,
        caption,
        tuple(model.vit.patch_embed.grid_size),
        config.image_size,
        out,
        model.connector.assignment_title,
    )
    return caption


def _draw(
    clip: torch.Tensor,
    frame_numbers: list[int],
    assignments: np.ndarray,
    attention: AttentionMap | None,
    caption: str,
    grid: tuple[int, int],
    size: int,
    out: Path,
    groups_title: str = "merge groups",
) -> None:
    num_frames = len(frame_numbers)
    shown = torch.nn.functional.interpolate(clip.permute(0, 3, 1, 2).float().cpu(), size=size)
    shown = shown.permute(0, 2, 3, 1).numpy() / 255
    panels = num_frames + (attention is not None)
    figure = plt.figure(figsize=(2.3 * panels + 0.6, 5.8))
    layout = figure.add_gridspec(2, panels, width_ratios=[1] * num_frames + [1.3] * (attention is not None))
    for t in range(num_frames):
        colours = group_colours(assignments[t if len(assignments) == num_frames else 0], grid)
        overlay = np.kron(colours, np.ones((shown.shape[1] // grid[0], shown.shape[2] // grid[1], 1)))
        for row, (image, title) in enumerate(
            [(shown[t], f"frame {frame_numbers[t]}"), (0.45 * shown[t] + 0.55 * overlay, groups_title)]
        ):
            axis = figure.add_subplot(layout[row, t])
            axis.imshow(image)
            axis.set_title(title, fontsize=9)
            axis.axis("off")
    if attention is not None:
        weights = attention.weights.float().cpu().numpy()
        axis = figure.add_subplot(layout[:, num_frames])
        picture = axis.imshow(weights, cmap="viridis", aspect="auto", vmin=0)
        axis.set_title(attention.title.replace(" (", "\n("), fontsize=8)
        frame_labels = [f"frame {i}" for i in frame_numbers]
        axis.set_xticks(range(num_frames), frame_labels, fontsize=7, rotation=45)
        if attention.row_label == "frame":
            axis.set_yticks(range(num_frames), frame_labels, fontsize=7)
        else:
            axis.set_yticks(range(weights.shape[0]), [str(i) for i in range(weights.shape[0])], fontsize=6)
            axis.set_ylabel(attention.row_label, fontsize=8)
        figure.colorbar(picture, ax=axis, fraction=0.08)
    figure.suptitle(f"caption: {caption}", fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 0.94))
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)


def draw_clips(
    model: VideoCaptioner, config: ModelConfig, inference: InferenceConfig, records: list[ClipRecord], out_dir: Path
) -> list[Path]:
    """One picture per clip, `out_dir/<clip id>.png`; clips that do not decode are left out."""
    pictures = []
    for record in records:
        out = out_dir / (record.clip_id.replace("/", "_") + ".png")
        try:
            draw_clip(model, config, inference, record, out)
        except CannotDecode:
            continue
        pictures.append(out)
    return pictures
