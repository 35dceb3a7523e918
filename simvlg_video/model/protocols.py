"""What the captioner asks of its connector and of its pooling over time, whatever their classes.

The captioner checks both when they are put in (`isinstance` against these protocols), so a part that lacks a call
is refused there, naming what it lacks, rather than failing halfway through a forward. Temporal adapters have a
protocol of their own (`simvlg_video.model.adapter_protocol`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class Connector(Protocol):
    """Reads a frame's ViT tokens and gives the soft prompt's tokens (SimVLG's ToMe connector, BLIP-2's Q-Former)."""

    assignment_title: str  # what `last_token_assignment` groups, in pictures ("merge groups", "patches by query")

    def __call__(self, tokens: Tensor, token_positions: Tensor | None = None) -> Tensor:
        """(B, N, width) ViT tokens -> (B, M, hidden); `token_positions` (B or 1, N, 2) makes the forward also track
        where each output token sits in the frame (`last_token_positions`)."""

    def output_tokens(self, num_tokens: int) -> int:
        """How many tokens the connector gives for `num_tokens` input tokens."""

    def last_token_positions(self) -> Tensor:
        """(B, M, 2): where each output token of the last forward given token positions sits in the frame."""

    def record_assignments(self, on: bool) -> None:
        """Keep, from the next forwards, which output token each input token went to (for pictures)."""

    def last_token_assignment(self) -> Tensor:
        """(B, N): for every input token of the last forward, the output token it went to."""


@runtime_checkable
class TimePool(Protocol):
    """Pooling over time, the captioner's `time_pool` stage. Either it pools the frames' ViT tokens before the
    connector (`pools_vit_tokens`: (B, T, N, C) -> (B, N, C), the connector then runs once per clip), or it pools the
    connector's tokens of every frame ((B, T, M, D), with their places in the frame when `uses_positions`, ->
    (B, K, D))."""

    pools_vit_tokens: bool
    uses_positions: bool  # whether the call needs the tokens' places in the frame (connector-token pools)

    def __call__(self, tokens: Tensor, positions: Tensor | None = None) -> Tensor: ...
