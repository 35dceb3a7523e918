"""Import of the reference checkpoints (LAVIS-style image/video checkpoint + BLIP-2 EVA weights + HF LLM folder) as
our model directory."""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from reference_layout import (
    IGNORED_EXTRAS,
    QK_DIM,
    TEMPORAL_HEADS,
    VIT,
    eva_vit_tensors,
    lavis_tensors,
    write_reference_files,
    write_tiny_lm,
)
from safetensors.torch import load_file, save_file

import simvlg_video.formats.model_dir as model_dir_module
from simvlg_video.adapters.patch import TemporalEvaBlock
from simvlg_video.adapters.placements import Reference
from simvlg_video.formats.lavis_checkpoint import import_lavis_checkpoint, read_lavis_checkpoint
from simvlg_video.formats.model_dir import WEIGHTS, load_model_dir, save_model_dir
from simvlg_video.formats.tensor_io import NotATensorFile, StateDictMismatch

REFERENCE_PLACEMENT = "reference"


@pytest.fixture(scope="module")
def lm_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_lm(tmp_path_factory.mktemp("lm") / "lm")


def import_files(files, out: Path | None = None, **kwargs) -> Path:
    """Import the reference files into a model directory (default: beside the checkpoint)."""
    out = files.ckpt.parent / "imported" if out is None else out
    return import_lavis_checkpoint(files.ckpt, files.vit_weights, files.lm_path, files.model_cfg, out, **kwargs)


def notes_naming(caplog: pytest.LogCaptureFixture, source: Path) -> list[str]:
    """The INFO lines that name `source` (a file or folder), its path cut out: what an import says it left unread
    is checked for the facts it must name (the file, the tensors or their count), not for its wording."""
    path = str(source.resolve())
    messages = [record.getMessage() for record in caplog.records if record.levelno == logging.INFO]
    return [message.replace(path, "<source>") for message in messages if path in message]


def names_number(note: str, number: int) -> bool:
    return re.search(rf"\b{number}\b", note) is not None


def load(files, **kwargs):
    """Import, then load the written model directory: (model, ModelConfig)."""
    return load_model_dir(import_files(files, **kwargs))


def our_name(reference_name: str) -> str:
    """The mapping the reference checkpoint's names imply, written independently of the code under test."""
    if reference_name.startswith("VLconnector."):
        return "connector." + reference_name[len("VLconnector.") :]
    if reference_name.startswith("visual_encoder."):
        return "vit." + reference_name[len("visual_encoder.") :]
    return reference_name


def rewrite_checkpoint(files, state: dict) -> None:
    torch.save({"model": state, "iters": 1}, files.ckpt)


def used_tensors(files) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors the captioner uses, under our names."""
    return {our_name(name): t for name, t in files.state.items() if name not in IGNORED_EXTRAS}


# --- loading: every tensor lands where it belongs ---


def test_image_checkpoint_loads_every_tensor_where_it_belongs(tmp_path, lm_path, caplog):
    files = write_reference_files(tmp_path, lm_path=lm_path)
    with caplog.at_level(logging.INFO):
        out = import_files(files)
    model, cfg = load_model_dir(out)
    ours = model.state_dict()
    for name, tensor in used_tensors(files).items():
        assert torch.equal(ours[name], tensor), name
    for name, tensor in files.vit_state.items():
        if not name.startswith(f"blocks.{VIT['depth']}."):
            assert torch.equal(ours[f"vit.{name}"], tensor), name
    assert all(torch.equal(block.attn.k_bias, torch.zeros(VIT["width"])) for block in model.vit.blocks)
    assert cfg.adapter is None and set(cfg.frozen) == {"vit", "lm"}
    assert Path(cfg.vit.weights) == files.vit_weights.resolve() and Path(cfg.lm.path) == lm_path.resolve()
    notes = notes_naming(caplog, files.ckpt)  # one, naming every tensor left unread
    assert len(notes) == 1 and all(name in notes[0] for name in IGNORED_EXTRAS)
    assert any(names_number(note, VIT["depth"]) for note in notes_naming(caplog, files.vit_weights))


def test_the_model_directory_stores_exactly_the_checkpoints_tensors(tmp_path, lm_path):
    """weights.safetensors: the checkpoint's used tensors bit for bit under our names, nothing of the frozen parts."""
    files = write_reference_files(tmp_path, temporal_blocks=[0, 2], lm_path=lm_path)
    stored = load_file(import_files(files, temporal_heads=TEMPORAL_HEADS) / WEIGHTS)
    expected = used_tensors(files)
    assert stored.keys() == expected.keys()
    assert all(torch.equal(stored[name], tensor) for name, tensor in expected.items())
    assert not any(name.startswith("lm.") for name in stored)
    assert all(".temporal_merge." in name for name in stored if name.startswith("vit."))


