"""The LM context check: which prompts it builds, and that it scores an LM that does and one that does not follow."""

from __future__ import annotations

from pathlib import Path

from simvlg_video.adapt import BUNDLED_IMAGE_MODEL
from simvlg_video.data_tools import shapes
from simvlg_video.data_tools.lm_context_check import context_prompts, motion_from_context


def test_prompts_stop_just_before_a_motion_word_that_follows_a_verb():
    prompts = context_prompts("left")
    assert ("a red circle moves to the left\na red circle slides", "left") not in prompts  # context is another one
    assert any(text.endswith("\na red circle slides") and text.startswith("the red circle goes left\n")
               for text, _ in prompts)
    assert all(not text.endswith(("circle", "square", "triangle")) for text, _ in prompts), "no 'a red circle' -> rises"
    assert len(prompts) == len(shapes.SHAPES) * len(shapes.COLOURS) * 4


def test_counts_every_prompt_of_every_directional_motion(tiny_model_dir: Path):
    results = motion_from_context(tiny_model_dir / "lm")  # a 3-step LM: the counts, not the hits, are known
    assert list(results) == list(shapes.DIRECTIONAL_MOTIONS)
    for motion, (hits, total) in results.items():
        assert total == len(context_prompts(motion)) and 0 <= hits <= total


def test_the_bundled_lm_follows_context_for_up_and_down():
    results = motion_from_context(BUNDLED_IMAGE_MODEL / "lm")
    assert results["up"][0] == results["up"][1] and results["down"][0] == results["down"][1]
