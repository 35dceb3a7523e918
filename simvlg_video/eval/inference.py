"""What captioning needs besides the model: how frames are sampled and read, how captions are decoded, in which
precision; and opening a trained model (a model directory, or a run directory holding one) to caption with it.

A run writes its evaluation settings into the model directory it exports (model.yaml, `inference:`), under the keys
a run's config uses for them (`data.num_frames`, `sampler.eval`, `eval.num_beams`, `precision`, ...), so `caption`,
`evaluate` and `visualize` reproduce the captions of the run's own predictions and take the same overrides. A model
without them (an imported reference checkpoint) captions with the defaults here: the reference recipe's evaluation.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from simvlg_video.choices import ChoiceError
from simvlg_video.data.clips import FrameReading
from simvlg_video.data.dataset import ClipReading, FrameSampler
from simvlg_video.data.samplers import Head, sampler_from
from simvlg_video.data.transforms import FrameTransform
from simvlg_video.errors import SettingsError
from simvlg_video.formats.hf_blip2 import is_blip2_folder
from simvlg_video.formats.model_dir import MODEL_CONFIG, load_model_dir, read_model_config
from simvlg_video.model.captioner import VideoCaptioner
from simvlg_video.model.config import ModelConfig, ModelDirError
from simvlg_video.precision import compute_dtype, cpu_runs_bf16

log = logging.getLogger(__name__)
RUN_CONFIG = "config.yaml"
RUN_MODEL = "model"


@dataclass
class Decoding:
    """How captions are decoded, wherever a model captions: `eval:` of adapt and pretrain, a model's stored settings
    and the captioning commands. The defaults are the reference recipe's evaluation (beam 5, 5 to 20 new tokens)."""

    batch_size: int = 32  # clips captioned at once
    num_beams: int = 5
    min_new_tokens: int = 5
    max_new_tokens: int = 20

    @property
    def generation(self) -> dict[str, int]:
        """The keyword arguments of VideoCaptioner.generate."""
        return {
            "num_beams": self.num_beams,
            "min_new_tokens": self.min_new_tokens,
            "max_new_tokens": self.max_new_tokens,
        }


@dataclass
class EvalSampler:
    """`sampler:` of the inference settings: the frame sampler captioning uses, a sampler config's `eval` part."""

    eval: Any = field(default_factory=Head)  # by name (simvlg_video.data.samplers); the reference evaluates on the
    # first frame of each of data.num_frames segments


@dataclass
class InferenceConfig:
    """How a model captions: `data:` (frames and decoding), `sampler.eval`, `eval:` (decoding) and `precision`, the
    keys and defaults of a run's config."""

    data: FrameReading = field(default_factory=FrameReading)
    sampler: EvalSampler = field(default_factory=EvalSampler)
    eval: Decoding = field(default_factory=Decoding)
    precision: str = "fp32"  # fp32 | bf16 | fp16: frozen weights loaded in it, generation under its autocast

    @property
    def reading(self) -> ClipReading:
        """Every clip that decodes is captioned: skipped clips are reported, never a reason to stop."""
        return self.data.clip_reading(max_skip_fraction=1.0)

    @property
    def frame_sampler(self) -> FrameSampler:
        return sampler_from(self.sampler.eval).build()

    @property
    def generation(self) -> dict[str, int]:
        return self.eval.generation

    def transform(self, image_size: int) -> FrameTransform:
        return FrameTransform(size=image_size)


# The flat `inference:` form earlier versions stored (every setting at the top, the sampler by name): these keys only.
FLAT_FORM = {
    "num_frames": "data",
    "backend": "data",
    "decode_timeout": "data",
    "decode_memory_gib": "data",
    "max_pixels": "data",
    "num_workers": "data",
    "num_beams": "eval",
    "min_new_tokens": "eval",
    "max_new_tokens": "eval",
    "batch_size": "eval",
}


