"""The Hydra config tree (the YAML files beside this one) and the typed schemas those files extend.

Defaults live in code, once, beside what they configure: the `train:` settings in `train.config.TrainConfig`, the
clips in `data.clips.ClipData` (how frames are read: its base `FrameReading`), decoding in `eval.inference.Decoding`,
each adapter placement in `adapters.placements`, each frame sampler in `data.samplers` (by name: a `sampler=` file
picks one for `train` and one for `eval`), and this file's schemas for the rest of `adapt`, `pretrain` and the
captioning commands (`evaluate`, `caption`, `visualize`, composed from `evaluate.yaml` and `caption.yaml` over the
settings a model stores). :func:`register_schemas` puts them into Hydra's ConfigStore under `schema/`; the YAML files
name them first in their defaults lists, so every key has a type, a misspelt key is an error, and a YAML file only
says what differs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from simvlg_video.adapters.placements import PLACEMENTS
from simvlg_video.configs.listing import stage_help
from simvlg_video.data.clips import ClipData
from simvlg_video.data.samplers import SAMPLERS
from simvlg_video.eval.inference import Decoding, InferenceConfig
from simvlg_video.train.config import TrainConfig


@dataclass
class DatasetFolder(ClipData):
    """The shared base of `data=msrvtt|msvd|activitynet`: a dataset converted into ROOT and checked there
    (`data_tools.convert ... --root ROOT`, then `data_tools.check_videos`)."""

    root: str | None = MISSING  # must be given: data.root=/path/to/dataset
    manifest: str | None = "${data.root}/manifest.checked.jsonl"


@dataclass
class Scoring(Decoding):
    """What scoring a split adds to decoding (the reference recipe's decoding: the demo's configs set their own)."""

    spice: bool = False  # also SPICE (needs Stanford CoreNLP's jars; the toolkit never downloads them)


@dataclass
class EvalConfig(Scoring):
    """`eval:` of adapt and pretrain: what is scored, when, and how captions are decoded."""

    split: str = "test"
    val_split: str = "val"  # for train.eval_every
    best_metric: str = "CIDEr"  # which validation score picks the best checkpoint (higher is better)
    before: bool = True  # also score the image model (frames averaged, no adapters) for a before/after table
    visualize: int = 3  # draw this many test clips into RUN_DIR/visualize/ at the end (0: none)


@dataclass
class StageConfig:
    """What `adapt` and `pretrain` share: one training stage's settings besides the groups (`data=`, `sampler=`,
    `adapter=`, `experiment=`)."""

    seed: int = 0
    device: str = "auto"  # auto (cuda when present) | cpu | cuda
    precision: str = InferenceConfig.precision  # fp32 | bf16 | fp16: frozen weights loaded in it, autocast in it
    run_dir: str = "${hydra:runtime.output_dir}"
    resume: Any = None  # auto: continue the newest complete checkpoint in run_dir (give hydra.run.dir=RUN_DIR and
    # the run's overrides); a checkpoint folder: that one; None: a fresh run
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    data: Any = None  # data=NAME: a ClipData (simvlg_video.data.clips), or a DatasetFolder
    sampler: Any = None  # sampler=NAME: {train: ..., eval: ...}, samplers by name (simvlg_video.data.samplers)
    adapter: Any = None  # adapter=NAME: a placement (simvlg_video.adapters.placements)


@dataclass
class AdaptConfig(StageConfig):
    """`python -m simvlg_video.adapt`: where the image model comes from."""

    image_ckpt: str | None = None  # our model directory, a Hugging Face BLIP-2 folder, or a checkpoint file (.pth:
    # SimVLG's reference or LAVIS BLIP-2 OPT, with the next keys); None: the bundled tiny image model
    vit_weights: str | None = None  # with a .pth image_ckpt: the frozen ViT weights (BLIP-2's eva_vit_g.pth); not for
    # a BLIP-2 .pth that holds its ViT
    lm_path: str | None = None  # with a .pth image_ckpt: local Hugging Face folder of the LLM (e.g. opt-2.7b)
    model_config: str | None = None  # with a .pth image_ckpt: the architecture (configs/model/ name or .yaml); None:
    # simvlg_opt2.7b for SimVLG's checkpoint, blip2_opt2.7b for BLIP-2's
    prompt: str | None = None  # with an imported image_ckpt: text between the soft prompt and every caption (BLIP-2
    # captioners often use "a photo of"); None: none


@dataclass
class PretrainConfig(StageConfig):
    """`python -m simvlg_video.pretrain`: the parts the new image model starts from (defaults: the tiny demo)."""

    model_config: str = "tiny"  # the architecture: configs/model/ name (tiny, simvlg_opt2.7b) or a .yaml
    vit_weights: str | None = None  # the frozen ViT's weights (BLIP-2's eva_vit_g.pth); None: the ViT is stored
    # in the model directory and starts random (the tiny demo; give "vit" in train.trainable to train it)
    bert_path: str | None = None  # local Hugging Face bert-base-uncased folder for the connector; None: random
    lm_path: str | None = None  # the frozen LLM's local Hugging Face folder; None: the bundled tiny model's LM
    merge_r: Any = None  # tokens merged per connector layer: an int for every layer or a list, one per layer (19:
    # the reference, 257 -> 29; 0: no merging); None: the model config's
    merge_mode: str | None = None  # mean (the reference) | weighted (ToMe's size-weighted merge with proportional
    # attention); None: the model config's


@dataclass
class CaptionSettings(InferenceConfig):
    """`caption` and `visualize`: how the model captions (the settings it stores, unless overridden) and where."""

    sampler: Any = None  # sampler=NAME: that sampler config's eval part in place of the model's own sampler
    device: str = StageConfig.device


@dataclass
class EvaluateEval(Scoring):
    """`eval:` of `evaluate`: decoding, and which split is scored."""

    split: str | None = None  # None: the split the run scored (its eval.split), else test


@dataclass
class EvaluateSettings(CaptionSettings):
    """`evaluate`: the captioning settings, which split, and SPICE."""

    eval: EvaluateEval = field(default_factory=EvaluateEval)


def register_schemas() -> None:
    """Store the schemas the YAML files extend (`schema/adapt`, `schema/pretrain`, `schema/data`,
    `schema/dataset_folder`, `schema/adapter/<name>`, `schema/sampler/<name>`)."""
    store = ConfigStore.instance()
    store.store(group="schema", name="adapt", node=AdaptConfig)
    store.store(group="schema", name="pretrain", node=PretrainConfig)
    store.store(group="schema", name="caption", node=CaptionSettings)
    store.store(group="schema", name="evaluate", node=EvaluateSettings)
    store.store(group="schema", name="data", node=ClipData)
    store.store(group="schema", name="dataset_folder", node=DatasetFolder)
    for name, placement in PLACEMENTS.items():
        store.store(group="schema/adapter", name=name, node=placement)
    for name, sampler in SAMPLERS.items():
        store.store(group="schema/sampler", name=name, node=sampler)
    for command, schema, summary in (
        ("adapt", AdaptConfig, "Adapt an image captioner to video: temporal adapters, one captioning loss, scores."),
        ("pretrain", PretrainConfig, "Make an image captioner: SimVLG's image stage, from its parts."),
    ):
        template = stage_help(command, summary, schema)
        store.store(
            group="hydra/help",
            name=command,
            node={"app_name": command, "header": "", "footer": "", "template": template},
        )