def test_prefixed_vit_weights_and_a_bare_state_dict_load(tmp_path, lm_path):
    files = write_reference_files(tmp_path, vit_prefix=True, bare_state_dict=True, extras=False, lm_path=lm_path)
    model, _ = load(files)
    expected = files.vit_state["visual_encoder.blocks.2.attn.v_bias"]
    assert torch.equal(model.vit.blocks[2].attn.v_bias, expected)
    assert torch.equal(model.opt_proj.weight, files.state["opt_proj.weight"])


# --- importing checks names and shapes; it builds nothing real ---


def test_import_does_not_need_the_llm_weights(tmp_path, lm_path):
    """Only the LLM folder's config and tokenizer are read: with its weight file absent the import still succeeds
    (a real build would fail to load it), and the directory holds the checkpoint's tensors."""
    skeleton = tmp_path / "lm_without_weights"
    skeleton.mkdir()
    for file in lm_path.iterdir():
        if file.suffix not in (".safetensors", ".bin"):
            shutil.copy(file, skeleton / file.name)
    assert (skeleton / "config.json").is_file() and not list(skeleton.glob("*.safetensors"))
    files = write_reference_files(tmp_path / "ref", lm_path=skeleton)
    stored = load_file(import_files(files) / WEIGHTS)
    expected = used_tensors(files)
    assert stored.keys() == expected.keys()
    assert all(torch.equal(stored[name], tensor) for name, tensor in expected.items())


# How a real build would make a tensor: a factory, or an initialiser filling one in place (reading a file mmaps it).
_MAKERS = {
    "empty",
    "zeros",
    "ones",
    "full",
    "rand",
    "randn",
    "empty_like",
    "zeros_like",
    "ones_like",
    "normal_",
    "uniform_",
    "fill_",
    "zero_",
    "copy_",
}


class CpuTensorsMade(torch.overrides.TorchFunctionMode):
    """Records the shape of every CPU floating-point tensor a factory or initialiser makes while active."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if (
            getattr(func, "__name__", "") in _MAKERS
            and isinstance(result, torch.Tensor)
            and result.device.type == "cpu"
            and result.is_floating_point()
            and result.numel() > 0
        ):
            self.shapes.append(tuple(result.shape))
        return result


def test_import_loads_no_frozen_weights_and_makes_no_model_tensor(tmp_path, lm_path, monkeypatch):
    """The captioner is built on the meta device only: loading the LLM or the ViT weights is an error here, and no
    tensor of any module's shape is made on the CPU (a real build makes and initialises every one)."""
    files = write_reference_files(tmp_path, temporal_blocks=[1], lm_path=lm_path)

    def refuse(*args, **kwargs):
        raise AssertionError("the import loaded frozen weights")

    monkeypatch.setattr(model_dir_module, "read_frozen_lm", refuse)
    monkeypatch.setattr(model_dir_module, "load_vit_weights", refuse)
    with CpuTensorsMade() as made:
        out = import_files(files, temporal_heads=TEMPORAL_HEADS)
    assert made.shapes == []
    assert load_file(out / WEIGHTS).keys() == used_tensors(files).keys()

    # The recorder does see a real build (the check above can fail).
    monkeypatch.undo()
    with CpuTensorsMade() as made:
        load_model_dir(out)
    assert (VIT["mlp"], VIT["width"]) in made.shapes and (3 * VIT["width"], VIT["width"]) in made.shapes


# --- refusals that name the tensors ---


