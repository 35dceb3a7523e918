"""The one factory: a `ModelConfig` and the frozen parts the file formats read -> a `VideoCaptioner`.

Everything that makes a captioner comes here: loading a model directory, importing a reference or BLIP-2 checkpoint,
a new image model from its parts, and the benchmarks' random-weight models. The factory reads no file: the frozen
LLM (loaded, or built on the meta device) and its tokenizer come in as objects, the frozen ViT's weights as a
function that fills a ViT (`simvlg_video.formats` reads them from their files, checked by name and shape).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from simvlg_video.adapters.placements import placement_from
from simvlg_video.model.captioner import VideoCaptioner
from simvlg_video.model.config import ModelConfig
from simvlg_video.model.connector import ConnectorConfig, build_tome_connector
from simvlg_video.model.lm import CaptionText
from simvlg_video.model.qformer import QFormerConfig, build_qformer_connector
from simvlg_video.model.vit import build_vit, fill_unsaved_buffers


@dataclass
class FrozenParts:
    """The frozen parts as the formats hand them over."""

    lm: PreTrainedModel  # loaded in the compute dtype, or names and shapes only (meta device)
    tokenizer: PreTrainedTokenizerBase
    fill_vit: Callable[[nn.Module], None] | None = None  # loads the ViT's weights file into an unpatched ViT; None:
    # no weights are read (a ViT without a weights file is built and initialised; one with a file stays on meta)


def build_connector(cfg: ConnectorConfig | QFormerConfig, vision_width: int) -> nn.Module:
    """The connector a `connector:` section describes, randomly initialised, reading ViT tokens of `vision_width`."""
    if isinstance(cfg, QFormerConfig):
        return build_qformer_connector(cfg, vision_width)
    return build_tome_connector(cfg)


def build_captioner(
    cfg: ModelConfig,
    frozen: FrozenParts,
    dtype: torch.dtype = torch.float32,
    meta: bool = False,
    device: torch.device | str = "cpu",
) -> VideoCaptioner:
    """The captioner `cfg` describes, with the placement `cfg.adapter` names applied.

    The ViT is built straight in `dtype`: from its weights (`frozen.fill_vit`) when it has a weights file
    (`cfg.vit.weights`), never randomly initialised first; else initialised. Everything else besides the LLM is
    initialised in fp32 on `device`. `meta=True` builds names and shapes only, on the meta device.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:  # a ViT whose weights come from a file is never randomly initialised: that costs long for a large ViT
        with torch.device("meta") if meta or cfg.vit.weights else torch.device(device):
            vit = build_vit(cfg.vit.preset, **cfg.vit.overrides)
    finally:
        torch.set_default_dtype(previous)
    if frozen.fill_vit is not None and not meta:
        vit = vit.to_empty(device=device)
        frozen.fill_vit(vit)
        fill_unsaved_buffers(vit)
    text = CaptionText(frozen.tokenizer, cfg.lm.prompt, cfg.lm.caption_end, cfg.lm.max_text_tokens)
    with torch.device("meta") if meta else torch.device(device):
        connector = build_connector(cfg.connector, vit.embed_dim)
        model = VideoCaptioner(
            vit,
            connector,
            frozen.lm,
            text,
            connector_width=cfg.connector.hidden_size,
            project_vision=cfg.connector.kind == "tome",
            ln_vision_eps=cfg.ln_vision_eps,
        )
        if cfg.adapter is not None:
            placement_from(cfg.adapter).apply(model)
    return model