def nested_form(stored: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Stored settings in the nested form; keys of the flat form (FLAT_FORM, and a sampler given by name at
    `sampler`) move into their sections. Nothing else is translated: an unknown key is left for the schema to
    refuse by name."""
    copied = {key: dict(value) if isinstance(value, Mapping) else value for key, value in stored.items()}
    nested: dict[str, Any] = {key: value for key, value in copied.items() if key not in FLAT_FORM}
    sampler = nested.get("sampler")
    if sampler is not None and not (isinstance(sampler, Mapping) and "eval" in sampler):
        nested["sampler"] = {"eval": sampler}
    for key, section in FLAT_FORM.items():
        if key in stored:
            part = nested.setdefault(section, {})
            if isinstance(part, Mapping) and key in part:
                raise SettingsError(f"{source}: {key} and {section}.{key} are both given; keep {section}.{key}")
            if isinstance(part, dict):
                part[key] = stored[key]
    return nested


def read_inference_config(stored: Any, source: str = "inference settings") -> InferenceConfig:
    """`stored` (a model.yaml's `inference:`, in either form; None: the defaults) type-checked against
    InferenceConfig, the sampler chosen by name; a wrong key or value is a SettingsError naming `source` and it."""
    stored = OmegaConf.to_container(stored, resolve=True) if isinstance(stored, DictConfig) else stored or {}
    if not isinstance(stored, Mapping):
        raise SettingsError(f"{source}: expected a mapping of settings, got {stored!r}")
    nested = nested_form(stored, source)
    sampler = nested.pop("sampler", None) or {}
    if not isinstance(sampler, Mapping) or set(sampler) - {"eval"}:
        raise SettingsError(f"{source}: sampler: expected {{eval: {{name: ..., settings}}}}, got {sampler!r}")
    try:
        inference = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(InferenceConfig), nested))
    except OmegaConfBaseException as error:
        raise SettingsError(f"{source}: {_one_line(error)}") from None
    if "eval" in sampler:
        try:
            inference.sampler = EvalSampler(sampler_from(sampler["eval"]))
        except ChoiceError as error:
            raise SettingsError(f"{source}: sampler.eval: {error}") from None
    try:
        compute_dtype(inference.precision)
    except ValueError as error:
        raise SettingsError(f"{source}: {error}") from None
    return inference


def _one_line(error: OmegaConfBaseException) -> str:
    """An OmegaConf error as one line that names the key."""
    message = str(error).splitlines()[0]
    key = getattr(error, "full_key", None)
    return f"{key}: {message}" if key and key not in message else message


def inference_from(cfg: DictConfig) -> InferenceConfig:
    """How a config with a run's keys captions (a run's resolved config, or a captioning command's): the keys of its
    `data:`, `sampler.eval`, `eval:` and `precision` that InferenceConfig has; no sampler: the default."""
    sampler = cfg.get("sampler")
    return InferenceConfig(
        data=_part(FrameReading, cfg.data),
        sampler=EvalSampler(sampler_from(sampler.eval)) if sampler is not None else EvalSampler(),
        eval=_part(Decoding, cfg.eval),
        precision=cfg.precision,
    )


def _part(schema: type, section: Any) -> Any:
    """`schema` made from the keys of `section` it has (the rest of the section is another schema's)."""
    return schema(**{f.name: section[f.name] for f in fields(schema)})


@dataclass
class OpenedModel:
    """A model ready to caption, with its configuration and where it came from."""

    model: VideoCaptioner
    config: ModelConfig
    inference: InferenceConfig
    model_dir: Path
    run_config: Any = None  # the run's config.yaml when opened through a run directory


def find_model_dir(path: str | Path) -> tuple[Path, Path | None]:
    """(model directory, run directory or None) for a path that is either."""
    path = Path(path)
    if (path / RUN_CONFIG).is_file() and (path / RUN_MODEL / MODEL_CONFIG).is_file():
        return path / RUN_MODEL, path
    if (path / MODEL_CONFIG).is_file():
        return path, None
    if (path / RUN_CONFIG).is_file():
        raise ModelDirError(
            f"{path} is a run directory without an exported model ({path / RUN_MODEL} is missing: "
            "the run did not finish; continue it with resume=auto)"
        )
    if is_blip2_folder(path):
        raise ModelDirError(
            f"{path} is a Hugging Face BLIP-2 folder; import it as a model directory first: "
            f"python -m simvlg_video.formats.blip2_checkpoint {path} --out MODEL_DIR"
        )
    raise ModelDirError(
        f"{path} is neither a model directory ({MODEL_CONFIG}) nor a run directory ({RUN_CONFIG} and {RUN_MODEL}/)"
    )


def stored_inference(model_dir: Path) -> InferenceConfig:
    """How a model directory captions unless told otherwise (its model.yaml's `inference:`, either form); a
    model.yaml naming code is refused here, before any work."""
    config_file = model_dir / MODEL_CONFIG
    return read_inference_config(read_model_config(config_file).inference, f"{config_file}: inference")


def open_model(
    path: str | Path,
    inference: InferenceConfig | None = None,
    device: torch.device | None = None,
    keep_precision: bool = False,
) -> OpenedModel:
    """Load a model directory, or a run directory's exported model, to caption with `inference` (None: its own
    settings): frozen weights in the precision it computes in, on `device`. A bf16 model is captioned in fp32 on a
    CPU without bf16 kernels unless `keep_precision` (the command line named the precision)."""
    model_dir, run_dir = find_model_dir(path)
    inference = stored_inference(model_dir) if inference is None else inference
    if (
        (device is None or device.type == "cpu")
        and inference.precision == "bf16"
        and not keep_precision
        and not cpu_runs_bf16()
    ):
        log.info(
            "this CPU has no bf16 kernels (AVX2 only), where bf16 matmuls run several times slower than fp32: "
            "captioning in fp32 (precision=bf16 to insist)"
        )
        inference = dataclasses.replace(inference, precision="fp32")
    model, config = load_model_dir(model_dir, dtype=compute_dtype(inference.precision))
    if device is not None:
        model.to(device)
    model.eval()
    run_config = OmegaConf.load(run_dir / RUN_CONFIG) if run_dir is not None else None
    return OpenedModel(model, config, inference, model_dir, run_config)
