"""The image stage's starting model, made from the parts a user has: the frozen ViT's weights file, a local
`bert-base-uncased` folder for the connector, and the frozen LLM's folder.

As SimVLG's image stage starts: the connector takes BERT's position and token-type embeddings, its embedding
LayerNorm and every encoder layer (a connector reads visual tokens, so BERT's word embeddings, pooler and
pre-training heads are not used); `ln_vision`, `VL_proj` and `opt_proj` start fresh. The result is a model
directory like any other: the connector and projections stored, the ViT and the LLM behind fingerprinted pointers.
"""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path

import torch

from simvlg_video.formats.model_dir import build_from_pointers, save_model_dir
from simvlg_video.formats.tensor_io import copy_into, read_tensors
from simvlg_video.model.config import ModelConfig

log = logging.getLogger(__name__)

# BERT tensors a connector does not take (names after the `bert.` prefix of pre-training checkpoints is dropped).
BERT_UNUSED = ("embeddings.word_embeddings.", "embeddings.position_ids", "pooler.", "cls.")
BERT_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def bert_weights_file(folder: Path) -> Path:
    """The one weights file of a Hugging Face BERT folder."""
    if not folder.is_dir():
        raise FileNotFoundError(
            f"bert_path {folder}: not a folder (give a local Hugging Face bert-base-uncased "
            "folder, with config.json and model.safetensors or pytorch_model.bin)"
        )
    for name in BERT_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"bert_path {folder}: has none of {', '.join(BERT_WEIGHT_FILES)} (a sharded BERT is "
        "not expected: bert-base is one file)"
    )


def connector_tensors_from_bert(folder: Path) -> dict[str, torch.Tensor]:
    """BERT's tensors under the connector's names: `bert.` prefix dropped, old `LayerNorm.gamma/beta` renamed,
    what a connector does not use left out."""
    tensors = {}
    for name, tensor in read_tensors(bert_weights_file(folder)).items():
        name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name.removeprefix("bert."))
        name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
        if not name.startswith(BERT_UNUSED):
            tensors[name] = tensor
    return tensors


def assemble_image_model(cfg: ModelConfig, out_dir: str | Path, bert_path: str | Path | None = None) -> Path:
    """Write the model directory of a new image model: `cfg` with its frozen parts named (`cfg.vit.weights`, or
    none: then the ViT is stored and trains too; `cfg.lm.path`), the connector from `bert_path` (None: randomly
    initialised, as a tiny demo model is)."""
    cfg = copy.deepcopy(cfg)
    cfg.adapter, cfg.frozen = None, {}
    out_dir = Path(out_dir)
    model = build_from_pointers(cfg, out_dir, frozen_on_meta=True)  # the frozen parts' weights are not read
    if bert_path is not None:
        weights = bert_weights_file(Path(bert_path).expanduser())
        copy_into(model.connector, connector_tensors_from_bert(weights.parent), str(weights))
        log.info("connector initialised from %s", weights)
    else:
        log.info("connector randomly initialised (no bert_path)")
    return save_model_dir(model, cfg, out_dir)
