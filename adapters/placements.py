"""Where adapters go in a captioner: one function per `adapter=` config choice, each taking the model."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from simvlg_video.adapters.patch import add_temporal_adapters
from simvlg_video.adapters.token_pool import TemporalTokenPool


def reference(
    model: nn.Module,
    blocks: str | Sequence[int] = "all",
    last_k: int | None = None,
    qk_dim: int = 256,
    num_heads: int = 8,
    time_encoding: str = "none",
    max_frames: int = 64,
) -> list[int]:
    """The reference placement: a temporal module between attention and MLP of the chosen ViT blocks.

    With `time_encoding="none"` this is exactly the reference, which cannot tell frame order.
    """
    return add_temporal_adapters(model.vit, blocks=blocks, last_k=last_k, qk_dim=qk_dim, num_heads=num_heads,
                                 time_encoding=time_encoding, max_frames=max_frames)


def merged_tokens(
    model: nn.Module,
    num_heads: int = 8,
    num_output_tokens: int | None = None,
    time_encoding: str = "none",
    max_frames: int = 64,
    space_encoding: str = "none",
) -> list[int]:
    """Frames go through the frozen ViT and the connector one by one; a TemporalTokenPool merges them across time.

    The ViT keeps no trainable module, so it runs without autograd. Returns [] (no ViT block is patched).
    """
    if model.temporal_pool is not None:
        raise RuntimeError("this model already has a temporal token pool")
    model.temporal_pool = TemporalTokenPool(model.VL_proj.out_features, num_heads=num_heads,
                                            num_output_tokens=num_output_tokens, time_encoding=time_encoding,
                                            max_frames=max_frames, space_encoding=space_encoding,
                                            ).to(model.VL_proj.weight.device)
    return []


def none(model: nn.Module) -> list[int]:
    """No adapter: the image model, frames averaged over time."""
    return []
