"""The ToMe connector: a Hugging Face ``BertModel`` patched to merge tokens in every layer (SimVLG's "TomeFormer").

:func:`apply_tome` patches an existing instance the way ToMe patches timm models: it swaps the classes of that one
model and its layers for subclasses, so no module is rebuilt, no weight is copied and the parameter names stay
Hugging Face's (the reference checkpoint stores them under ``VLconnector.``). Settings and per-forward scratch (r per
layer, token sizes, merge groups) live in one :class:`ToMeState` shared by the model and its layers.

Per layer: self-attention and its output block run unchanged (with ``log(size)`` added to the attention logits in
"weighted" mode), the layer's keys averaged over heads pick the merge by bipartite soft matching, the attention block's
output is merged, then the unchanged feed-forward block runs on the fewer tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from transformers import BertConfig, BertModel
from transformers.models.bert.modeling_bert import BertLayer
from transformers.pytorch_utils import apply_chunking_to_forward

from simvlg_video.model.tome import (
    bipartite_soft_matching,
    check_merge_mode,
    compose_assignments,
    merge_schedule,
    r_per_layer,
)


@dataclass
class ToMeState:
    """Shared by a patched model and its layers. ``sizes[i]`` / ``groups[i]`` are written during a forward.

    ``sizes[i]``: token sizes entering layer i ("weighted" mode; None means all 1).
    ``groups[i]``: layer i's assignment (input token -> output token), kept only while ``record_groups`` is set.
    ``footprints[i]``: (centroid (B, N, 2), patch count (B, N)) of the tokens entering layer i, tracked only when
    the forward is given token positions.
    All are indexed by layer rather than consumed in order, so a layer re-run by gradient checkpointing reads the
    same inputs again.
    """

    r: list[int]
    merge_mode: str
    protect_cls: bool = True
    record_groups: bool = False
    sizes: list[Tensor | None] = field(default_factory=list)
    groups: list[Tensor | None] = field(default_factory=list)
    footprints: list[tuple[Tensor, Tensor] | None] = field(default_factory=list)

    def start_forward(self, positions: Tensor | None = None) -> None:
        self.sizes = [None] * (len(self.r) + 1)
        self.groups = [None] * len(self.r)
        self.footprints = [None] * (len(self.r) + 1)
        if positions is not None:
            self.footprints[0] = (
                positions,
                torch.ones(positions.shape[:2], dtype=positions.dtype, device=positions.device),
            )


def _remember_keys(module: nn.Module, inputs: tuple, output: Tensor) -> None:
    """Forward hook on ``attention.self.key``: keep the keys (detached) for the layer's merge metric."""
    module.tome_keys = output.detach()


def _proportional_attention_bias(sizes: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """Additive attention bias log(size) for every key, shaped (B, 1, 1, N) to broadcast over heads and queries."""
    if sizes is None:
        return None
    return sizes.log().to(dtype)[:, None, None, :]


class ToMeBertLayer(BertLayer):
    """A ``BertLayer`` that merges tokens between its attention block and its feed-forward block."""

    _tome_state: ToMeState
    _tome_index: int

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        cache: object | None = None,
        **kwargs,
    ) -> Tensor:
        if attention_mask is not None or encoder_hidden_states is not None or cache is not None:
            raise ValueError(
                "the ToMe connector takes unpadded inputs_embeds only: no attention mask, cross-attention or cache"
            )
        state, index = self._tome_state, self._tome_index
        sizes = state.sizes[index]
        bias = _proportional_attention_bias(sizes, hidden_states.dtype)
        attention_output, _ = self.attention(hidden_states, bias, **kwargs)

        key_module = self.attention.self.key
        keys, key_module.tome_keys = key_module.tome_keys, None
        batch, num_tokens, _ = keys.shape
        metric = keys.view(batch, num_tokens, self.attention.self.num_attention_heads, -1).mean(dim=2)
        merge = bipartite_soft_matching(metric, state.r[index], state.protect_cls)
        if state.merge_mode == "weighted":
            attention_output, state.sizes[index + 1] = merge(attention_output, "weighted", sizes)
        else:
            attention_output, _ = merge(attention_output, "mean")
        if state.record_groups:
            state.groups[index] = merge.assignment
        if state.footprints[index] is not None:  # a merged token sits at the patch-weighted mean of its parts
            centroids, counts = state.footprints[index]
            state.footprints[index + 1] = merge(centroids, "weighted", counts)

        return apply_chunking_to_forward(
            self.feed_forward_chunk, self.chunk_size_feed_forward, self.seq_len_dim, attention_output
        )


