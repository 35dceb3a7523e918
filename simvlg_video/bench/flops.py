"""Model FLOPs of a captioner's forward and training step, counted analytically from its sizes.

Only matrix products count (2 FLOPs per multiply-add); norms, softmax and elementwise work do not. A forward product
`Y = X W` costs 2·m·k·n. In backward it costs once more for the input gradient when something below needs it, and
once more for the weight gradient when W trains: frozen parts that gradients pass through (the ViT above its first
adapter, the LLM) cost 2x their forward, trainable parts 3x, and parts below the first adapter only their forward.
Attention's two products (Q·Kᵀ and P·V) cost twice their forward in backward (gradients of both operands).
Recomputation (activation checkpointing, fused-attention kernels) is not counted: these are model FLOPs, the
numerator of model FLOP utilisation (MFU).

Per frame of N tokens, width C, MLP width M, a ViT block's forward is 8·N·C² (qkv, proj) + 4·N²·C (attention)
+ 4·N·C·M (MLP); a temporal adapter over T frames with query/key width q adds 4·N·C·q (query, key), 2·N·T·q
(weights) and 2·N·T·C (mixing). The connector's layer on n tokens of width H (FFN width I, n' after merging) costs
8·n·H² + 4·n²·H + 4·n'·H·I, plus the merge's similarity product; the LLM's layer on S positions costs
8·S·W² + 4·S²·W + 4·S·W·F, and its output head 2·S·W·V. With the merged-token placement the connector runs once
per frame, or per span of frames when the pool reads spans (a forward only when the pool takes these tokens without
gradients), and once more per clip when the pool starts from the clip view (the time-averaged ViT tokens), and the
temporal token pool (K output tokens attending over T·M frame tokens of width H) costs 4·K·H² (query, output) +
4·T·M·H² (key, value) + 4·K·T·M·H (attention), all trainable.

BLIP-2's Q-Former (Q queries of width H, FFN width I) costs per layer 8·Q·H² + 4·Q²·H + 4·Q·H·I, and in each
layer with cross-attention to the N ViT tokens of width C another 4·Q·H² (query, output) + 4·N·C·H (key, value) +
4·Q·N·H (attention); all of it trains, and its inputs carry gradient (ln_vision trains), so training costs 3x the
forward. When the pool's place codes are on, each cross-attention's weights are recomputed without gradient
(2·Q·N·H per such layer) and the queries' places read from them (4·Q·N).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from torch import nn

from simvlg_video.model.qformer import QFormerConnector
from simvlg_video.model.tome import max_merge_count, merge_schedule


@dataclass(frozen=True)
class CaptionerSizes:
    """The sizes the FLOP count needs, read from a live `VideoCaptioner` by `of`."""

    patches: int
    patch_inputs: int  # 3 * patch * patch
    prefix_tokens: int
    vit_width: int
    vit_depth: int
    vit_mlp: int
    adapter_qk: dict[int, int]  # block index -> adapter query/key width
    connector_width: int
    connector_ffn: int
    connector_heads: int
    merge_r: tuple[int, ...]
    protect_cls: bool
    lm_width: int
    lm_layers: int
    lm_ffn: int
    lm_vocab: int
    pool_tokens: int | None = None  # output tokens of the merged-token placement's pool (None: no pool)
    queries: int = 0  # BLIP-2's Q-Former: its learned queries (0: the ToMe connector)
    connector_layers: int = 0  # the Q-Former's layers
    cross_layers: int = 0  # the Q-Former's layers with cross-attention to the ViT tokens
    tracks_places: bool = False  # the pool's place codes: the Q-Former recomputes its cross-attention weights
    pool_reads_clip_view: bool = False  # the pool starts from the connector's tokens of the time-averaged ViT tokens
    frame_gradients: bool = True  # False: the connector's per-frame pass runs without autograd (forward only)
    pool_spans: int | None = None  # the pool reads this many spans of frames instead of every frame

    @property
    def vit_tokens(self) -> int:
        return self.patches + self.prefix_tokens

    @classmethod
    def of(cls, model: nn.Module) -> CaptionerSizes:
        vit, connector, lm_config = model.vit, model.connector, model.lm.config
        if getattr(lm_config, "word_embed_proj_dim", lm_config.hidden_size) != lm_config.hidden_size:
            raise ValueError("FLOP count assumes an OPT-style LLM without input/output projections")
        adapters = {
            index: block.temporal_merge.qk_dim
            for index, block in enumerate(vit.blocks)
            if hasattr(block, "temporal_merge")
        }
        qformer = isinstance(connector, QFormerConnector)
        layers = connector.qformer.encoder.layer if qformer else []
        return cls(
            patches=vit.patch_embed.num_patches,
            patch_inputs=vit.patch_embed.proj.weight[0].numel(),
            prefix_tokens=vit.num_prefix_tokens,
            vit_width=vit.embed_dim,
            vit_depth=len(vit.blocks),
            vit_mlp=vit.blocks[0].mlp.fc1.out_features,
            adapter_qk=adapters,
            connector_width=connector.config.hidden_size,
            connector_ffn=connector.config.intermediate_size,
            connector_heads=connector.config.num_attention_heads,
            merge_r=() if qformer else tuple(connector.tome.r),
            protect_cls=True if qformer else connector.tome.protect_cls,
            lm_width=lm_config.hidden_size,
            lm_layers=lm_config.num_hidden_layers,
            lm_ffn=getattr(lm_config, "ffn_dim", None) or lm_config.intermediate_size,
            lm_vocab=lm_config.vocab_size,
            pool_tokens=_pool_tokens(model),
            queries=connector.num_query_tokens if qformer else 0,
            connector_layers=len(layers),
            cross_layers=sum(layer.has_cross_attention for layer in layers),
            tracks_places=not model.time_pool.pools_vit_tokens and model.time_pool.uses_positions,
            pool_reads_clip_view=not model.time_pool.pools_vit_tokens and model.time_pool.reads_clip_view,
            frame_gradients=model.time_pool.pools_vit_tokens or model.time_pool.frame_gradients,
            pool_spans=None if model.time_pool.pools_vit_tokens else model.time_pool.spans,
        )


def _pool_tokens(model: nn.Module) -> int | None:
    pool = model.time_pool
    if pool.pools_vit_tokens:
        return None
    if pool.num_prompt_tokens is not None:
        raise ValueError("FLOP count assumes the temporal token pool keeps the connector's token count")
    return model.connector.output_tokens(model.vit.patch_embed.num_patches + model.vit.num_prefix_tokens)


def vit_forward_flops(s: CaptionerSizes, frames: int) -> float:
    """Forward of the ViT without adapters on `frames` images."""
    n, c = s.vit_tokens, s.vit_width
    block = 8 * n * c * c + 4 * n * n * c + 4 * n * c * s.vit_mlp
    return float(frames * (2 * s.patches * s.patch_inputs * c + s.vit_depth * block))


def _vit_training_flops(s: CaptionerSizes, frames: int, num_frames: int) -> float:
    n, c = s.vit_tokens, s.vit_width
    first = min(s.adapter_qk) if s.adapter_qk else None
    total = 2 * s.patches * s.patch_inputs * c
    for index in range(s.vit_depth):
        linear, attention, mlp = 8 * n * c * c, 4 * n * n * c, 4 * n * c * s.vit_mlp
        total += linear + attention + mlp
        if first is None or index < first:
            continue
        above_first = index > first  # the block's input carries gradient (at `first` only the adapter's output)
        if above_first:
            total += linear + 2 * attention
        total += mlp
        if index in s.adapter_qk:
            q = s.adapter_qk[index]
            project, weights, mixing = 4 * n * c * q, 2 * n * num_frames * q, 2 * n * num_frames * c
            total += project + weights + mixing  # forward
            total += project + 2 * weights + mixing  # weight gradients, gradients of the T x T weights
            if above_first:
                total += project + mixing  # gradients of the input tokens
    return float(frames * total)


def _qformer_training_flops(s: CaptionerSizes, inputs: int, passes: int = 3) -> tuple[float, int]:
    """(FLOPs of the Q-Former forward and backward on `inputs` token sets, its queries); `passes` 1: forward only."""
    q, h, n, c = s.queries, s.connector_width, s.vit_tokens, s.vit_width
    layer = 8 * q * h * h + 4 * q * q * h + 4 * q * h * s.connector_ffn
    cross = 4 * q * h * h + 4 * n * c * h + 4 * q * n * h
    total = passes * (s.connector_layers * layer + s.cross_layers * cross)
    if s.tracks_places:
        total += s.cross_layers * 2 * q * n * h + 4 * q * n
    return float(inputs * total), q


def _connector_training_flops(s: CaptionerSizes, inputs: int, passes: int = 3) -> tuple[float, int]:
    """(FLOPs of VL_proj + connector forward and backward on `inputs` token sets, output tokens per set); `passes`
    1: forward only (no autograd)."""
    if s.queries:
        return _qformer_training_flops(s, inputs, passes)
    h, n0 = s.connector_width, s.vit_tokens
    vl_proj = 2 * n0 * s.vit_width * h
    total = passes * vl_proj  # forward, weight and input gradients (ln_vision below it trains)
    counts = merge_schedule(n0, list(s.merge_r), len(s.merge_r), s.protect_cls)
    for layer, (n, n_out) in enumerate(itertools.pairwise(counts)):
        products = 8 * n * h * h + 4 * n * n * h + 4 * n_out * h * s.connector_ffn
        total += passes * products
        if min(s.merge_r[layer], max_merge_count(n, s.protect_cls)) > 0:
            total += 2 * ((n + 1) // 2) * (n // 2) * (h // s.connector_heads)  # similarity, no gradient
    return float(inputs * total), counts[-1]


def _pool_training_flops(s: CaptionerSizes, videos: int, num_frames: int, frame_tokens: int) -> float:
    """The merged-token placement's temporal pool, forward and backward (everything in it trains; the key and value
    projections' input gradients only when the frames' tokens carry gradients)."""
    h, k, source = s.connector_width, s.pool_tokens, num_frames * frame_tokens
    key_value = 4 * source * h * h
    return float(videos * (3 * (4 * k * h * h + 4 * k * source * h) + (3 if s.frame_gradients else 2) * key_value))


def _lm_training_flops(s: CaptionerSizes, videos: int, positions: int) -> float:
    w, length = s.lm_width, positions
    layer_linear = 8 * length * w * w + 4 * length * w * s.lm_ffn
    layer_attention = 4 * length * length * w
    head = 2 * length * w * s.lm_vocab
    forward = s.lm_layers * (layer_linear + layer_attention) + head
    backward = s.lm_layers * (layer_linear + 2 * layer_attention) + head  # input gradients only: the LLM is frozen
    return float(videos * (forward + backward))


def training_step_flops(s: CaptionerSizes, videos: int, num_frames: int, text_tokens: int) -> float:
    """Forward + backward of `caption_loss` on `videos` clips of `num_frames` frames and `text_tokens` text tokens."""
    vit = _vit_training_flops(s, videos * num_frames, num_frames)
    if s.pool_tokens is None:  # frames averaged before the connector
        connector, soft_tokens = _connector_training_flops(s, videos)
    else:  # the connector per frame or span (and on the clip view), then the temporal pool
        views = num_frames if s.pool_spans is None else min(s.pool_spans, num_frames)
        connector, frame_tokens = _connector_training_flops(s, videos * views, 3 if s.frame_gradients else 1)
        if s.pool_reads_clip_view:
            connector += _connector_training_flops(s, videos)[0]
        connector += _pool_training_flops(s, videos, views, frame_tokens)
        soft_tokens = s.pool_tokens
    opt_proj = 3 * 2 * videos * soft_tokens * s.connector_width * s.lm_width
    return vit + connector + opt_proj + _lm_training_flops(s, videos, soft_tokens + text_tokens)
