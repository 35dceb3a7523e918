"""Soft attentive temporal merging of per-frame *merged* tokens (the `merged_tokens` placement).

Each frame goes through the frozen ViT and the ToMe connector on its own, giving T sets of M merged tokens. Merged
tokens of different frames do not correspond position by position, so every output token attends over all frames'
tokens: keys and values are every frame's tokens plus codes of when the frame is in the clip (time encoding) and of
where each merged token sits in its frame (space encoding: ToMe merging keeps no token grid, so without them a
shape's place, and with it any left/right/up/down motion, is nearly gone), several heads.

What the pool starts from, and queries with (`queries`):

* `clip_view` (the default): the connector's tokens of the clip's time-averaged ViT tokens, the image model's own view
  of the whole clip. A moving shape leaves a trail in that average whose length is its speed, a thing no average of
  per-frame tokens keeps (docs/experiments.md: the pool that started from that average named few speeds). The
  connector runs once more per clip for it.
* `frame_average`: the time average of the frames' connector tokens.

`frame_gradients=False` (with the clip view only) computes the frames' connector tokens without autograd: the
connector then learns through the clip view alone, and the frames' pass costs a forward only.

`spans=S` reads, instead of every frame, S views of the clip: the connector's tokens of the time average of the ViT
tokens over each of S consecutive spans of frames, each at the moment of its span's middle. A span shows the motion
within it as a trail, as the clip view does for the whole clip, and the connector runs S + 1 times per clip
whatever the number of frames.

The attention's result is added to that start through the output projection, which is the gate: it starts at zero
(weight and bias), so at initialisation the module is its start, and on a static clip the model is the image model
(the time average of identical ViT tokens is those tokens). A zero matrix rather than a zero scalar in front of a
random projection, because it opens from the first step: its gradient is the correlation of the loss gradient with
the attention output, where a scalar's is a projection of it onto random directions (a scalar gate moved from 0 to
-0.02 in 600 steps of the shapes demo, leaving the model an average of frames).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from simvlg_video.adapters.position_codes import SPACE_ENCODINGS, FrameCodes, place_codes, span_means
from simvlg_video.model.adapter_protocol import AttentionMap, AttentionSwitches
from simvlg_video.model.tome import bipartite_soft_matching, max_merge_count

POOL_QUERIES = ("clip_view", "frame_average")


def merge_to_count(tokens: torch.Tensor, count: int) -> torch.Tensor:
    """Reduce (B, M, D) tokens to (B, count, D) by repeated bipartite soft matching (plain mean, CLS protected)."""
    while tokens.shape[1] > count:
        r = min(tokens.shape[1] - count, max_merge_count(tokens.shape[1]))
        if r < 1:
            raise ValueError(f"cannot merge {tokens.shape[1]} tokens down to {count}")
        tokens, _ = bipartite_soft_matching(tokens, r)(tokens, mode="mean")
    return tokens


class TemporalTokenPool(AttentionSwitches, nn.Module):
    """(B, T, M, D) per-frame merged tokens -> (B, K, D) soft prompt tokens, K = `num_prompt_tokens` or the
    connector's count, whatever T.

    A time-pooling stage of the captioner (it pools the connector's per-frame outputs, see `pools_vit_tokens`; with
    `reads_clip_view` the captioner also hands it the connector's tokens of the time-averaged ViT tokens, and with
    `frame_gradients` False it computes the frames' tokens without autograd) and an adapter (see
    `simvlg_video.model.adapter_protocol`).
    """

    pools_vit_tokens = False  # pools the connector's merged tokens of every frame, not the ViT's tokens

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_prompt_tokens: int | None,
        time_encoding: str,
        max_frames: int,
        space_encoding: str,
        queries: str = "clip_view",
        frame_gradients: bool = True,
        spans: int | None = None,
    ):
        super().__init__()
        if space_encoding not in SPACE_ENCODINGS:
            raise ValueError(f"space_encoding must be one of {SPACE_ENCODINGS}, got {space_encoding!r}")
        if queries not in POOL_QUERIES:
            raise ValueError(f"queries must be one of {POOL_QUERIES}, got {queries!r}")
        if not frame_gradients and queries != "clip_view":
            raise ValueError("frame_gradients=False needs queries='clip_view': the connector learns through it alone")
        if spans is not None and spans < 1:
            raise ValueError(f"spans must be a positive number of spans of frames or None (every frame), got {spans}")
        if dim % num_heads:
            raise ValueError(f"TemporalTokenPool: dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim, self.num_heads, self.num_prompt_tokens = dim, num_heads, num_prompt_tokens
        self.queries, self.frame_gradients, self.spans = queries, frame_gradients, spans
        self.last_span_of: torch.Tensor | None = None  # with spans: each frame's span in the last forward (pictures)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)  # the gate onto the start: zero at initialisation
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.time = FrameCodes(time_encoding, dim, max_frames)
        self.space_encoding = space_encoding
        # AttentionSwitches: `plain` (plain attention: benchmarks, FLOP counting) and `recording` keep
        # `last_attention`, here (B, heads, K, T * M).

    def no_decay_params(self) -> list[str]:
        """The output gate (zero at the start: decay would hold it shut), biases and the frame-code table."""
        return [name for name, p in self.named_parameters() if p.ndim < 2 or name.startswith(("out.", "time."))]

    def attention_map(self) -> AttentionMap | None:
        """How much each output token of the first clip draws from each frame (heads averaged, rows sum to 1; with
        spans, a span's share split evenly over its frames)."""
        if self.last_attention is None:
            return None
        per_frame = self.last_attention[0].mean(dim=0).sum(dim=-1)
        if self.last_span_of is not None:
            span_of = self.last_span_of.to(per_frame.device)
            per_frame = per_frame[:, span_of] / torch.bincount(span_of)[span_of]
        return AttentionMap(per_frame, "share of each output token's attention on each frame", "output token")

    def frame_views(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the pool reads of a clip's (B, T, N, C) ViT tokens before the connector: every frame's, or with
        `spans` the time average over each span of frames; and the moments of those views in the clip (None: evenly
        spread frames)."""
        if self.spans is None:
            self.last_span_of = None
            return tokens, None
        means, times, self.last_span_of = span_means(tokens, self.spans)
        return means, times

    @property
    def uses_positions(self) -> bool:
        """Whether `forward` needs the merged tokens' positions in the frame."""
        return self.space_encoding != "none"

    @property
    def reads_clip_view(self) -> bool:
        """Whether `forward` needs the connector's tokens of the clip's time-averaged ViT tokens."""
        return self.queries == "clip_view"

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor | None = None,
        clip_view: torch.Tensor | None = None,
        clip_positions: torch.Tensor | None = None,
        times: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, M, D) tokens (+ their (B, T, M, 2) positions in the frame with a space encoding; + the clip view,
        (B, M, D) tokens and (B, M, 2) positions, when `reads_clip_view`; + the (T,) moments of the views in the clip
        when they are spans, `frame_views`) -> (B, K, D)."""
        if tokens.dim() != 4 or tokens.shape[-1] != self.dim:
            raise ValueError(f"TemporalTokenPool expects (B, T, M, {self.dim}) tokens, got {tuple(tokens.shape)}")
        batch, num_frames, num_tokens, _ = tokens.shape
        self._check_input("positions", positions, (*tokens.shape[:3], 2), self.uses_positions)
        if self.reads_clip_view:
            self._check_input("clip_view", clip_view, (batch, num_tokens, self.dim), True)
            self._check_input("clip_positions", clip_positions, (batch, num_tokens, 2), self.uses_positions)
            start = clip_view
        else:
            start = tokens.mean(dim=1)
        source = tokens
        codes = self.time(num_frames, tokens.device, times)
        if codes is not None:
            source = source + codes[None, :, None, :].to(tokens.dtype)
        keep_count = self.num_prompt_tokens is None or self.num_prompt_tokens == num_tokens
        query_source = start
        if self.uses_positions:  # where each merged token is: lets attention match and compare places across frames
            places = place_codes(positions, self.dim).to(tokens.dtype)
            source = source + places
            if keep_count:  # merged output tokens have no single place
                start_places = places.mean(dim=1) if clip_positions is None else place_codes(clip_positions, self.dim)
                query_source = start + start_places.to(tokens.dtype)
        if not keep_count:
            if self.num_prompt_tokens > num_tokens:
                raise ValueError(f"num_prompt_tokens={self.num_prompt_tokens} exceeds the {num_tokens} merged tokens")
            start = query_source = merge_to_count(start, self.num_prompt_tokens)
        source = source.reshape(batch, num_frames * num_tokens, self.dim)

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        query, key, value = heads(self.query(query_source)), heads(self.key(source)), heads(self.value(source))
        if self.recording or self.plain:
            weights = (query @ key.transpose(-2, -1) * query.shape[-1] ** -0.5).softmax(dim=-1)
            if self.recording:
                self.last_attention = weights.detach().unflatten(-1, (num_frames, num_tokens))
            mixed = weights @ value
        else:
            mixed = F.scaled_dot_product_attention(query, key, value)
        return start + self.out(mixed.transpose(1, 2).flatten(2))

    def _check_input(self, name: str, value: torch.Tensor | None, shape: tuple[int, ...], needed: bool) -> None:
        if needed and (value is None or tuple(value.shape) != shape):
            found = None if value is None else tuple(value.shape)
            why = "queries='clip_view'" if name.startswith("clip") else f"space_encoding={self.space_encoding!r}"
            raise ValueError(f"TemporalTokenPool with {why} needs {name} of shape {shape}, got {found}")

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, num_prompt_tokens={self.num_prompt_tokens}, "
            f"queries={self.queries}, frame_gradients={self.frame_gradients}, spans={self.spans}, "
            f"space={self.space_encoding}"
        )