class ToMeBertModel(BertModel):
    """A ``BertModel`` patched by :func:`apply_tome`: ``model(inputs_embeds)`` returns the merged last hidden state."""

    _tome_state: ToMeState
    assignment_title = "merge groups"

    def forward(self, inputs_embeds: Tensor, token_positions: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """(B, N, hidden) -> (B, N_out, hidden); token types 0 and positions 0..N-1 as BertModel's defaults.

        ``token_positions`` (B or 1, N, 2), the input tokens' places in the image, makes the forward also track where
        every merged token sits (see :meth:`last_token_positions`).
        """
        hidden = self.config.hidden_size
        if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != hidden:
            raise ValueError(f"inputs_embeds must be (B, N, {hidden}), got {tuple(inputs_embeds.shape)}")
        if inputs_embeds.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"{inputs_embeds.shape[1]} tokens exceed max_position_embeddings="
                f"{self.config.max_position_embeddings} of the connector"
            )
        if token_positions is not None:
            if token_positions.shape[-2:] != (inputs_embeds.shape[1], 2):
                raise ValueError(
                    f"token_positions must be (B, {inputs_embeds.shape[1]}, 2), got {tuple(token_positions.shape)}"
                )
            token_positions = token_positions.float().expand(inputs_embeds.shape[0], -1, -1)
        self._tome_state.start_forward(token_positions)
        return super().forward(inputs_embeds=inputs_embeds).last_hidden_state

    @property
    def tome(self) -> ToMeState:
        """The shared state: set ``model.tome.record_groups = True`` to keep merge groups for visualisation."""
        return self._tome_state

    def merge_schedule(self, num_tokens: int) -> list[int]:
        """Token counts entering layer 0 and leaving every layer, e.g. 257, 238, ..., 29 for r=19 over 12 layers."""
        state = self._tome_state
        return merge_schedule(num_tokens, state.r, len(state.r), state.protect_cls)

    def output_tokens(self, num_tokens: int) -> int:
        """Tokens the connector gives for `num_tokens` input tokens (what every connector kind answers)."""
        return self.merge_schedule(num_tokens)[-1]

    def record_assignments(self, on: bool) -> None:
        """Keep the merge groups of the next forwards (`last_token_assignment`), for pictures."""
        self._tome_state.record_groups = on

    @property
    def last_merge_groups(self) -> list[Tensor]:
        """Per layer, (B, N_in of that layer) indices of the output token each token went to, from the last forward."""
        groups = self._tome_state.groups
        if not groups or any(group is None for group in groups):
            raise RuntimeError("no merge groups recorded: set model.tome.record_groups = True before the forward")
        return list(groups)

    def last_token_positions(self) -> Tensor:
        """(B, N_out, 2): where each output token of the last forward sits, the mean position of its input tokens."""
        footprint = self._tome_state.footprints[-1] if self._tome_state.footprints else None
        if footprint is None:
            raise RuntimeError("no token positions tracked: pass token_positions to the forward")
        return footprint[0]

    def last_token_assignment(self) -> Tensor:
        """(B, N) for every input token of the last forward, the index of the output token it ended in."""
        return compose_assignments(self.last_merge_groups)


class _NoWordEmbeddings(nn.Module):
    """Stands in for ``embeddings.word_embeddings``: the connector is fed ``inputs_embeds`` and holds no vocabulary."""

    def forward(self, input_ids: Tensor) -> Tensor:
        raise ValueError("the ToMe connector has no word embeddings; pass inputs_embeds")


def apply_tome(bert: BertModel, r: int | Sequence[int], merge_mode: str = "mean") -> ToMeBertModel:
    """Patch ``bert`` in place to merge ``r`` tokens per layer (int, or one per layer); returns the same object.

    Applying again to a patched model only replaces its settings. r=0 everywhere reproduces the unpatched model
    exactly (its forward then returns ``last_hidden_state`` as a tensor instead of an output object).
    """
    if not isinstance(bert, BertModel):
        raise TypeError(f"apply_tome patches a transformers BertModel, got {type(bert).__name__}")
    if bert.config.is_decoder or bert.config.add_cross_attention:
        raise ValueError("apply_tome needs an encoder-only BertModel (is_decoder and add_cross_attention False)")
    layers = bert.encoder.layer
    state = ToMeState(r=r_per_layer(r, len(layers)), merge_mode=check_merge_mode(merge_mode))
    for index, layer in enumerate(layers):
        if type(layer) not in (BertLayer, ToMeBertLayer):
            raise TypeError(f"encoder.layer.{index} is a {type(layer).__name__}; apply_tome expects a plain BertLayer")
        if type(layer) is BertLayer:
            layer.__class__ = ToMeBertLayer
            layer.attention.self.key.tome_keys = None
            layer.attention.self.key.register_forward_hook(_remember_keys)
        layer._tome_state = state
        layer._tome_index = index
    bert.__class__ = ToMeBertModel
    bert._tome_state = state
    return bert


@dataclass
class ConnectorConfig:
    """The ToMe connector of a model directory (`connector:` in model.yaml); defaults are the reference's bert-base."""

    kind: str = "tome"  # tome: this connector | qformer: BLIP-2's Q-Former (`simvlg_video.model.qformer`)
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512  # >= the ViT's tokens (257 for ViT-g at 224 px)
    r: Any = 19  # tokens merged per layer: one int for every layer or a list, one per layer (257 -> 29 at r=19)
    merge_mode: str = "mean"  # mean: the reference's plain mean | weighted: ToMe's size-weighted merge + log(size)
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12  # BERT's


def build_tome_connector(cfg: ConnectorConfig, attn_implementation: str = "sdpa") -> ToMeBertModel:
    """A randomly initialised BERT encoder patched with ToMe.

    Word embeddings are dropped (the state dict has no ``embeddings.word_embeddings.weight``); every other parameter
    keeps its Hugging Face ``BertModel`` name. "sdpa" and "eager" attention both accept the proportional-attention
    bias of "weighted" mode.
    """
    if cfg.kind != "tome":
        raise ValueError(f"build_tome_connector needs a connector of kind 'tome', got {cfg.kind!r}")
    config = BertConfig(
        vocab_size=1,  # replaced below; avoids allocating a 30522-row table that is never used
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        hidden_dropout_prob=cfg.hidden_dropout,
        attention_probs_dropout_prob=cfg.attention_dropout,
        layer_norm_eps=cfg.layer_norm_eps,
        attn_implementation=attn_implementation,
    )
    bert = BertModel(config, add_pooling_layer=False)
    bert.embeddings.word_embeddings = _NoWordEmbeddings()
    return apply_tome(bert, cfg.r if isinstance(cfg.r, int) else list(cfg.r), cfg.merge_mode)
