"""A word-level tokenizer and a tiny OPT language model trained on caption text (the demo's frozen LLM).

    python -m simvlg_video.data_tools.tiny_lm --corpus events --out LM_DIR [--steps 3000 --lr 1e-3]

trains one on a synthetic set's caption groups (`events`: the motion set's and the event set's, as the bundled model's
LM; `shapes`: the motion set's only), to give `pretrain` as `lm_path=LM_DIR`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import OPTConfig, OPTForCausalLM, PreTrainedTokenizerFast

from simvlg_video.model.lm import END, build_word_tokenizer


def tiny_opt_config(tokenizer: PreTrainedTokenizerFast, hidden_size: int = 128, num_layers: int = 2) -> OPTConfig:
    """An OPT of the same architecture as OPT-2.7B, small enough to train on a CPU."""
    return OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        word_embed_proj_dim=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        ffn_dim=4 * hidden_size,
        max_position_embeddings=128,
        dropout=0.0,
        attention_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def context_sample(group: Sequence[str], rng: np.random.Generator, max_captions: int = 3) -> str:
    """1 to `max_captions` captions of one group, each ended by the end-of-caption token."""
    count = int(rng.integers(1, max_captions + 1))
    return "".join(group[i] + END for i in rng.integers(0, len(group), count))


def train_tiny_lm(
    caption_groups: Sequence[Sequence[str]],
    out_dir: str | Path,
    steps: int = 400,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    show_progress: bool = True,
) -> Path:
    """Train the tiny OPT on caption text and save model + tokenizer to `out_dir`.

    Each sample strings together 1-3 captions of the same thing (`caption_groups` holds captions that describe the
    same object), so the LM learns what a large pretrained LM knows and a frozen LM under a soft prompt relies on:
    that context before a caption tells what the caption is about.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tokenizer = build_word_tokenizer([caption for group in caption_groups for caption in group])
    lm = OPTForCausalLM(tiny_opt_config(tokenizer))
    optimizer = torch.optim.AdamW(lm.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    lm.train()
    progress = tqdm(range(steps), desc="tiny LM", disable=not show_progress)
    for _ in progress:
        texts = [context_sample(caption_groups[i], rng) for i in rng.integers(0, len(caption_groups), batch_size)]
        batch = tokenizer(texts, padding="longest", return_tensors="pt")
        labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
        loss = lm(**batch, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        progress.set_postfix(loss=f"{loss.item():.3f}")
    out_dir = Path(out_dir)
    lm.eval().save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m simvlg_video.data_tools.tiny_lm",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--corpus", choices=("shapes", "events"), default="events", help="whose caption groups")
    parser.add_argument("--out", type=Path, required=True, help="folder to write (model and tokenizer)")
    parser.add_argument("--steps", type=int, default=3000, help="the bundled model's LM stage: 3000")
    parser.add_argument("--lr", type=float, default=1e-3, help="the bundled model's LM stage: 1e-3")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.corpus == "events":
        from simvlg_video.data_tools.event_text import caption_groups
    else:
        from simvlg_video.data_tools.shapes import caption_groups
    out = train_tiny_lm(caption_groups(), args.out, steps=args.steps, lr=args.lr, seed=args.seed)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
