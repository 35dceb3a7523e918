"""Import of BLIP-2 OPT checkpoints (a Hugging Face folder, a LAVIS blip2_opt .pth) as our model directory: every
tensor where it belongs, frozen parts read in place, strict refusals that name the tensor as the source spells it."""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from blip2_layout import QFORMER, VISION, lavis_extras
from safetensors.torch import load_file, save_file
from test_lavis_checkpoint import CpuTensorsMade, names_number, notes_naming

import simvlg_video.formats.model_dir as model_dir_module
from simvlg_video.formats.blip2_checkpoint import import_hf_blip2, import_lavis_blip2
from simvlg_video.formats.fingerprint import FrozenSourceChanged
from simvlg_video.formats.image_checkpoint import BLIP2_FOLDER, BLIP2_PTH, SIMVLG_PTH, inspect_image_checkpoint
from simvlg_video.formats.lavis_checkpoint import import_lavis_checkpoint
from simvlg_video.formats.model_dir import WEIGHTS, load_model_dir
from simvlg_video.formats.tensor_io import NotATensorFile, StateDictMismatch
from simvlg_video.model.config import load_model_config
from simvlg_video.model.qformer import QFormerConnector

# Our stored names -> the Hugging Face folder's, written out from REFERENCE.md section 9.
HF_PREFIXES = {
    "ln_vision.": "vision_model.post_layernorm.",
    "connector.query_tokens": "query_tokens",
    "connector.qformer.": "qformer.",
    "opt_proj.": "language_projection.",
}


def hf_name(ours: str) -> str:
    prefix = next(p for p in HF_PREFIXES if ours.startswith(p))
    return HF_PREFIXES[prefix] + ours[len(prefix) :]


def copy_folder(files, tmp_path: Path) -> Path:
    return Path(shutil.copytree(files.folder, tmp_path / "blip2-hf"))


def rewrite_weights(folder: Path, change) -> None:
    """Apply `change` to the folder's tensors (a dict) and write them back."""
    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def edit_config(folder: Path, part: str, **values) -> None:
    config = json.loads((folder / "config.json").read_text())
    config[part].update(values)
    (folder / "config.json").write_text(json.dumps(config))


# --- the Hugging Face folder ---


def test_a_folder_import_stores_exactly_the_parts_that_train(blip2_files, blip2_model_dirs):
    stored = load_file(blip2_model_dirs["hf"] / WEIGHTS)
    assert {name.split(".")[0] for name in stored} == {"ln_vision", "connector", "opt_proj"}
    assert len(stored) == 2 + 1 + 2 + sum(1 for name in blip2_files.hf_state if name.startswith("qformer."))
    for name, tensor in stored.items():
        assert torch.equal(tensor, blip2_files.hf_state[hf_name(name)]), name


def test_a_folder_import_reads_the_frozen_parts_from_the_folder(blip2_files, blip2_model_dirs):
    model, cfg = load_model_dir(blip2_model_dirs["hf"])
    folder = str(blip2_files.folder.resolve())
    assert cfg.vit.weights == folder and cfg.lm.path == folder and set(cfg.frozen) == {"vit", "lm"}
    assert cfg.connector.kind == "qformer" and cfg.connector.num_query_tokens == QFORMER["queries"]
    assert cfg.ln_vision_eps == 1e-6 and model.ln_vision.eps == 1e-6 and cfg.image_size == VISION["image"]
    assert isinstance(model.connector, QFormerConnector) and isinstance(model.VL_proj, torch.nn.Identity)
    hf = blip2_files.hf_state
    layer = "vision_model.encoder.layers.2."
    q_bias, k_bias, v_bias = hf[layer + "self_attn.qkv.bias"].chunk(3)
    block = model.vit.blocks[2]
    assert torch.equal(block.attn.q_bias, q_bias) and torch.equal(block.attn.v_bias, v_bias)
    assert not k_bias.any() and not block.attn.k_bias.any()
    assert torch.equal(block.attn.proj.weight, hf[layer + "self_attn.projection.weight"])
    assert torch.equal(model.vit.pos_embed, hf["vision_model.embeddings.position_embedding"])
    assert torch.equal(model.vit.cls_token, hf["vision_model.embeddings.class_embedding"])
    lm = model.lm.state_dict()
    for name, tensor in hf.items():
        if name.startswith("language_model."):
            assert torch.equal(lm[name[len("language_model.") :]], tensor), name
    assert model.lm.lm_head.weight is model.lm.model.decoder.embed_tokens.weight  # tied, as transformers ties it
    assert not model.lm.training


