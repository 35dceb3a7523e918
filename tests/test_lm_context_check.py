"""The LM context check: which prompts it builds, and that it scores an LM that does and one that does not follow."""

from __future__ import annotations

from pathlib import Path

from simvlg_video.adapt import BUNDLED_IMAGE_MODEL
from simvlg_video.data_tools.lm_context_check import context_prompts, motion_from_context
from simvlg_video.eval.shape_accuracy import COLOURS, DIRECTIONAL_MOTIONS, SHAPES


def test_prompts_stop_just_before_a_motion_word_that_follows_a_verb():
    prompts = context_prompts("left")
    assert ("a red circle moves to the left\na red circle slides", "left") not in prompts  # context is another one
    assert any(
        text.endswith("\na red circle slides") and text.startswith("the red circle goes left\n") for text, _ in prompts
    )
    assert all(not text.endswith(("circle", "square", "triangle")) for text, _ in prompts), "no 'a red circle' -> rises"
    assert len(prompts) == len(SHAPES) * len(COLOURS) * 4


def test_an_lm_that_has_not_learned_the_captions_fails_the_check(tiny_model_dir: Path):
    """A 3-step LM says the same word whatever the context: at most one motion can be named every time."""
    results = motion_from_context(tiny_model_dir / "lm")
    assert list(results) == list(DIRECTIONAL_MOTIONS)
    assert all(total == len(context_prompts(motion)) for motion, (_, total) in results.items())
    assert sum(hits == total for hits, total in results.values()) <= 1


def test_the_bundled_lm_names_every_motion_in_every_prompt():
    results = motion_from_context(BUNDLED_IMAGE_MODEL / "lm")
    assert all(hits == total for hits, total in results.values()), results
