"""Temporal adapters for a frozen image captioner, and how they are patched into a model instance."""

from simvlg_video.adapters.patch import add_temporal_adapters, remove_temporal_adapters, resolve_blocks
from simvlg_video.adapters.placements import PLACEMENTS, MergedTokens, NoAdapter, Reference, placement_from
from simvlg_video.adapters.temporal import TemporalAttentionMerge
from simvlg_video.adapters.token_pool import TemporalTokenPool

__all__ = [
    "PLACEMENTS",
    "MergedTokens",
    "NoAdapter",
    "Reference",
    "TemporalAttentionMerge",
    "TemporalTokenPool",
    "add_temporal_adapters",
    "placement_from",
    "remove_temporal_adapters",
    "resolve_blocks",
]