def test_a_folder_import_builds_nothing_and_reads_no_frozen_weights(blip2_files, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the import loaded frozen weights")

    monkeypatch.setattr(model_dir_module, "read_frozen_lm", refuse)
    monkeypatch.setattr(model_dir_module, "load_vit_weights", refuse)
    with CpuTensorsMade() as made:
        import_hf_blip2(blip2_files.folder, tmp_path / "imported")
    assert made.shapes == []


def test_a_folder_may_hold_the_tied_head_and_the_qformers_text_side(blip2_files, tmp_path, caplog):
    """Older exports store the tied output head; BLIP-2's Q-Former may keep its text feed-forward: both are left
    unread, each with a log line."""
    folder = copy_folder(blip2_files, tmp_path)
    hidden, inner = QFORMER["hidden"], QFORMER["intermediate"]

    def add(tensors):
        tensors["language_model.lm_head.weight"] = torch.randn_like(
            tensors["language_model.model.decoder.embed_tokens.weight"]
        )
        tensors["qformer.encoder.layer.0.intermediate.dense.weight"] = torch.randn(inner, hidden)
        tensors["qformer.encoder.layer.0.output.LayerNorm.bias"] = torch.randn(hidden)

    rewrite_weights(folder, add)
    with caplog.at_level(logging.INFO):
        model, _ = load_model_dir(import_hf_blip2(folder, tmp_path / "imported"))
    notes = notes_naming(caplog, folder)  # one for the two Q-Former tensors, one for the head, each naming the folder
    assert any(names_number(note, 2) for note in notes) and any("language_model.lm_head.weight" in n for n in notes)
    embedding = blip2_files.hf_state["language_model.model.decoder.embed_tokens.weight"]
    assert torch.equal(model.lm.lm_head.weight, embedding)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            lambda t: t.pop("qformer.encoder.layer.1.attention.output.dense.bias"),
            r"missing: qformer\.encoder\.layer\.1\.attention\.output\.dense\.bias",
        ),
        (
            lambda t: t.update({"qformer.encoder.layer.1.crossattention.attention.key.weight": torch.zeros(24, 32)}),
            r"unexpected: qformer\.encoder\.layer\.1\.crossattention\.attention\.key\.weight",
        ),
        (
            lambda t: t.update({"language_projection.weight": torch.zeros(40, 20)}),
            r"wrong shape: language_projection\.weight \(expected \(40, 24\), found \(40, 20\)\)",
        ),
        (
            lambda t: t.pop("vision_model.encoder.layers.1.self_attn.qkv.bias"),
            r"missing: vision_model\.encoder\.layers\.1\.self_attn\.qkv\.bias",
        ),
        (
            lambda t: t.pop("language_model.model.decoder.final_layer_norm.weight"),
            r"missing: language_model\.model\.decoder\.final_layer_norm\.weight",
        ),
    ],
)
def test_a_folder_that_does_not_fit_is_refused_naming_the_tensor(blip2_files, tmp_path, change, named):
    folder = copy_folder(blip2_files, tmp_path)
    rewrite_weights(folder, change)
    with pytest.raises(StateDictMismatch, match=named) as error:
        import_hf_blip2(folder, tmp_path / "imported")
    assert str(folder) in str(error.value) and not (tmp_path / "imported").exists()


