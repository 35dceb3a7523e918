"""The frozen causal language model and the text side of captioning (labels, prompts, decoding).

The LM comes from a local Hugging Face folder of a causal LM (a BLIP-2 folder's LM is read by
`simvlg_video.formats.hf_blip2`); the tokenizer sits at the folder's root in both. A folder whose config asks for its
own code (`auto_map`) is refused: the folder is data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

PAD, UNK, BOS, END = "<pad>", "<unk>", "<s>", "\n"


@dataclass
class LMConfig:
    """The frozen LLM of a model directory (`lm:` in model.yaml) and how captions are written for it."""

    path: str | None = None  # a local Hugging Face folder (config.json, weights, tokenizer), relative to the model
    # directory or absolute
    prompt: str = ""  # text between the soft prompt and the caption ("a photo of" in some captioners; none here)
    caption_end: str = "\n"  # appended to every caption; OPT's end-of-caption token in the reference
    max_text_tokens: int = 32  # the reference's limit on prompt + caption tokens in training


def checked_lm_folder(path: str | Path) -> Path:
    """`path` as a Path, refused when it is not a Hugging Face model folder (no config.json)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"language model folder {path} has no config.json (expected a Hugging Face model folder)"
        )
    return path


def load_lm(path: str | Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A causal LM's folder (never a hub) loaded straight into `dtype`."""
    return AutoModelForCausalLM.from_pretrained(
        checked_lm_folder(path), dtype=dtype, local_files_only=True, trust_remote_code=False
    )


def lm_skeleton(path: str | Path) -> PreTrainedModel:
    """The LM a causal LM's folder describes, built on the meta device from its config.json: names and shapes."""
    config = AutoConfig.from_pretrained(checked_lm_folder(path), local_files_only=True, trust_remote_code=False)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    if tokenizer.pad_token_id is None:
        raise ValueError(f"tokenizer in {path} has no pad token; captions in a batch must be padded")
    return tokenizer


def build_word_tokenizer(corpus: Sequence[str]) -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer for tiny or random-weight LMs; BOS is prepended like OPT's and "\\n" ends a
    caption like the reference's."""
    words = sorted({word for text in corpus for word in text.split()})
    vocab = {token: index for index, token in enumerate([PAD, UNK, BOS, END, *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens([AddedToken(END, normalized=False, special=True)])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=END, unk_token=UNK, pad_token=PAD
    )


@dataclass
class CaptionText:
    """How captions are turned into LM inputs: prompt, end-of-caption text and length limit.

    A prompt ("a photo of", as BLIP-2 captioners use) is followed by a space and the caption, so that the caption's
    tokens continue the prompt's tokens exactly as generation continues them.

    The reference appends "\\n" to each caption and uses it as the end-of-sequence token (OPT's convention).
    """

    tokenizer: PreTrainedTokenizerBase
    prompt: str = ""
    caption_end: str = "\n"
    max_text_tokens: int = 32

    def __post_init__(self) -> None:
        end_ids = self.tokenizer(self.caption_end, add_special_tokens=False).input_ids
        if len(end_ids) != 1:
            raise ValueError(
                f"caption_end {self.caption_end!r} must be one token for this tokenizer, got ids {end_ids}"
            )
        self.end_token_id: int = end_ids[0]
        self.prompt_ids: list[int] = self.tokenizer(self.prompt).input_ids

    def training_batch(
        self, captions: list[str], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids, attention mask and labels (-100 on prompt and padding) for teacher forcing."""
        space = " " if self.prompt and not self.prompt[-1].isspace() else ""
        texts = [self.prompt + space + caption.strip() + self.caption_end for caption in captions]
        self.tokenizer.padding_side = "right"
        encoded = self.tokenizer(
            texts, padding="longest", truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
        )
        ids = encoded.input_ids.to(device)
        mask = encoded.attention_mask.to(device)
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, : len(self.prompt_ids)] = -100
        prefix = torch.tensor(self.prompt_ids, device=device)
        if ids.shape[1] < len(prefix) or (ids[:, : len(prefix)] != prefix).any():
            raise ValueError(
                f"the prompt {self.prompt!r} tokenizes differently before a caption than alone; "
                "give it without trailing whitespace"
            )
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
