"""Parity with a third party: our captioner built from a BLIP-2 checkpoint, in either layout, against transformers'
`Blip2ForConditionalGeneration` with the same weights (fp32, relative error <= 1e-5): the LM logits at one frame and
on clips of one repeated frame with either placement at initialisation, greedy captions, and the optional prompt."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from blip2_layout import PROMPT, QFORMER, VISION, hf_model

from simvlg_video.adapters.placements import MergedTokens, Reference
from simvlg_video.formats.blip2_checkpoint import import_hf_blip2, import_lavis_blip2
from simvlg_video.formats.model_dir import load_model_dir

CAPTIONS = ["a red circle moves to the left", "a blue square grows"]
LAYOUTS = ["hf", "lavis", "lavis_with_vit"]
PLACEMENTS = {
    "reference": lambda model: Reference(qk_dim=16, num_heads=4).apply(model),
    "reference-last1-time": lambda model: Reference(
        blocks="last_k", last_k=1, qk_dim=16, num_heads=4, time_encoding="clip_time"
    ).apply(model),
    "merged_tokens": lambda model: MergedTokens(num_heads=4).apply(model),  # time and place codes on
    "merged_tokens-no-codes": lambda model: MergedTokens(
        num_heads=4, time_encoding="none", space_encoding="none"
    ).apply(model),
}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture(scope="module")
def hf(blip2_files):
    return hf_model(blip2_files)


def image_tokens(hf, batch: int) -> torch.Tensor:
    return torch.full((batch, QFORMER["queries"]), hf.config.image_token_index)


def hf_logits(hf, frame: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """transformers' logits: the image placeholders first (replaced by the projected queries), then the text."""
    image = image_tokens(hf, len(ids))
    return hf(
        pixel_values=frame,
        input_ids=torch.cat([image, ids], 1),
        attention_mask=torch.cat([torch.ones_like(image), mask], 1),
    ).logits


def our_logits(model, frames: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    soft = model.encode(frames)
    visible = torch.ones(soft.shape[:2], dtype=mask.dtype)
    return model.lm(
        inputs_embeds=model.embed_with_soft_prompt(soft, ids), attention_mask=torch.cat([visible, mask], 1)
    ).logits


def frames(seed: int, batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, 3, VISION["image"], VISION["image"], generator=generator)


@pytest.mark.parametrize("layout", LAYOUTS)
@torch.no_grad()
def test_one_frame_gives_transformers_logits(blip2_model_dirs, hf, layout):
    model = load_model_dir(blip2_model_dirs[layout])[0].eval()
    frame = frames(0)
    ids, mask, _ = model.text.training_batch(CAPTIONS, frame.device)  # padded: the second caption is shorter
    expected = hf_logits(hf, frame[:, 0], ids, mask)
    assert relative_error(our_logits(model, frame, ids, mask), expected) <= 1e-5
    other = our_logits(model, frames(1), ids, mask)  # the check can fail: the frames matter
    assert relative_error(other, expected) > 1e-2


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("layout", ["hf", "lavis"])
@torch.no_grad()
def test_a_repeated_frame_at_initialisation_gives_transformers_logits(blip2_model_dirs, hf, layout, placement):
    model = load_model_dir(blip2_model_dirs[layout])[0].eval()
    PLACEMENTS[placement](model)
    frame = frames(2)
    ids, mask, _ = model.text.training_batch(CAPTIONS, frame.device)
    clip = frame.expand(-1, 3, -1, -1, -1)
    assert relative_error(our_logits(model, clip, ids, mask), hf_logits(hf, frame[:, 0], ids, mask)) <= 1e-5


def greedy(hf, model, frame: torch.Tensor, max_new_tokens: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(ours, transformers') greedy new token ids, with the same end token, prompt and length limits."""
    ours = model.generate_ids(frame, num_beams=1, min_new_tokens=2, max_new_tokens=max_new_tokens)
    prompt = model.text.prompt_batch(len(frame), frame.device)
    input_ids = torch.cat([image_tokens(hf, len(frame)), prompt], 1)
    theirs = hf.generate(
        pixel_values=frame[:, 0],
        input_ids=input_ids,
        do_sample=False,
        num_beams=1,
        min_new_tokens=2,
        max_new_tokens=max_new_tokens,
        eos_token_id=model.text.end_token_id,
        pad_token_id=model.text.tokenizer.pad_token_id,
    )
    return ours, theirs[:, input_ids.shape[1] :]


@pytest.mark.parametrize("layout", ["hf", "lavis"])
@torch.no_grad()
def test_greedy_captions_are_transformers_captions(blip2_model_dirs, hf, layout):
    model = load_model_dir(blip2_model_dirs[layout])[0].eval()
    frame = frames(3, batch=4)
    ours, theirs = greedy(hf, model, frame)
    assert torch.equal(ours, theirs)
    captions = model.text.decode(ours)
    assert captions == model.text.decode(theirs) and len(set(captions)) > 1  # frames lead to different captions
    clip = frame.expand(-1, 4, -1, -1, -1)
    MergedTokens(num_heads=4).apply(model)
    assert torch.equal(model.generate_ids(clip, num_beams=1, min_new_tokens=2, max_new_tokens=8), theirs)


@pytest.fixture(scope="module")
def prompted(blip2_files, tmp_path_factory) -> dict[str, Path]:
    """Both layouts imported with BLIP-2's optional text prompt before the caption."""
    out, files = tmp_path_factory.mktemp("prompted"), blip2_files
    return {
        "hf": import_hf_blip2(files.folder, out / "hf", prompt=PROMPT),
        "lavis": import_lavis_blip2(
            files.ckpt, files.lm_path, files.model_cfg, out / "lavis", vit_weights=files.vit_weights, prompt=PROMPT
        ),
    }


@pytest.mark.parametrize("layout", ["hf", "lavis"])
@torch.no_grad()
def test_the_prompt_comes_between_the_queries_and_the_caption(prompted, hf, layout):
    model, cfg = load_model_dir(prompted[layout])
    model.eval()
    assert cfg.lm.prompt == PROMPT
    frame = frames(4)
    ids, mask, labels = model.text.training_batch(CAPTIONS, frame.device)
    prompt = model.text.tokenizer(PROMPT).input_ids  # BOS + the prompt's words
    assert ids[:, : len(prompt)].tolist() == [prompt] * len(CAPTIONS) and len(prompt) == 4
    assert (labels[:, : len(prompt)] == -100).all() and (labels[:, len(prompt)] != -100).all()
    assert relative_error(our_logits(model, frame, ids, mask), hf_logits(hf, frame[:, 0], ids, mask)) <= 1e-5
    ours, theirs = greedy(hf, model, frame)
    assert torch.equal(ours, theirs)
