"""The sizes the model benchmark runs at (full size and toy size, for each connector) and its random-weight
captioner, made by the one factory like every other captioner."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import OPTConfig, OPTForCausalLM

from simvlg_video.model.build import FrozenParts, build_captioner
from simvlg_video.model.captioner import VideoCaptioner
from simvlg_video.model.config import ModelConfig
from simvlg_video.model.connector import ConnectorConfig
from simvlg_video.model.lm import build_word_tokenizer
from simvlg_video.model.qformer import QFormerConfig
from simvlg_video.model.vit import VitConfig


@dataclass(frozen=True)
class Sizes:
    vit_preset: str
    vit_overrides: dict
    image_size: int
    connector: dict
    lm: dict  # OPTConfig arguments
    adapter: dict  # temporal adapter query/key width and heads


FULL = Sizes(
    vit_preset="eva_vit_g",
    vit_overrides={},
    image_size=224,
    connector=dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, r=19),
    lm=dict(
        hidden_size=2560,
        num_hidden_layers=32,
        num_attention_heads=32,
        ffn_dim=10240,
        vocab_size=50272,
        max_position_embeddings=2048,
    ),
    adapter=dict(qk_dim=256, num_heads=8),
)
# BLIP-2 OPT-2.7B: the same ViT and LLM, BLIP-2's Q-Former (32 queries) as the connector.
FULL_QFORMER = Sizes(
    vit_preset="eva_vit_g",
    vit_overrides={},
    image_size=224,
    connector=dict(
        kind="qformer",
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        intermediate_size=3072,
        num_query_tokens=32,
        cross_attention_frequency=2,
    ),
    lm=FULL.lm,
    adapter=FULL.adapter,
)
TINY = Sizes(
    vit_preset="tiny",
    vit_overrides=dict(img_size=32, embed_dim=32, depth=10),
    image_size=32,
    connector=dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position_embeddings=64, r=4),
    lm=dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_dim=64,
        vocab_size=300,
        max_position_embeddings=128,
    ),
    adapter=dict(qk_dim=16, num_heads=4),
)
TINY_QFORMER = Sizes(
    vit_preset="tiny",
    vit_overrides=TINY.vit_overrides,
    image_size=32,
    connector=dict(
        kind="qformer",
        hidden_size=32,
        num_layers=3,
        num_heads=4,
        intermediate_size=64,
        num_query_tokens=6,
        cross_attention_frequency=2,
    ),
    lm=TINY.lm,
    adapter=TINY.adapter,
)
CONNECTORS = {"tome": (FULL, TINY), "qformer": (FULL_QFORMER, TINY_QFORMER)}  # name -> (full size, tiny)


def build_random_captioner(sizes: Sizes, device: torch.device) -> VideoCaptioner:
    """The captioner at `sizes` with random weights, built directly on `device` (fp32; cast later per variant).

    The tokenizer is a word-level one with exactly the LLM's vocabulary size, so every generated id decodes.
    """
    vocab = sizes.lm["vocab_size"]
    tokenizer = build_word_tokenizer([" ".join(f"w{i}" for i in range(vocab - 4))])
    lm_config = OPTConfig(
        **sizes.lm,
        word_embed_proj_dim=sizes.lm["hidden_size"],
        do_layer_norm_before=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    connector = QFormerConfig if sizes.connector.get("kind") == "qformer" else ConnectorConfig
    cfg = ModelConfig(
        vit=VitConfig(sizes.vit_preset, dict(sizes.vit_overrides)),
        connector=connector(**sizes.connector),
        image_size=sizes.image_size,
    )
    with torch.device(device):
        lm = OPTForCausalLM(lm_config)
    return build_captioner(cfg, FrozenParts(lm, tokenizer), device=device)
