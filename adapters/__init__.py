"""Temporal adapters for a frozen image ViT, and how they are patched into a timm model instance."""

from simvlg_video.adapters.patch import (
    AdapterModule,
    TemporalEvaBlock,
    TemporalVitBlock,
    adapter_modules,
    adapter_parameters,
    add_temporal_adapters,
    num_frames_context,
    remove_temporal_adapters,
)
from simvlg_video.adapters.temporal import TemporalAttentionMerge

__all__ = [
    "AdapterModule",
    "TemporalAttentionMerge",
    "TemporalEvaBlock",
    "TemporalVitBlock",
    "adapter_modules",
    "adapter_parameters",
    "add_temporal_adapters",
    "num_frames_context",
    "remove_temporal_adapters",
]
