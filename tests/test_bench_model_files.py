"""The model-files benchmark at toy sizes: it writes the three kinds of files, imports them, loads the result."""

from __future__ import annotations

from pathlib import Path

import torch

from simvlg_video.bench.model_files import main
from simvlg_video.model.lavis_checkpoint import read_lavis_checkpoint, reference_name
from simvlg_video.model.model_dir import load_model_dir


def test_the_tiny_benchmark_imports_and_loads_what_it_wrote(tmp_path: Path) -> None:
    figures = main(["--tiny", "--keep", "--work", str(tmp_path / "files")])
    assert {"import", "load_bf16"} <= figures.keys()
    assert all(figures[step]["seconds"] > 0 and figures[step]["peak_rss_gib"] > 0 for step in ("import", "load_bf16"))
    model, _ = load_model_dir(tmp_path / "files" / "model", dtype=torch.bfloat16)
    checkpoint = read_lavis_checkpoint(tmp_path / "files" / "simvlg_image.pth")
    for name, tensor in model.state_dict().items():
        if name.startswith(("connector.", "opt_proj.", "VL_proj.", "ln_vision.")):
            assert torch.equal(tensor, checkpoint[reference_name(name)]), name
    assert next(model.lm.parameters()).dtype == torch.bfloat16
