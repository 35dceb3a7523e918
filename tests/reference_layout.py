"""Checkpoints in the exact reference layout at a tiny size, with random values.

The tensor names and shapes are written out here from the reference's description, not taken from our modules, so
that a wrong name or shape on our side cannot make these files agree with it. Widths differ per part (ViT 32,
connector 24, LLM 40) so that a tensor mapped to the wrong part fails on its shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import OPTForCausalLM

from simvlg_video.data_tools.tiny_lm import tiny_opt_config
from simvlg_video.model.config import ModelConfig
from simvlg_video.model.connector import ConnectorConfig
from simvlg_video.model.lm import LMConfig, build_word_tokenizer
from simvlg_video.model.vit import VitConfig

VIT = dict(width=32, depth=3, heads=4, mlp=128, patch=8, image=32)
CONNECTOR = dict(hidden=24, layers=2, heads=4, intermediate=48, max_positions=64, r=4)
LM_WIDTH = 40
QK_DIM = 16  # temporal module query/key width in the tiny video checkpoints (4 heads of 4)
TEMPORAL_HEADS = 4
CORPUS = ["a red circle moves left", "a blue square moves right", "a green triangle stays still"]

IGNORED_EXTRAS = (
    "temp",
    "vision_proj.weight",
    "vision_proj.bias",
    "text_proj.weight",
    "text_proj.bias",
    "VLconnector.embeddings.word_embeddings.weight",
)


def tiny_model_config() -> ModelConfig:
    """The architecture the tiny reference files fit (a model directory's model.yaml, frozen parts not yet given)."""
    return ModelConfig(
        vit=VitConfig(
            preset="tiny",
            overrides={
                "img_size": VIT["image"],
                "patch_size": VIT["patch"],
                "embed_dim": VIT["width"],
                "depth": VIT["depth"],
                "num_heads": VIT["heads"],
                "mlp_ratio": VIT["mlp"] / VIT["width"],
            },
        ),
        connector=ConnectorConfig(
            hidden_size=CONNECTOR["hidden"],
            num_layers=CONNECTOR["layers"],
            num_heads=CONNECTOR["heads"],
            intermediate_size=CONNECTOR["intermediate"],
            max_position_embeddings=CONNECTOR["max_positions"],
            r=CONNECTOR["r"],
            merge_mode="mean",
        ),
        lm=LMConfig(prompt="", caption_end="\n", max_text_tokens=32),
        image_size=VIT["image"],
    )


def _random(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Values of a plausible scale: norm weights near 1, matrices ~ 1/sqrt(fan-in), everything else small."""
    noise = torch.randn(shape, generator=generator)
    if name.endswith("weight") and len(shape) == 1:
        return 1.0 + 0.1 * noise
    if name.endswith("weight") and len(shape) >= 2 and "embeddings" not in name:
        return noise / (torch.tensor(shape[1:]).prod().float().sqrt())
    return 0.1 * noise


def _filled(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: _random(name, shape, generator) for name, shape in shapes.items()}


def eva_vit_tensors(depth: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """BLIP-2's eva_vit_g.pth layout: embeddings, then per block norm1, qkv (no bias), q_bias, v_bias, proj, norm2,
    mlp."""
    width, mlp, patch = VIT["width"], VIT["mlp"], VIT["patch"]
    tokens = 1 + (VIT["image"] // patch) ** 2
    shapes = {
        "cls_token": (1, 1, width),
        "pos_embed": (1, tokens, width),
        "patch_embed.proj.weight": (width, 3, patch, patch),
        "patch_embed.proj.bias": (width,),
    }
    for i in range(depth):
        shapes |= {
            f"blocks.{i}.norm1.weight": (width,),
            f"blocks.{i}.norm1.bias": (width,),
            f"blocks.{i}.attn.qkv.weight": (3 * width, width),
            f"blocks.{i}.attn.q_bias": (width,),
            f"blocks.{i}.attn.v_bias": (width,),
            f"blocks.{i}.attn.proj.weight": (width, width),
            f"blocks.{i}.attn.proj.bias": (width,),
            f"blocks.{i}.norm2.weight": (width,),
            f"blocks.{i}.norm2.bias": (width,),
            f"blocks.{i}.mlp.fc1.weight": (mlp, width),
            f"blocks.{i}.mlp.fc1.bias": (mlp,),
            f"blocks.{i}.mlp.fc2.weight": (width, mlp),
            f"blocks.{i}.mlp.fc2.bias": (width,),
        }
    return _filled(shapes, seed)


def lavis_tensors(lm_width: int = LM_WIDTH, seed: int = 2) -> dict[str, torch.Tensor]:
    """The trainable tensors the reference saves: ln_vision, VL_proj, VLconnector.* (BertModel names), opt_proj."""
    width, hidden, inner = VIT["width"], CONNECTOR["hidden"], CONNECTOR["intermediate"]
    shapes = {
        "ln_vision.weight": (width,),
        "ln_vision.bias": (width,),
        "VL_proj.weight": (hidden, width),
        "VL_proj.bias": (hidden,),
        "VLconnector.embeddings.position_embeddings.weight": (CONNECTOR["max_positions"], hidden),
        "VLconnector.embeddings.token_type_embeddings.weight": (2, hidden),
        "VLconnector.embeddings.LayerNorm.weight": (hidden,),
        "VLconnector.embeddings.LayerNorm.bias": (hidden,),
        "opt_proj.weight": (lm_width, hidden),
        "opt_proj.bias": (lm_width,),
    }
    for i in range(CONNECTOR["layers"]):
        layer = f"VLconnector.encoder.layer.{i}"
        for part in ("query", "key", "value"):
            shapes |= {
                f"{layer}.attention.self.{part}.weight": (hidden, hidden),
                f"{layer}.attention.self.{part}.bias": (hidden,),
            }
        shapes |= {
            f"{layer}.attention.output.dense.weight": (hidden, hidden),
            f"{layer}.attention.output.dense.bias": (hidden,),
            f"{layer}.attention.output.LayerNorm.weight": (hidden,),
            f"{layer}.attention.output.LayerNorm.bias": (hidden,),
            f"{layer}.intermediate.dense.weight": (inner, hidden),
            f"{layer}.intermediate.dense.bias": (inner,),
            f"{layer}.output.dense.weight": (hidden, inner),
            f"{layer}.output.dense.bias": (hidden,),
            f"{layer}.output.LayerNorm.weight": (hidden,),
            f"{layer}.output.LayerNorm.bias": (hidden,),
        }
    return _filled(shapes, seed)


def extra_tensors(seed: int = 3) -> dict[str, torch.Tensor]:
    """What else a reference checkpoint may hold that the captioner does not use."""
    hidden = CONNECTOR["hidden"]
    shapes = {
        "temp": (),
        "vision_proj.weight": (8, hidden),
        "vision_proj.bias": (8,),
        "text_proj.weight": (8, hidden),
        "text_proj.bias": (8,),
        "VLconnector.embeddings.word_embeddings.weight": (30, hidden),
    }
    return _filled(shapes, seed)


def temporal_tensors(blocks: list[int], alpha_shape: tuple[int, ...] = (), seed: int = 4) -> dict[str, torch.Tensor]:
    """A reference video checkpoint's temporal modules: query/key Linear(C -> qk) and a scalar gate per block."""
    width = VIT["width"]
    shapes: dict[str, tuple[int, ...]] = {}
    for i in blocks:
        prefix = f"visual_encoder.blocks.{i}.temporal_merge"
        shapes |= {
            f"{prefix}.query.weight": (QK_DIM, width),
            f"{prefix}.query.bias": (QK_DIM,),
            f"{prefix}.key.weight": (QK_DIM, width),
            f"{prefix}.key.bias": (QK_DIM,),
            f"{prefix}.alpha": alpha_shape,
        }
    return {name: (t + 0.5 if name.endswith("alpha") else t) for name, t in _filled(shapes, seed).items()}


def write_tiny_lm(path: Path) -> Path:
    """A tiny OPT saved with save_pretrained, and the word tokenizer of the demo."""
    if not (path / "config.json").is_file():
        torch.manual_seed(0)
        tokenizer = build_word_tokenizer(CORPUS)
        config = tiny_opt_config(tokenizer, hidden_size=LM_WIDTH, num_layers=1)
        OPTForCausalLM(config).eval().save_pretrained(path)
        tokenizer.save_pretrained(path)
    return path


@dataclass
class ReferenceFiles:
    ckpt: Path
    vit_weights: Path
    lm_path: Path
    model_cfg: ModelConfig
    state: dict[str, torch.Tensor]  # the checkpoint's state dict as written
    vit_state: dict[str, torch.Tensor]  # the ViT file's tensors as written (with prefix, if any)


def write_reference_files(
    out: Path,
    temporal_blocks: list[int] = (),
    alpha_shape: tuple[int, ...] = (),
    vit_prefix: bool = False,
    extra_vit_block: bool = True,
    extras: bool = True,
    bare_state_dict: bool = False,
    lm_path: Path | None = None,
) -> ReferenceFiles:
    """Write `eva_vit.pth`, `reference.pth` (and a tiny LM unless `lm_path` is given) into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    vit_state = eva_vit_tensors(VIT["depth"] + int(extra_vit_block))
    if vit_prefix:
        vit_state = {f"visual_encoder.{name}": t for name, t in vit_state.items()}
    torch.save(vit_state, out / "eva_vit.pth")
    state = lavis_tensors() | (extra_tensors() if extras else {}) | temporal_tensors(list(temporal_blocks), alpha_shape)
    saved = (
        state
        if bare_state_dict
        else {
            "model": state,
            "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
            "config": {"run": {"lr_sched": "linear_warmup_cosine_lr", "init_lr": 1e-4}},
            "iters": 250,
        }
    )
    torch.save(saved, out / "reference.pth")
    lm = lm_path or write_tiny_lm(out / "lm")
    return ReferenceFiles(out / "reference.pth", out / "eva_vit.pth", lm, tiny_model_config(), state, vit_state)
