"""The model-files benchmark at toy sizes: it writes the three kinds of files, imports them, loads the result."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from simvlg_video.bench.model_files import main
from simvlg_video.errors import InputError
from simvlg_video.formats.lavis_checkpoint import read_lavis_checkpoint, reference_name
from simvlg_video.formats.model_dir import load_model_dir


def test_the_tiny_benchmark_imports_and_loads_what_it_wrote(tmp_path: Path) -> None:
    figures = main(["--tiny", "--keep", "--work", str(tmp_path / "files")])
    assert {"import", "load_bf16"} <= figures.keys()
    assert all(figures[step]["peak_rss_gib"] > 0 for step in ("import", "load_bf16"))  # each child reported its peak
    model, _ = load_model_dir(tmp_path / "files" / "model", dtype=torch.bfloat16)
    checkpoint = read_lavis_checkpoint(tmp_path / "files" / "simvlg_image.pth")
    for name, tensor in model.state_dict().items():
        if name.startswith(("connector.", "opt_proj.", "VL_proj.", "ln_vision.")):
            assert torch.equal(tensor, checkpoint[reference_name(name)]), name
    assert next(model.lm.parameters()).dtype == torch.bfloat16


def test_the_tiny_blip2_benchmark_imports_and_loads_the_folder(tmp_path: Path) -> None:
    """`--source blip2`: a Hugging Face BLIP-2 folder written in fp16 shards, imported, loaded; the model directory
    stores the Q-Former's tensors and reads the ViT and the LLM from the folder."""
    from simvlg_video.formats.hf_blip2 import folder_tensors

    figures = main(["--tiny", "--keep", "--source", "blip2", "--work", str(tmp_path / "files")])
    assert all(figures[step]["peak_rss_gib"] > 0 for step in ("import", "load_bf16"))  # each child reported its peak
    folder = tmp_path / "files" / "blip2-opt-2.7b"
    assert len(list(folder.glob("model-*-of-*.safetensors"))) >= 1
    model, cfg = load_model_dir(tmp_path / "files" / "model", dtype=torch.bfloat16)
    assert cfg.vit.weights == cfg.lm.path == str(folder.resolve())
    tensors = folder_tensors(folder)
    assert torch.equal(model.connector.query_tokens, tensors["query_tokens"].float())
    assert torch.equal(
        model.lm.model.decoder.embed_tokens.weight,
        tensors["language_model.model.decoder.embed_tokens.weight"].to(torch.bfloat16),
    )
    assert next(model.vit.parameters()).dtype == torch.bfloat16


def test_the_benchmark_removes_only_what_it_wrote(tmp_path: Path) -> None:
    """--work DIR may hold the user's files: they stay, and one in the way of the benchmark's is refused, not
    overwritten."""
    work = tmp_path / "files"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    main(["--tiny", "--work", str(work)])
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"]
    assert (work / "notes.txt").read_text() == "mine"

    (work / "opt-2.7b").mkdir()
    (work / "opt-2.7b" / "config.json").write_text("{}")
    with pytest.raises(InputError, match=r"opt-2.7b exists and was not written by this benchmark"):
        main(["--tiny", "--work", str(work)])
    assert (work / "opt-2.7b" / "config.json").read_text() == "{}" and (work / "notes.txt").is_file()
