"""What captioning needs besides the model: how frames are sampled and read, how captions are decoded, in which
precision; and opening a trained model (a model directory, or a run directory holding one) to caption with it.

A run writes its evaluation settings into the model directory it exports (model.yaml, `inference:`), so `caption`,
`evaluate` and `visualize` reproduce the captions of the run's own predictions; a model without them (an imported
reference checkpoint) captions with the reference recipe's evaluation settings, the defaults below. The frame sampler
is stored and overridden by name (`sampler=uniform`, `sampler=fps sampler.rate=4`: simvlg_video.data.samplers).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from simvlg_video.choices import ChoiceError
from simvlg_video.data.dataset import ClipReading, FrameSampler
from simvlg_video.data.limits import DEFAULT_DECODE_MEMORY_GIB, DEFAULT_DECODE_TIMEOUT, DEFAULT_MAX_PIXELS
from simvlg_video.data.samplers import Head, NamedSampler, sampler_from
from simvlg_video.data.transforms import FrameTransform
from simvlg_video.formats.hf_blip2 import is_blip2_folder
from simvlg_video.formats.model_dir import MODEL_CONFIG, load_model_dir, read_model_config
from simvlg_video.model.captioner import VideoCaptioner
from simvlg_video.model.config import ModelConfig, ModelDirError
from simvlg_video.precision import compute_dtype, cpu_runs_bf16

log = logging.getLogger(__name__)
RUN_CONFIG = "config.yaml"
RUN_MODEL = "model"


@dataclass
class InferenceConfig:
    """How a model captions; the defaults are the reference recipe's evaluation (4 frames, the
    first of each segment, beam 5, 5 to 20 new tokens)."""

    num_frames: int = 4
    sampler: Any = field(default_factory=Head)  # the frame sampler by name (simvlg_video.data.samplers), deterministic
    # in evaluation: the first frame of each of num_frames segments
    backend: str = "auto"  # decoder: auto | decord | pyav | nvdec
    decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT  # seconds one decode may take before the clip is
    # reported and skipped
    decode_memory_gib: float | None = DEFAULT_DECODE_MEMORY_GIB  # address space of the decode process
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # the largest image or video frame (width x height)
    num_beams: int = 5
    min_new_tokens: int = 5
    max_new_tokens: int = 20
    batch_size: int = 32
    num_workers: int = 2
    precision: str = "fp32"  # fp32 | bf16 | fp16: frozen weights loaded in it, generation under its autocast

    @property
    def reading(self) -> ClipReading:
        """Every clip that decodes is captioned: skipped clips are reported, never a reason to stop."""
        return ClipReading(
            self.num_frames,
            self.backend,
            self.decode_timeout,
            max_skip_fraction=1.0,
            max_pixels=self.max_pixels,
            decode_memory_gib=self.decode_memory_gib,
        )

    @property
    def frame_sampler(self) -> FrameSampler:
        chosen = self.sampler if isinstance(self.sampler, NamedSampler) else sampler_from(self.sampler)
        return chosen.build()

    @property
    def generation(self) -> dict[str, int]:
        return {
            "num_beams": self.num_beams,
            "min_new_tokens": self.min_new_tokens,
            "max_new_tokens": self.max_new_tokens,
        }

    def transform(self, image_size: int) -> FrameTransform:
        return FrameTransform(size=image_size)


def split_settings(argv: list[str]) -> tuple[list[str], list[str]]:
    """(`key=value` inference settings, the other arguments): a setting is an argument whose key is a field of
    InferenceConfig (or a setting of one, `sampler.rate`), wherever it stands on the command line."""
    names = {f.name for f in fields(InferenceConfig)}
    settings = [argument for argument in argv if "=" in argument and argument.partition("=")[0].split(".")[0] in names]
    return settings, [argument for argument in argv if argument not in settings]


def read_inference_config(stored: Any, overrides: Sequence[str] = (), source: str = "") -> InferenceConfig:
    """`stored` (a model.yaml's `inference:`, None for the defaults) with `key=value` overrides, type-checked; the
    sampler is chosen by name from the registry (`sampler=NAME` picks another at its defaults, `sampler.KEY=VALUE`
    changes one of its settings)."""
    stored = OmegaConf.to_container(stored) if isinstance(stored, DictConfig) else stored or {}
    if not isinstance(stored, Mapping):
        raise ValueError(f"{source or 'inference settings'}: expected a mapping of settings, got {stored!r}")
    stored = dict(stored)
    sampler = stored.pop("sampler", None)
    of_sampler = [item for item in overrides if item.partition("=")[0].split(".")[0] == "sampler"]
    try:
        merged = OmegaConf.merge(
            OmegaConf.structured(InferenceConfig),
            stored,
            OmegaConf.from_dotlist([item for item in overrides if item not in of_sampler]),
        )
        inference = OmegaConf.to_object(merged)
        inference.sampler = sampler_from(_sampler_settings(sampler, of_sampler))
        return inference
    except ChoiceError as error:
        raise ValueError(f"{source or 'inference settings'}: sampler: {error}") from None
    except OmegaConfBaseException as error:
        known = ", ".join(f.name for f in fields(InferenceConfig))
        raise ValueError(
            f"{source or 'inference settings'}: {str(error).splitlines()[0]} (settings: {known})"
        ) from None


def _sampler_settings(stored: Any, overrides: list[str]) -> Any:
    """The stored sampler settings (None: the default) with `sampler=...` and `sampler.KEY=...` applied in order."""
    settings = asdict(InferenceConfig().sampler) if stored is None else stored
    for item in overrides:
        given = OmegaConf.to_container(OmegaConf.from_dotlist([item]))["sampler"]
        if item.partition("=")[0] == "sampler":
            settings = given
        elif isinstance(settings, str | Mapping):  # anything else is refused by name, below
            settings = {**({"name": settings} if isinstance(settings, str) else settings), **given}
    return settings


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


def open_model(path: str | Path, overrides: list[str] = (), device: torch.device | None = None) -> OpenedModel:
    """Load a model directory, or a run directory's exported model, for captioning: frozen weights in the
    precision it computes in, on `device`."""
    model_dir, run_dir = find_model_dir(path)
    config_file = model_dir / MODEL_CONFIG
    stored = read_model_config(config_file).inference  # a model.yaml naming code is refused here, before any work
    inference = read_inference_config(stored, overrides, str(config_file))
    chosen = any(item.startswith("precision=") for item in overrides)
    if (
        (device is None or device.type == "cpu")
        and inference.precision == "bf16"
        and not chosen
        and not cpu_runs_bf16()
    ):
        log.info(
            "this CPU has no bf16 kernels (AVX2 only), where bf16 runs 5-7x slower than fp32: captioning in "
            "fp32 (precision=bf16 to insist)"
        )
        inference.precision = "fp32"
    model, config = load_model_dir(model_dir, dtype=compute_dtype(inference.precision))
    if device is not None:
        model.to(device)
    model.eval()
    run_config = OmegaConf.load(run_dir / RUN_CONFIG) if run_dir is not None else None
    return OpenedModel(model, config, inference, model_dir, run_config)
