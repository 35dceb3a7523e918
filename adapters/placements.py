"""Where temporal adapters go in a captioner: one typed setting per `adapter=` choice, the one place their defaults
are stated (`configs/adapter/*.yaml` extend these as schemas, model.yaml files store them by `name`).

`apply(model)` changes that captioner instance in place; every placement starts as the identity, so the adapted
model on a clip of one repeated frame is the image model. `placement_from` is how settings from a file or a command
line become one: chosen by name from PLACEMENTS, never by an import path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from simvlg_video.adapters.patch import add_temporal_adapters, resolve_blocks
from simvlg_video.adapters.token_pool import TemporalTokenPool
from simvlg_video.choices import choose


@dataclass
class Reference:
    """The paper-faithful placement: the reference's temporal module between attention and MLP of the
    chosen ViT blocks, scalar gate 0, frames averaged after the ViT. With `time_encoding="none"` it is exactly the
    reference, which cannot tell frame order."""

    name: str = "reference"
    blocks: Any = "all"  # "all" | "last_k" | [block indices]
    last_k: int | None = None  # with blocks="last_k": adapters in the top K blocks only (autograd stops below them)
    qk_dim: int = 256  # query/key width of the reference module (8 heads of 32)
    num_heads: int = 8
    time_encoding: str = "none"  # none (the reference: blind to frame order) | clip_time | frame_index |
    # learned_index (position_codes.py)
    max_frames: int = 64  # the longest clip the index codes cover (clip-time codes have no bound)

    def patch_vit(self, vit: nn.Module) -> list[int]:
        """Add the modules to `vit`'s blocks; returns the patched block indices."""
        indices = resolve_blocks(self.blocks, self.last_k, len(vit.blocks))
        return add_temporal_adapters(vit, indices, self.qk_dim, self.num_heads, self.time_encoding, self.max_frames)

    def apply(self, model: nn.Module) -> None:
        self.patch_vit(model.vit)


@dataclass
class MergedTokens:
    """The toolkit's placement: every frame goes through the frozen ViT (no autograd) and the connector on its own,
    then a soft attentive temporal token pool merges all frames' connector tokens into the soft prompt, with codes of
    when (the frame's moment in the clip) and where (place in the frame) each token is. Zero-gated on top of what it
    starts from: by default the connector's tokens of the clip's time-averaged ViT tokens.

    With BLIP-2's Q-Former the pooled tokens are each frame's query outputs; a query's place is the attention-weighted
    mean place of the patches it reads (`simvlg_video.model.qformer`)."""

    name: str = "merged_tokens"
    num_heads: int = 8
    num_prompt_tokens: int | None = None  # None: as many tokens as the image model gives (29 for the reference)
    queries: str = "clip_view"  # clip_view | frame_average: what the pool starts from and queries with (token_pool.py)
    frame_gradients: bool = True  # False (with clip_view): the frames' connector tokens without autograd
    spans: int | None = None  # the pool reads S spans of frames, each time-averaged (token_pool.py); None: every frame
    time_encoding: str = "clip_time"  # none | clip_time | frame_index | learned_index (position_codes.py); without
    # codes the pool is blind to frame order
    space_encoding: str = "sinusoidal"  # none | sinusoidal: without it a merged token barely knows where it is
    max_frames: int = 64  # the longest clip the index codes cover (clip-time codes have no bound)

    def apply(self, model: nn.Module) -> None:
        if not model.time_pool.pools_vit_tokens:
            raise RuntimeError("this model already pools merged tokens over time")
        model.time_pool = TemporalTokenPool(
            model.connector_width,
            self.num_heads,
            self.num_prompt_tokens,
            self.time_encoding,
            self.max_frames,
            self.space_encoding,
            self.queries,
            self.frame_gradients,
            self.spans,
        ).to(model.opt_proj.weight.device)


@dataclass
class NoAdapter:
    """The image model with frames averaged over time before the connector: the floor every placement must beat."""

    name: str = "none"

    def apply(self, model: nn.Module) -> None:
        """Nothing to add."""


Placement = Reference | MergedTokens | NoAdapter
PLACEMENTS = {"reference": Reference, "merged_tokens": MergedTokens, "none": NoAdapter}
# What model.yaml files stored before placements had names (format 2 as first written): these exact strings only.
LEGACY_TARGETS = {
    "simvlg_video.adapters.placements.Reference": "reference",
    "simvlg_video.adapters.placements.MergedTokens": "merged_tokens",
    "simvlg_video.adapters.placements.NoAdapter": "none",
}


def placement_from(settings: Any) -> Placement:
    """The placement `settings` name (`{name: reference, blocks: ..., ...}`, a Hydra node, or just the name), with
    its settings type-checked; anything else is a `ChoiceError` (`simvlg_video.choices`)."""
    return choose(settings, PLACEMENTS, "placement", LEGACY_TARGETS)
