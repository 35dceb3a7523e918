"""What `--image-ckpt` points at, recognised from the files, and its import as a model directory.

kind           recognised by                                      frozen parts from
model_dir      a folder with model.yaml                           its own pointers
blip2_folder   a folder whose config.json says model_type blip-2  the folder itself
simvlg_pth     a torch checkpoint with VLconnector.*              vit_weights and lm_path
blip2_pth      a torch checkpoint with query_tokens / Qformer.*   lm_path, and vit_weights unless it holds
                                                                  visual_encoder.*
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from simvlg_video.formats import blip2_checkpoint, lavis_checkpoint
from simvlg_video.formats.hf_blip2 import is_blip2_folder
from simvlg_video.formats.tensor_io import NotATensorFile
from simvlg_video.model.config import load_model_config

MODEL_DIR, BLIP2_FOLDER, SIMVLG_PTH, BLIP2_PTH = "model_dir", "blip2_folder", "simvlg_pth", "blip2_pth"
DESCRIPTION = {
    MODEL_DIR: "a model directory",
    BLIP2_FOLDER: "a Hugging Face BLIP-2 folder",
    SIMVLG_PTH: "a SimVLG reference checkpoint file",
    BLIP2_PTH: "a LAVIS BLIP-2 OPT checkpoint file",
}
DEFAULT_MODEL_CONFIG = {
    SIMVLG_PTH: lavis_checkpoint.DEFAULT_MODEL_CONFIG,
    BLIP2_PTH: blip2_checkpoint.DEFAULT_MODEL_CONFIG,
}


@dataclass
class ImageCheckpoint:
    """A recognised `--image-ckpt` and which frozen parts must be given beside it."""

    path: Path
    kind: str
    holds_vit: bool = False  # a BLIP-2 .pth with visual_encoder.*

    @property
    def needs(self) -> tuple[str, ...]:
        """The frozen parts to give with it: "vit_weights", "lm_path"."""
        if self.kind == SIMVLG_PTH:
            return ("vit_weights", "lm_path")
        if self.kind == BLIP2_PTH:
            return ("lm_path",) if self.holds_vit else ("vit_weights", "lm_path")
        return ()

    @property
    def description(self) -> str:
        return DESCRIPTION[self.kind] + (" that holds its ViT" if self.holds_vit else "")


def inspect_image_checkpoint(path: str | Path) -> ImageCheckpoint:
    """Recognise `path` from its files (see the table above); anything else is an error saying what is accepted
    (messages follow the path: "PATH: message")."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir():
        if (path / "model.yaml").is_file():
            return ImageCheckpoint(path, MODEL_DIR)
        if is_blip2_folder(path):
            return ImageCheckpoint(path, BLIP2_FOLDER)
        raise NotATensorFile(
            "not a model directory (it has no model.yaml) nor a Hugging Face BLIP-2 folder (no "
            "config.json with model_type blip-2); give one written by adapt, lavis_checkpoint or "
            "blip2_checkpoint, a BLIP-2 folder, or a checkpoint file (.pth)"
        )
    state = lavis_checkpoint.read_lavis_checkpoint(path)
    if any(name.startswith("VLconnector.") for name in state):
        return ImageCheckpoint(path, SIMVLG_PTH)
    if "query_tokens" in state or any(name.startswith("Qformer.") for name in state):
        return ImageCheckpoint(path, BLIP2_PTH, blip2_checkpoint.lavis_holds_vit(state))
    raise NotATensorFile(
        f"neither a SimVLG reference checkpoint (VLconnector.* tensors) nor a LAVIS BLIP-2 OPT "
        f"checkpoint (query_tokens, Qformer.*); it holds {', '.join(sorted(state)[:6])} ..."
    )


def import_image_checkpoint(
    found: ImageCheckpoint,
    out_dir: Path,
    vit_weights: str | None,
    lm_path: str | None,
    model_config: str | None = None,
    prompt: str | None = None,
) -> Path:
    """Write a checkpoint file or a BLIP-2 folder as a model directory at `out_dir` (the caller has checked that
    exactly the frozen parts `found.needs` are given)."""
    if found.kind == BLIP2_FOLDER:
        return blip2_checkpoint.import_hf_blip2(found.path, out_dir, prompt or "")
    architecture = load_model_config(model_config or DEFAULT_MODEL_CONFIG[found.kind])
    if found.kind == BLIP2_PTH:
        return blip2_checkpoint.import_lavis_blip2(found.path, lm_path, architecture, out_dir, vit_weights, prompt)
    if found.kind == SIMVLG_PTH:
        if prompt is not None:
            architecture.lm.prompt = prompt
        return lavis_checkpoint.import_lavis_checkpoint(found.path, vit_weights, lm_path, architecture, out_dir)
    raise ValueError(f"{found.path} is {found.description}; there is nothing to import")