def test_a_renamed_tensor_is_named_both_ways(tmp_path, lm_path):
    files = write_reference_files(tmp_path, lm_path=lm_path)
    state = dict(files.state)
    old = "VLconnector.encoder.layer.1.attention.self.query.weight"
    state[old.replace("query", "qry")] = state.pop(old)
    rewrite_checkpoint(files, state)
    with pytest.raises(StateDictMismatch) as error:
        import_files(files)
    assert error.value.missing == [old]
    assert error.value.unexpected == [old.replace("query", "qry")]
    assert str(files.ckpt) in str(error.value)
    assert not (tmp_path / "imported").exists()  # nothing is written for a refused checkpoint


def test_a_dropped_tensor_is_named(tmp_path, lm_path):
    files = write_reference_files(tmp_path, lm_path=lm_path)
    state = dict(files.state)
    del state["ln_vision.bias"]
    rewrite_checkpoint(files, state)
    with pytest.raises(StateDictMismatch, match=r"missing: ln_vision\.bias"):
        import_files(files)


def test_a_dropped_vit_tensor_is_named_with_the_vit_file(tmp_path, lm_path):
    files = write_reference_files(tmp_path, lm_path=lm_path)
    vit = eva_vit_tensors(VIT["depth"])
    del vit["blocks.1.attn.v_bias"]
    torch.save(vit, files.vit_weights)
    with pytest.raises(StateDictMismatch, match=r"missing: blocks\.1\.attn\.v_bias") as error:
        import_files(files)
    assert str(files.vit_weights) in str(error.value)


