"""The frame samplers a config, a model.yaml or a `sampler=` setting can name: one typed dataclass per sampler of
`sampling.py`, its name and its settings, the one place their defaults are stated.

`configs/sampler/*.yaml` pick one for training and one for evaluation (`sampler.train`, `sampler.eval`), and a
model directory stores the one it captions with (`inference.sampler.eval`). `sampler_from` turns settings read from
a file or a command line into one, chosen by name from SAMPLERS, never by an import path; `build()` gives the
function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial
from typing import Any, ClassVar

from simvlg_video.choices import choose
from simvlg_video.data import sampling


@dataclass
class NamedSampler:
    """A frame sampler by name, with its settings (the fields after `name`)."""

    name: str
    function: ClassVar[Callable[..., list[int]]]  # the function of `sampling` it configures

    def build(self) -> Callable[..., list[int]]:
        """The sampler with these settings bound, as the dataset calls it (`sampling.needed_fields` reads it)."""
        settings = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}
        return partial(self.function, **settings)


@dataclass
class Uniform(NamedSampler):
    """The middle frame of each of T equal segments."""

    name: str = "uniform"
    function = staticmethod(sampling.uniform)


@dataclass
class Head(NamedSampler):
    """The first frame of each of T equal segments (the reference's evaluation)."""

    name: str = "head"
    function = staticmethod(sampling.head)


@dataclass
class HeadTail(NamedSampler):
    """Random frames from each half of the clip (the reference's training); deterministic in evaluation."""

    name: str = "headtail"
    function = staticmethod(sampling.headtail)


@dataclass
class RandomSegment(NamedSampler):
    """One random frame from each of T equal segments; the middle one in evaluation."""

    name: str = "random_segment"
    function = staticmethod(sampling.random_segment)


@dataclass
class Random(NamedSampler):
    """T distinct random frames anywhere in the clip; segment middles in evaluation."""

    name: str = "random"
    function = staticmethod(sampling.random)


@dataclass
class Fps(NamedSampler):
    """A run of frames at a fixed rate of video time (at most T): random in training, centred in evaluation."""

    name: str = "fps"
    rate: float = 2.0  # frames per second of video
    function = staticmethod(sampling.at_rate)


@dataclass
class Keyframe(NamedSampler):
    """The keyframes nearest to random-segment (training) or uniform (evaluation) targets; needs probed keyframes."""

    name: str = "keyframe"
    function = staticmethod(sampling.keyframe)


SAMPLERS = {
    "uniform": Uniform,
    "head": Head,
    "headtail": HeadTail,
    "random_segment": RandomSegment,
    "random": Random,
    "fps": Fps,
    "keyframe": Keyframe,
}
# What model.yaml files stored before samplers had names (format 2 as first written, with `_partial_: true`): these
# exact strings only.
LEGACY_TARGETS = {
    "simvlg_video.data.sampling.uniform": "uniform",
    "simvlg_video.data.sampling.head": "head",
    "simvlg_video.data.sampling.headtail": "headtail",
    "simvlg_video.data.sampling.random_segment": "random_segment",
    "simvlg_video.data.sampling.random": "random",
    "simvlg_video.data.sampling.at_rate": "fps",
    "simvlg_video.data.sampling.keyframe": "keyframe",
}


def sampler_from(settings: Any) -> NamedSampler:
    """The sampler `settings` name (`{name: fps, rate: 4}`, a Hydra node, or just the name), with its settings
    type-checked; anything else is a `ChoiceError` (`simvlg_video.choices`)."""
    return choose(settings, SAMPLERS, "frame sampler", LEGACY_TARGETS, {"_partial_": True})
