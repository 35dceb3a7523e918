"""Where adapters go in a captioner: one function per `adapter=` config choice, each taking the model."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from simvlg_video.adapters.patch import add_temporal_adapters


def reference(
    model: nn.Module,
    blocks: str | Sequence[int] = "all",
    last_k: int | None = None,
    qk_dim: int = 256,
    num_heads: int = 8,
) -> list[int]:
    """The reference placement: a temporal module between attention and MLP of the chosen ViT blocks."""
    return add_temporal_adapters(model.vit, blocks=blocks, last_k=last_k, qk_dim=qk_dim, num_heads=num_heads)


def none(model: nn.Module) -> list[int]:
    """No adapter: the image model, frames averaged over time."""
    return []