def test_a_k_bias_is_refused(blip2_files, tmp_path):
    folder = copy_folder(blip2_files, tmp_path)
    rewrite_weights(folder, lambda t: t["vision_model.encoder.layers.0.self_attn.qkv.bias"].add_(0.5))
    with pytest.raises(ValueError, match=r"layers\.0\.self_attn\.qkv\.bias has a non-zero k bias"):
        import_hf_blip2(folder, tmp_path / "imported")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"layer_norm_eps": 1e-5}, "vision_config.layer_norm_eps is 1e-05; EVA's blocks use 1e-06"),
        ({"hidden_act": "quick_gelu"}, "vision_config.hidden_act is 'quick_gelu'"),
        ({"qkv_bias": False}, "vision_config.qkv_bias is false"),
    ],
)
def test_a_vision_config_our_vit_does_not_compute_is_refused(blip2_files, tmp_path, values, message):
    folder = copy_folder(blip2_files, tmp_path)
    edit_config(folder, "vision_config", **values)
    with pytest.raises(ValueError, match=message) as error:
        import_hf_blip2(folder, tmp_path / "imported")
    assert str(folder / "config.json") in str(error.value)


def test_a_folder_without_a_tokenizer_is_refused(blip2_files, tmp_path):
    folder = copy_folder(blip2_files, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(FileNotFoundError, match="has no tokenizer"):
        import_hf_blip2(folder, tmp_path / "imported")


def test_loading_notices_a_changed_folder(blip2_files, tmp_path):
    folder = copy_folder(blip2_files, tmp_path)
    out = import_hf_blip2(folder, tmp_path / "imported")
    rewrite_weights(folder, lambda t: t["vision_model.embeddings.class_embedding"].mul_(2))
    with pytest.raises(FrozenSourceChanged, match=r"model.safetensors"):
        load_model_dir(out)


# --- the LAVIS checkpoint ---


def test_a_lavis_import_stores_the_checkpoints_tensors_under_our_names(blip2_files, blip2_model_dirs, caplog):
    stored = load_file(blip2_model_dirs["lavis"] / WEIGHTS)
    hf_stored = load_file(blip2_model_dirs["hf"] / WEIGHTS)
    assert stored.keys() == hf_stored.keys()
    assert all(torch.equal(stored[name], hf_stored[name]) for name in stored)
    lavis = blip2_files.lavis_state
    assert torch.equal(stored["connector.qformer.layernorm.weight"], lavis["Qformer.bert.embeddings.LayerNorm.weight"])
    assert torch.equal(
        stored["connector.qformer.encoder.layer.2.crossattention.attention.value.bias"],
        lavis["Qformer.bert.encoder.layer.2.crossattention.self.value.bias"],
    )
    assert torch.equal(
        stored["connector.qformer.encoder.layer.1.output_query.dense.weight"],
        lavis["Qformer.bert.encoder.layer.1.output_query.dense.weight"],
    )
    with caplog.at_level(logging.INFO):
        import_lavis_blip2(
            blip2_files.ckpt,
            blip2_files.lm_path,
            blip2_files.model_cfg,
            blip2_files.ckpt.parent / "again",
            vit_weights=blip2_files.vit_weights,
        )
    assert any(names_number(note, len(lavis_extras())) for note in notes_naming(caplog, blip2_files.ckpt))


def test_a_lavis_checkpoint_that_holds_its_vit_is_its_own_vit_source(blip2_files, blip2_model_dirs):
    model, cfg = load_model_dir(blip2_model_dirs["lavis_with_vit"])
    assert cfg.vit.weights == str(blip2_files.ckpt_with_vit.resolve())
    assert torch.equal(
        model.vit.blocks[1].mlp.fc2.weight, blip2_files.hf_state["vision_model.encoder.layers.1.mlp.fc2.weight"]
    )


def test_the_vit_weights_are_given_exactly_when_the_checkpoint_has_none(blip2_files, tmp_path):
    files = blip2_files
    with pytest.raises(ValueError, match="holds no ViT"):
        import_lavis_blip2(files.ckpt, files.lm_path, files.model_cfg, tmp_path / "a")
    with pytest.raises(ValueError, match="holds its ViT"):
        import_lavis_blip2(
            files.ckpt_with_vit, files.lm_path, files.model_cfg, tmp_path / "b", vit_weights=files.vit_weights
        )


def test_a_lavis_checkpoint_that_does_not_fit_is_named_as_lavis_spells_it(blip2_files, tmp_path):
    files = blip2_files
    state = dict(files.lavis_state)
    old = "Qformer.bert.encoder.layer.0.crossattention.self.key.weight"
    state[old.replace(".self.", ".attn.")] = state.pop(old)
    torch.save({"model": state}, tmp_path / "renamed.pth")
    with pytest.raises(StateDictMismatch) as error:
        import_lavis_blip2(
            tmp_path / "renamed.pth", files.lm_path, files.model_cfg, tmp_path / "out", vit_weights=files.vit_weights
        )
    assert error.value.missing == [old] and error.value.unexpected == [old.replace(".self.", ".attn.")]


def test_the_architecture_must_be_a_qformer(blip2_files, tmp_path):
    with pytest.raises(ValueError, match=r"needs connector.kind qformer"):
        import_lavis_blip2(
            blip2_files.ckpt,
            blip2_files.lm_path,
            load_model_config("simvlg_opt2.7b"),
            tmp_path / "o",
            vit_weights=blip2_files.vit_weights,
        )
    with pytest.raises(ValueError, match=r"needs connector.kind tome"):
        import_lavis_checkpoint(
            blip2_files.ckpt,
            blip2_files.vit_weights,
            blip2_files.lm_path,
            load_model_config("blip2_opt2.7b"),
            tmp_path / "p",
        )


def test_an_architecture_that_does_not_fit_names_both_shapes(blip2_files, tmp_path):
    """BLIP-2 OPT-2.7B's architecture against the tiny files: the ViT is named first, as the file spells it; a
    Q-Former of another width is named with the checkpoint's names."""
    shapes = r"visual_encoder\.blocks\.0\.attn\.qkv\.weight \(expected \(4224, 1408\), found \(96, 32\)\)"
    with pytest.raises(StateDictMismatch, match=shapes):
        import_lavis_blip2(
            blip2_files.ckpt_with_vit, blip2_files.lm_path, load_model_config("blip2_opt2.7b"), tmp_path / "o"
        )
    wider = copy.deepcopy(blip2_files.model_cfg)
    wider.connector.hidden_size = 32
    with pytest.raises(StateDictMismatch, match=r"a Q-Former of width 32 with 6 queries") as error:
        import_lavis_blip2(blip2_files.ckpt_with_vit, blip2_files.lm_path, wider, tmp_path / "o")
    assert "Qformer.bert.embeddings.LayerNorm.weight (expected (32,), found (24,))" in str(error.value)


# --- recognising what --image-ckpt points at ---


def test_the_kind_is_recognised_from_the_files(blip2_files, tiny_model_dir, tmp_path):
    from reference_layout import write_reference_files

    assert inspect_image_checkpoint(blip2_files.folder).kind == BLIP2_FOLDER
    found = inspect_image_checkpoint(blip2_files.ckpt)
    assert (found.kind, found.needs) == (BLIP2_PTH, ("vit_weights", "lm_path"))
    found = inspect_image_checkpoint(blip2_files.ckpt_with_vit)
    assert (found.kind, found.needs) == (BLIP2_PTH, ("lm_path",))
    reference = write_reference_files(tmp_path / "reference", lm_path=tiny_model_dir / "lm")
    assert inspect_image_checkpoint(reference.ckpt).kind == SIMVLG_PTH
    torch.save({"model": {"something.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(NotATensorFile, match="neither a SimVLG reference checkpoint"):
        inspect_image_checkpoint(tmp_path / "other.pth")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text(json.dumps({"model_type": "opt"}))
    with pytest.raises(NotATensorFile, match="nor a Hugging Face BLIP-2 folder"):
        inspect_image_checkpoint(tmp_path / "folder")
