"""Show what a video model does with one clip: sampled frames, ToMe merge groups, temporal attention, caption.

    python -m simvlg_video.visualize --ckpt RUN_DIR VIDEO [--out picture.png]

Patches of one merge group share a colour. The attention panel shows, for the merged_tokens placement, how much each
output token draws from each frame; for the reference placement, the frame-to-frame attention of the last adapted
ViT block (averaged over tokens and heads).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from simvlg_video.adapters.patch import adapter_modules  # noqa: E402
from simvlg_video.caption import as_record  # noqa: E402
from simvlg_video.data.dataset import VideoClipDataset  # noqa: E402
from simvlg_video.run_dir import eval_settings, load_run_config, load_run_model  # noqa: E402


def group_colours(assignment: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Patch tokens' group ids (CLS dropped) -> an RGB image of the patch grid, one colour per group."""
    palette = plt.get_cmap("tab20")(np.linspace(0, 1, 20))[:, :3]
    shuffled = np.random.default_rng(0).permutation(int(assignment.max()) + 1)
    return palette[shuffled[assignment[1:]] % len(palette)].reshape(*grid, 3)


def temporal_attention(model) -> tuple[np.ndarray | None, str]:
    """The attention recorded in the last forward, as a 2-D array to draw, and its description."""
    if model.temporal_pool is not None and model.temporal_pool.last_attention is not None:
        per_frame = model.temporal_pool.last_attention[0].mean(dim=0).sum(dim=-1)  # (queries, frames), rows sum to 1
        return per_frame.cpu().numpy(), "share of each output token's attention (rows) on each frame"
    recorded = [m.last_attention for _, m in adapter_modules(model.vit) if getattr(m, "last_attention", None) is not None]
    if recorded:
        return recorded[-1].cpu().numpy(), "frame-to-frame attention, last adapted ViT block"
    return None, "no temporal attention in this model"


@torch.no_grad()
def visualize(run_dir: Path, video: Path, out: Path) -> str:
    cfg = load_run_config(run_dir)
    model, model_cfg = load_run_model(run_dir)
    model.eval()
    settings = eval_settings(cfg, model_cfg)
    item = VideoClipDataset([as_record(video)], num_frames=settings["num_frames"], sampler=settings["sampler"],
                            train=False, backend=settings["backend"], decode_timeout=settings["decode_timeout"])[0]
    if "error" in item:
        raise SystemExit(f"error: cannot decode {video}: {item['error']}")
    model.connector.tome.record_groups = True
    if model.temporal_pool is not None:
        model.temporal_pool.record_attention = True
    for _, module in adapter_modules(model.vit):
        module.record_attention = True
    frames = settings["transform"]([item["frames"]])
    caption = model.generate(frames, **vars(settings["generation"]))[0]
    model.encode(frames)  # once more with a batch of one clip, so the recorded groups and weights are this clip's
    assignments = model.connector.last_token_assignment().cpu().numpy()
    attention, attention_title = temporal_attention(model)

    num_frames, grid = frames.shape[1], tuple(model.vit.patch_embed.grid_size)
    shown = torch.nn.functional.interpolate(item["frames"].permute(0, 3, 1, 2).float(), size=model_cfg.image_size)
    shown = shown.permute(0, 2, 3, 1).numpy() / 255
    panels = num_frames + (attention is not None)
    figure = plt.figure(figsize=(2.3 * panels + 0.6, 5.8))
    layout = figure.add_gridspec(2, panels, width_ratios=[1] * num_frames + [1.3] * (attention is not None))
    for t in range(num_frames):
        colours = group_colours(assignments[t if len(assignments) == num_frames else 0], grid)
        overlay = np.kron(colours, np.ones((shown.shape[1] // grid[0], shown.shape[2] // grid[1], 1)))
        for row, (image, title) in enumerate([(shown[t], f"frame {item['frame_indices'][t]}"),
                                              (0.45 * shown[t] + 0.55 * overlay, "merge groups")]):
            axis = figure.add_subplot(layout[row, t])
            axis.imshow(image)
            axis.set_title(title, fontsize=9)
            axis.axis("off")
    if attention is not None:
        axis = figure.add_subplot(layout[:, num_frames])
        picture = axis.imshow(attention, cmap="viridis", aspect="auto", vmin=0)
        axis.set_title(attention_title.replace(" (", "\n("), fontsize=8)
        axis.set_xticks(range(num_frames), [f"frame {i}" for i in item["frame_indices"]], fontsize=7, rotation=45)
        axis.tick_params(labelsize=7)
        figure.colorbar(picture, ax=axis, fraction=0.08)
    figure.suptitle(f"caption: {caption}", fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 0.94))
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return caption


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True, help="run directory written by simvlg_video.adapt")
    parser.add_argument("video", type=Path)
    parser.add_argument("--out", type=Path, default=Path("visualization.png"))
    args = parser.parse_args(argv)
    caption = visualize(args.ckpt, args.video, args.out)
    print(f"{args.out}: {caption}")


if __name__ == "__main__":
    main()