def test_a_mis_shaped_vit_tensor_is_named_with_both_shapes(tmp_path, lm_path):
    files = write_reference_files(tmp_path, lm_path=lm_path)
    vit = eva_vit_tensors(VIT["depth"])
    vit["blocks.0.mlp.fc1.weight"] = torch.zeros(VIT["mlp"] // 2, VIT["width"])
    torch.save(vit, files.vit_weights)
    with pytest.raises(StateDictMismatch) as error:
        import_files(files)
    assert (
        f"blocks.0.mlp.fc1.weight (expected ({VIT['mlp']}, {VIT['width']}), found ({VIT['mlp'] // 2}, "
        f"{VIT['width']}))" in str(error.value)
    )


def test_a_checkpoint_for_a_wider_llm_names_tensors_and_both_shapes(tmp_path, lm_path):
    """Like an OPT-6.7B checkpoint (width 4096) with an OPT-2.7B LLM (2560), at tiny widths 80 vs 40."""
    files = write_reference_files(tmp_path, lm_path=lm_path, extras=False)
    rewrite_checkpoint(files, lavis_tensors(lm_width=80))
    with pytest.raises(StateDictMismatch) as error:
        import_files(files)
    message = str(error.value)
    assert "opt_proj.weight (expected (40, 24), found (80, 24))" in message
    assert "opt_proj.bias (expected (40,), found (80,))" in message
    assert "an LLM of width 40" in message and not error.value.missing and not error.value.unexpected


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: p.write_text("not a checkpoint"), r"not a torch checkpoint: it starts with b'not a ch'"),
        (lambda p: save_file({"a": torch.zeros(2)}, p), "is a safetensors file"),
        (lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
        (lambda p: p.write_bytes(b"PK\x03\x04" + b"\x00" * 60), "is not a torch checkpoint"),
        (lambda p: torch.save({"epoch": 3, "iters": 10}, p), r"holds a dict with keys \['epoch', 'iters'\]"),
        (lambda p: torch.save({"model": {"a": torch.zeros(2), "b": 3}}, p), r"not tensors: \['b'\]"),
        (lambda p: torch.save([torch.zeros(2)], p), "holds a list"),
    ],
)
def test_files_that_are_not_reference_checkpoints_are_explained(tmp_path, write, message):
    path = tmp_path / "ckpt.pth"
    write(path)
    with pytest.raises(NotATensorFile, match=message) as error:
        read_lavis_checkpoint(path)
    assert str(path) in str(error.value)
    assert "one of our model directories (model.yaml + weights.safetensors)" in str(error.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope.pth"):
        read_lavis_checkpoint(tmp_path / "nope.pth")


def test_pickled_objects_are_never_unpickled_and_the_message_says_what_to_do(tmp_path, lm_path):
    """The reference's own checkpoints pickle their config object: unpickling it could run code the file names, so
    the file is refused, whoever wrote it; re-saving its tensors, as the message says, imports it."""
    files = write_reference_files(tmp_path, lm_path=lm_path)
    torch.save({"model": files.state, "config": OmegaConf.create({"run": {"lr": 1e-4}})}, files.ckpt)
    with pytest.raises(NotATensorFile, match=r"omegaconf\.dictconfig\.DictConfig.*never unpickles.*load it yourself"):
        import_files(files)
    assert not (tmp_path / "imported").exists()
    torch.save({"model": torch.load(files.ckpt, weights_only=False)["model"]}, files.ckpt)  # the user's own step
    model, _ = load(files)
    assert torch.equal(model.ln_vision.weight, files.state["ln_vision.weight"])


# --- video checkpoints ---


@pytest.mark.parametrize("alpha_shape", [(), (1,)])
def test_video_checkpoint_gets_adapters_in_exactly_its_blocks(tmp_path, lm_path, alpha_shape):
    files = write_reference_files(tmp_path, temporal_blocks=[1, 2], alpha_shape=alpha_shape, lm_path=lm_path)
    model, cfg = load(files, temporal_heads=TEMPORAL_HEADS)
    assert [type(b) is TemporalEvaBlock for b in model.vit.blocks] == [False, True, True]
    module = model.vit.blocks[2].temporal_merge
    assert (module.qk_dim, module.num_heads) == (QK_DIM, TEMPORAL_HEADS)
    assert (
        module.alpha.shape == ()
        and module.alpha.item() == files.state["visual_encoder.blocks.2.temporal_merge.alpha"].item()
    )
    assert torch.equal(module.key.weight, files.state["visual_encoder.blocks.2.temporal_merge.key.weight"])
    assert cfg.adapter == asdict(Reference(blocks=[1, 2], qk_dim=QK_DIM, num_heads=TEMPORAL_HEADS))


def test_video_checkpoint_with_every_block_says_all(tmp_path, lm_path):
    files = write_reference_files(tmp_path, temporal_blocks=list(range(VIT["depth"])), lm_path=lm_path)
    model, cfg = load(files, temporal_heads=TEMPORAL_HEADS)
    assert cfg.adapter["name"] == REFERENCE_PLACEMENT and cfg.adapter["blocks"] == "all"
    assert all(type(b) is TemporalEvaBlock for b in model.vit.blocks)


def test_video_checkpoint_without_a_head_count_gets_the_references_eight(tmp_path, lm_path):
    """The file does not record the heads; the reference's module has 8 (QK_DIM 16 = 8 heads of 2)."""
    files = write_reference_files(tmp_path, temporal_blocks=[0], lm_path=lm_path)
    model, cfg = load(files)
    assert cfg.adapter["num_heads"] == 8 and model.vit.blocks[0].temporal_merge.num_heads == 8


def test_video_checkpoint_with_a_partial_temporal_module_names_what_is_missing(tmp_path, lm_path):
    files = write_reference_files(tmp_path, temporal_blocks=[1, 2], lm_path=lm_path)
    state = dict(files.state)
    del state["visual_encoder.blocks.2.temporal_merge.query.bias"]
    rewrite_checkpoint(files, state)
    with pytest.raises(StateDictMismatch, match=r"missing: visual_encoder\.blocks\.2\.temporal_merge\.query\.bias"):
        import_files(files, temporal_heads=TEMPORAL_HEADS)


# --- our own format: import -> export -> import ---


@pytest.mark.parametrize("temporal_blocks", [[], [0, 2]])
def test_import_export_import_is_bit_exact(tmp_path, lm_path, temporal_blocks):
    files = write_reference_files(tmp_path / "ref", temporal_blocks=temporal_blocks, vit_prefix=True, lm_path=lm_path)
    imported = import_files(files, tmp_path / "imported", temporal_heads=TEMPORAL_HEADS)
    model, cfg = load_model_dir(imported)
    save_model_dir(model, cfg, tmp_path / "exported", base_dir=imported)
    loaded, loaded_cfg = load_model_dir(tmp_path / "exported")
    expected, actual = model.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    assert loaded_cfg.vit.weights == str(files.vit_weights.resolve())
    assert loaded_cfg.adapter == cfg.adapter and loaded_cfg.frozen == cfg.frozen
    assert (tmp_path / "exported" / WEIGHTS).read_bytes() == (imported / WEIGHTS).read_bytes()
