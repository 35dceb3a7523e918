"""Random-weight model files of the real sizes, as the model-file benchmark reads them: BLIP-2's EVA ViT-g state dict,
an OPT-2.7B Hugging Face folder in shards, the reference's training checkpoint, a Hugging Face BLIP-2 OPT folder.
Values of the weights do not matter to the cost of reading the files, only their sizes."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    OPTConfig,
    OPTForCausalLM,
)

from simvlg_video.bench.model_sizes import FULL
from simvlg_video.formats.lavis_checkpoint import reference_name
from simvlg_video.formats.model_dir import build_from_pointers, stored_tensors
from simvlg_video.model.config import load_model_config
from simvlg_video.model.lm import build_word_tokenizer
from simvlg_video.model.vit import build_vit

OPT_2_7B = {**FULL.lm, "word_embed_proj_dim": FULL.lm["hidden_size"]}  # the LLM of the full-size model
SHARD_BYTES = 2 * 2**30  # the LLM's safetensors shards, as Hugging Face splits them
# --tiny: the same files at toy sizes (the test suite runs it)
TINY_OPT = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    ffn_dim=64,
    vocab_size=300,
    max_position_embeddings=64,
    word_embed_proj_dim=32,
)
TINY_MODEL = """vit: {preset: tiny, overrides: {img_size: 32, embed_dim: 32, depth: 3}}
connector: {hidden_size: 32, num_layers: 2, num_heads: 4, intermediate_size: 64, max_position_embeddings: 64, r: 4}
image_size: 32
"""


TINY_BLIP2 = dict(
    vision=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8
    ),
    qformer=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    queries=4,
)
BLIP2_OPT_2_7B = dict(vision={}, qformer={}, queries=32)  # Blip2VisionConfig's and Blip2QFormerConfig's defaults


def _random_like(meta: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(meta.shape, dtype=torch.float32).to(dtype)


def write_sharded(folder: Path, names: dict[str, torch.Tensor], fill) -> None:
    """fp16 safetensors shards of at most SHARD_BYTES with their index, each tensor made by `fill(name, meta)`."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    for name, meta in names.items():
        if sum(t.numel() * 2 for t in shards[-1].values()) + meta.numel() * 2 > SHARD_BYTES:
            shards.append({})
        shards[-1][name] = fill(name, meta)
    weight_map = {}
    for index, shard in enumerate(shards, start=1):
        file = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
        shard.clear()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def write_vit_file(path: Path, model_config: str) -> Path:
    """BLIP-2's eva_vit_g.pth: the ViT with one block more than the captioner uses (EVA-g's 40th), fp16."""
    cfg = load_model_config(model_config)
    with torch.device("meta"):
        vit = build_vit(
            cfg.vit.preset,
            **{**cfg.vit.overrides, "depth": len(build_vit(cfg.vit.preset, **cfg.vit.overrides).blocks) + 1},
        )
    torch.save({name: _random_like(t, torch.float16) for name, t in vit.state_dict().items()}, path)
    return path


def write_lm_folder(folder: Path, sizes: dict) -> Path:
    """An OPT folder (OPT-2.7B's sizes): config.json, a tokenizer, fp16 weights in shards with their index."""
    folder.mkdir(parents=True)
    tokenizer = build_word_tokenizer(["a caption"])
    tokenizer.save_pretrained(folder)
    config = OPTConfig(
        **sizes,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        torch_dtype="float16",
    )
    config.save_pretrained(folder)
    with torch.device("meta"):
        names = {name: t for name, t in OPTForCausalLM(config).state_dict().items() if name != "lm_head.weight"}
    write_sharded(folder, names, lambda name, meta: _random_like(meta, torch.float16))
    return folder


def write_blip2_folder(folder: Path, sizes: dict, opt: dict) -> Path:
    """A Hugging Face BLIP-2 OPT folder: config.json, a tokenizer, every tensor of `Blip2ForConditionalGeneration`
    in fp16 shards (the tied output head left out, as save_pretrained does; the vision qkv biases' k part zero)."""
    folder.mkdir(parents=True)
    tokenizer = build_word_tokenizer(["a caption"])
    tokenizer.save_pretrained(folder)
    config = Blip2Config(
        vision_config=Blip2VisionConfig(**sizes["vision"]),
        qformer_config=Blip2QFormerConfig(**sizes["qformer"]),
        text_config=OPTConfig(
            **opt,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        num_query_tokens=sizes["queries"],
        image_token_index=opt["vocab_size"] - 1,
        torch_dtype="float16",
    )
    config.save_pretrained(folder)
    with torch.device("meta"):
        names = {
            name: t
            for name, t in Blip2ForConditionalGeneration(config).state_dict().items()
            if name != "language_model.lm_head.weight"
        }

    def fill(name: str, meta: torch.Tensor) -> torch.Tensor:
        tensor = _random_like(meta, torch.float16)
        if name.endswith("self_attn.qkv.bias"):
            tensor.view(3, -1)[1] = 0
        return tensor

    write_sharded(folder, names, fill)
    return folder


def write_reference_checkpoint(path: Path, lm_folder: Path, model_config: str) -> Path:
    """The reference's training checkpoint: every trainable tensor (fp32) under its names, and AdamW's state."""
    cfg = load_model_config(model_config)
    cfg.lm.path = str(lm_folder)
    tensors = stored_tensors(build_from_pointers(cfg, path.parent, meta=True), cfg)
    model = {
        reference_name(name): _random_like(t, torch.float32)
        for name, t in tensors.items()
        if not name.startswith("vit.")
    }
    state = {
        index: {"step": torch.tensor(1.0), "exp_avg": torch.zeros_like(t), "exp_avg_sq": torch.zeros_like(t)}
        for index, t in enumerate(model.values())
    }
    torch.save({"model": model, "optimizer": {"state": state, "param_groups": []}, "iters": 250000}, path)
    return path
