"""The captioner's loss, labels, gradients and generation on the tiny model."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel

from simvlg_video.adapters.placements import Reference
from simvlg_video.formats.model_dir import load_model_dir
from simvlg_video.model.captioner import MeanOverTime, VideoCaptioner
from simvlg_video.model.freeze import apply_freeze_policy

TRAINABLE = ["adapters", "ln_vision", "VL_proj", "connector", "opt_proj"]


def test_labels_cover_only_caption_tokens(tiny_model_dir):
    model, _ = load_model_dir(tiny_model_dir)
    _ids, mask, labels = model.text.training_batch(["a red circle grows", "a blue square"], torch.device("cpu"))
    assert (labels[:, 0] == -100).all()  # BOS (the empty prompt) is not predicted
    assert (labels[mask == 0] == -100).all()  # padding is not predicted
    end = model.text.end_token_id
    assert (labels == end).sum().item() == 2  # each caption ends with the end token, which is predicted
    assert labels[1].ne(-100).sum().item() == 3 + 1  # "a blue square" + end


def test_gradients_reach_exactly_the_trainable_modules(tiny_model_dir):
    model, _ = load_model_dir(tiny_model_dir)
    Reference(qk_dim=32, num_heads=4).apply(model)
    apply_freeze_policy(model, TRAINABLE)
    for block in model.vit.blocks:  # open the gates so gradients reach the adapters' projections too
        block.temporal_merge.alpha.data.fill_(0.5)
    loss = model(torch.randn(2, 3, 3, 64, 64), ["a red circle moves up", "a green triangle shrinks"])
    loss.backward()
    for name, param in model.named_parameters():
        trains = name.split(".")[0] in TRAINABLE or "temporal_merge" in name
        assert param.requires_grad == trains, name
        if trains:
            assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} got no gradient"
        else:
            assert param.grad is None, name


def test_generation_respects_length_limits(tiny_model_dir):
    model, _ = load_model_dir(tiny_model_dir)
    model.eval()
    captions = model.generate(torch.randn(3, 2, 3, 64, 64), num_beams=2, min_new_tokens=2, max_new_tokens=4)
    assert len(captions) == 3
    for caption in captions:
        assert isinstance(caption, str) and len(caption.split()) <= 4


class _SumOverTime(torch.nn.Module):
    """Pools over time but does not say where it sits (no `pools_vit_tokens`, no `uses_positions`)."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.sum(dim=1)


def test_parts_without_their_protocol_are_refused_when_put_in(tiny_model_dir):
    model, _ = load_model_dir(tiny_model_dir)
    with pytest.raises(TypeError, match="_SumOverTime is not a pool over time: it lacks parts of the TimePool"):
        model.time_pool = _SumOverTime()
    assert isinstance(model.time_pool, MeanOverTime)  # the model keeps the pool it had
    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64))
    with pytest.raises(TypeError, match="BertModel is not a connector: it lacks calls of the Connector protocol"):
        VideoCaptioner(model.vit, bert, model.lm, model.text, connector_width=32)
