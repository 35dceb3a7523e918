"""Does a caption LM take the motion from context? The check behind a frozen LM that a soft prompt can steer.

    python -m simvlg_video.data_tools.lm_context_check LM_DIR

For every directional clip caption whose motion word follows a verb ("a red circle slides" -> "left"), the LM gets
another caption of the same clip as context and the caption up to that word; it passes when its most likely next
word names the same motion. An LM that ignores the context there cannot be steered to say that motion by any
soft prompt.
"""

from __future__ import annotations

import argparse
from itertools import product
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from simvlg_video.data_tools import shapes
from simvlg_video.eval.shape_accuracy import COLOURS, DIRECTIONAL_MOTIONS, MOTION_KEYWORDS, SHAPES
from simvlg_video.model.lm import END

NOUN_PHRASE_WORDS = 3  # "a red circle" / "the red circle"


def context_prompts(motion: str) -> list[tuple[str, str]]:
    """(context + caption prefix, motion) for every caption of `motion` whose motion word follows a verb."""
    prompts = []
    for shape, colour in product(SHAPES, COLOURS):
        captions = shapes.video_captions(shape, colour, motion)
        for index, caption in enumerate(captions):
            words = caption.split()
            at = next(i for i, word in enumerate(words) if word in MOTION_KEYWORDS[motion])
            if at > NOUN_PHRASE_WORDS:
                context = captions[(index + 1) % len(captions)] + END
                prompts.append((context + " ".join(words[:at]), motion))
    return prompts


@torch.no_grad()
def motion_from_context(lm_dir: str | Path) -> dict[str, tuple[int, int]]:
    """Per directional motion: (prompts whose greedy next word names it, prompts)."""
    tokenizer = AutoTokenizer.from_pretrained(lm_dir, local_files_only=True)
    lm = AutoModelForCausalLM.from_pretrained(lm_dir, local_files_only=True).eval()
    results = {}
    for motion in DIRECTIONAL_MOTIONS:
        prompts = context_prompts(motion)
        hits = 0
        for text, _ in prompts:
            logits = lm(tokenizer(text, return_tensors="pt").input_ids).logits[0, -1]
            hits += tokenizer.convert_ids_to_tokens(int(logits.argmax())) in MOTION_KEYWORDS[motion]
        results[motion] = (hits, len(prompts))
    return results


def describe(results: dict[str, tuple[int, int]]) -> str:
    return ", ".join(f"{motion} {hits}/{total}" for motion, (hits, total) in results.items())


def main(argv: list[str] | None = None) -> dict[str, tuple[int, int]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lm_dir", type=Path, help="a Hugging Face LM folder (e.g. MODEL_DIR/lm)")
    results = motion_from_context(parser.parse_args(argv).lm_dir)
    print(f"motion word taken from context: {describe(results)}")
    return results


if __name__ == "__main__":
    main()
