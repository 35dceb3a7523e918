"""The frozen causal language model and the text side of captioning (labels, prompts, decoding)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase


def load_lm(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local Hugging Face folder (never from a hub)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"language model folder {path} has no config.json (expected a Hugging Face model folder)")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    if tokenizer.pad_token_id is None:
        raise ValueError(f"tokenizer in {path} has no pad token; captions in a batch must be padded")
    return lm, tokenizer


@dataclass
class CaptionText:
    """How captions are turned into LM inputs: prompt, end-of-caption text and length limit.

    The reference appends "\\n" to each caption and uses it as the end-of-sequence token (OPT's convention).
    """

    tokenizer: PreTrainedTokenizerBase
    prompt: str = ""
    caption_end: str = "\n"
    max_text_tokens: int = 32

    def __post_init__(self) -> None:
        end_ids = self.tokenizer(self.caption_end, add_special_tokens=False).input_ids
        if len(end_ids) != 1:
            raise ValueError(f"caption_end {self.caption_end!r} must be one token for this tokenizer, got ids {end_ids}")
        self.end_token_id: int = end_ids[0]
        self.prompt_ids: list[int] = self.tokenizer(self.prompt).input_ids

    def training_batch(self, captions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids, attention mask and labels (-100 on prompt and padding) for teacher forcing."""
        texts = [self.prompt + caption.strip() + self.caption_end for caption in captions]
        self.tokenizer.padding_side = "right"
        encoded = self.tokenizer(
            texts, padding="longest", truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
        )
        ids = encoded.input_ids.to(device)
        mask = encoded.attention_mask.to(device)
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, : len(self.prompt_ids)] = -100
        return ids, mask, labels

    def num_targets(self, captions: list[str]) -> int:
        """How many tokens the loss predicts for these captions (the denominator of the token-mean loss)."""
        return int((self.training_batch(captions, torch.device("cpu"))[2] != -100).sum())

    def prompt_batch(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """The prompt's token ids (with BOS) repeated for a batch: the prefix that generation continues."""
        return torch.tensor(self.prompt_ids, device=device).expand(batch_size, -1)

    def decode(self, token_ids: torch.Tensor) -> list[str]:
        """Generated ids -> captions, stopping at the end token."""
        captions = []
        for row in token_ids.tolist():
            if self.end_token_id in row:
                row = row[: row.index(self.end_token_id)]
            captions.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return captions
