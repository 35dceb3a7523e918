"""BLIP-2's Q-Former as the connector: transformers' own `Blip2QFormerModel`, wrapped, not copied.

The connector slot takes ViT tokens after `ln_vision` and gives the soft-prompt tokens before `opt_proj`. The ToMe
connector merges the ViT tokens down to its output; the Q-Former instead gives `num_query_tokens` learned queries
(`query_tokens`) that read the ViT tokens through cross-attention in every `cross_attention_frequency`-th layer (its
own key/value projections take the ViT width, so the captioner has no `VL_proj` in front of it). Parameter names are
Hugging Face's under the connector: `connector.query_tokens`, `connector.qformer.*`.

Place of a query: a query has no place in the frame of its own. With `token_positions` the forward also computes one:
the attention-weighted mean place of the ViT tokens the query reads, averaged over heads and cross-attention layers
(`last_token_positions`). The weights are recomputed from the layers' own query and key projections, so any attention
kernel gives the same places. `last_token_assignment` names, for every ViT token, the query that reads it most.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel


@dataclass
class QFormerConfig:
    """The Q-Former connector of a model directory (`connector:` with `kind: qformer` in model.yaml); the defaults are
    BLIP-2 OPT-2.7B's."""

    kind: str = "qformer"
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    num_query_tokens: int = 32  # the learned queries, and so the soft prompt's length
    cross_attention_frequency: int = 2  # layers 0, f, 2f, ... read the ViT tokens
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12  # BERT's


class _KeepProjection:
    """Forward hook on a cross-attention's query or key projection: keeps its output while a forward tracks places."""

    def __init__(self, owner: QFormerConnector, slot: str):
        self.owner, self.slot = owner, slot

    def __call__(self, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        if self.owner._tracking:
            self.owner._projections.setdefault(self.slot, []).append(output)


class QFormerConnector(nn.Module):
    """`query_tokens` + a transformers `Blip2QFormerModel`: (B, N, vision width) ViT tokens -> (B, queries, hidden)."""

    assignment_title = "patches by query"  # what `last_token_assignment` groups, in pictures

    def __init__(self, cfg: QFormerConfig, vision_width: int, attn_implementation: str = "sdpa"):
        super().__init__()
        if cfg.kind != "qformer":
            raise ValueError(f"QFormerConnector needs a connector of kind 'qformer', got {cfg.kind!r}")
        config = Blip2QFormerConfig(
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            intermediate_size=cfg.intermediate_size,
            hidden_act=cfg.hidden_act,
            hidden_dropout_prob=cfg.hidden_dropout,
            attention_probs_dropout_prob=cfg.attention_dropout,
            layer_norm_eps=cfg.layer_norm_eps,
            cross_attention_frequency=cfg.cross_attention_frequency,
            encoder_hidden_size=vision_width,
            use_qformer_text_input=False,
            attn_implementation=attn_implementation,
        )
        self.config = config
        self.query_tokens = nn.Parameter(torch.zeros(1, cfg.num_query_tokens, cfg.hidden_size))
        self.qformer = Blip2QFormerModel(config)
        self.num_query_tokens = cfg.num_query_tokens
        self._tracking = False
        self._record = False
        self._projections: dict[str, list[Tensor]] = {}
        self._positions: Tensor | None = None
        self._assignment: Tensor | None = None
        for layer in self.qformer.encoder.layer:
            if layer.has_cross_attention:
                attention = layer.crossattention.attention
                attention.query.register_forward_hook(_KeepProjection(self, "query"))
                attention.key.register_forward_hook(_KeepProjection(self, "key"))

    def set_attn_implementation(self, implementation: str) -> None:
        """ "sdpa" (fused) or "eager" (matmul-softmax-matmul), as on any transformers model."""
        self.qformer.set_attn_implementation(implementation)

    def record_assignments(self, on: bool) -> None:
        """Keep, from the next forwards, which query reads each ViT token most (`last_token_assignment`)."""
        self._record = on
        self._assignment = None

    def output_tokens(self, num_tokens: int) -> int:
        """Tokens the connector gives for `num_tokens` ViT tokens: always its queries."""
        return self.num_query_tokens

    def forward(self, image_tokens: Tensor, token_positions: Tensor | None = None) -> Tensor:
        """(B, N, vision width) normalised ViT tokens -> (B, num_query_tokens, hidden); `token_positions` (B or 1, N,
        2), the ViT tokens' places in the frame, makes it also give each query a place (`last_token_positions`)."""
        width = self.config.encoder_hidden_size
        if image_tokens.ndim != 3 or image_tokens.shape[-1] != width:
            raise ValueError(f"the Q-Former reads (B, N, {width}) ViT tokens, got {tuple(image_tokens.shape)}")
        if token_positions is not None and token_positions.shape[-2:] != (image_tokens.shape[1], 2):
            raise ValueError(
                f"token_positions must be (B, {image_tokens.shape[1]}, 2), got {tuple(token_positions.shape)}"
            )
        self._tracking = token_positions is not None or self._record
        self._projections = {}
        try:
            queries = self.query_tokens.expand(image_tokens.shape[0], -1, -1)
            output = self.qformer(query_embeds=queries, encoder_hidden_states=image_tokens).last_hidden_state
            if self._tracking:
                reads = self._cross_attention_weights()
                if token_positions is not None:
                    self._positions = reads @ token_positions.to(reads.dtype).expand(reads.shape[0], -1, -1)
                if self._record:
                    self._assignment = reads.argmax(dim=1)
        finally:
            self._tracking = False
            self._projections = {}
        return output

    def _cross_attention_weights(self) -> Tensor:
        """(B, queries, N): how much each query reads each ViT token, averaged over heads and cross-attention layers
        (each row sums to 1). Detached: places are codes, not something to learn through."""
        heads = self.config.num_attention_heads
        maps = []
        for query, key in zip(self._projections["query"], self._projections["key"]):
            q = query.detach().float().unflatten(-1, (heads, -1)).transpose(1, 2)
            k = key.detach().float().unflatten(-1, (heads, -1)).transpose(1, 2)
            maps.append((q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(dim=-1).mean(dim=1))
        return torch.stack(maps).mean(dim=0)

    def last_token_positions(self) -> Tensor:
        """(B, queries, 2): each query's place in the frame in the last forward given token positions."""
        if self._positions is None:
            raise RuntimeError("no query places tracked: pass token_positions to the forward")
        return self._positions

    def last_token_assignment(self) -> Tensor:
        """(B, N): for every ViT token of the last forward, the query that read it most."""
        if self._assignment is None:
            raise RuntimeError("no assignment recorded: call record_assignments(True) before the forward")
        return self._assignment


def build_qformer_connector(cfg: QFormerConfig, vision_width: int) -> QFormerConnector:
    """A randomly initialised Q-Former connector reading ViT tokens of `vision_width`."""
    return QFormerConnector(cfg, vision_width)
