"""The video captioner: frozen ViT per frame -> pooling over time -> connector -> frozen LM.

Attribute names follow the reference image model (`ln_vision`, `VL_proj`, `opt_proj`) so checkpoints map one to one;
`vit`, `connector` and `lm` keep the parameter names of their timm / transformers classes. The connector is SimVLG's
ToMe connector (behind `VL_proj`, ViT width -> connector width) or BLIP-2's Q-Former (which reads the ViT width
itself: `VL_proj` is then the identity and holds no tensor). Both answer the same calls, the `Connector` protocol
(`simvlg_video.model.protocols`).

Pooling over time is a stage of its own, `time_pool` (the `TimePool` protocol): the plain mean of the frames' ViT
tokens before the connector (the reference, and the image model: one frame is its own mean) unless a placement puts
a pool of the connector's per-frame merged tokens there (`simvlg_video.adapters`); such a pool may also read the
connector's tokens of that mean (`reads_clip_view`), may read time averages over spans of frames instead of every
frame (`frame_views`), and may take the frames' tokens without gradients through the connector (`frame_gradients`).
Both parts are checked against their protocols when they are put in.
"""

from __future__ import annotations

import torch
from torch import nn

from simvlg_video.model.lm import CaptionText
from simvlg_video.model.protocols import Connector, TimePool
from simvlg_video.model.vit import clip_length, token_positions, vit_tokens


def first_trainable_block(vit: nn.Module) -> int | None:
    """Index of the lowest ViT block with a trainable parameter (0 if the embeddings train, None if nothing does).

    Blocks below it run without autograd: nothing above needs their gradients.
    """
    stem = [p for name, p in vit.named_parameters() if not name.startswith("blocks.")]
    if any(p.requires_grad for p in stem):
        return 0
    for index, block in enumerate(vit.blocks):
        if any(p.requires_grad for p in block.parameters()):
            return index
    return None


class MeanOverTime(nn.Module):
    """The reference's pooling over time (a `TimePool`): the plain mean of the frames' ViT tokens, before the
    connector."""

    pools_vit_tokens = True  # pools (B, T, N, C) ViT tokens into (B, N, C); the connector then runs once per clip
    uses_positions = False

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        return tokens.mean(dim=1)


class VideoCaptioner(nn.Module):
    """SimVLG-style captioner applied to clips of T frames; with T=1 it is the image model."""

    def __init__(
        self,
        vit: nn.Module,
        connector: Connector,
        lm: nn.Module,
        text: CaptionText,
        connector_width: int,
        project_vision: bool = True,
        ln_vision_eps: float = 1e-5,
    ):
        """`project_vision`: a trainable `VL_proj` (ViT width -> `connector_width`) in front of the connector (False:
        the connector reads the ViT width itself); `ln_vision_eps`: 1e-5 in LAVIS and SimVLG (torch's default), the
        vision config's `layer_norm_eps` in a Hugging Face BLIP-2."""
        super().__init__()
        if not isinstance(connector, Connector):
            raise TypeError(
                f"{type(connector).__name__} is not a connector: it lacks calls of the Connector protocol "
                "(simvlg_video.model.protocols)"
            )
        self.vit = vit
        self.ln_vision = nn.LayerNorm(vit.embed_dim, eps=ln_vision_eps)
        self.VL_proj = nn.Linear(vit.embed_dim, connector_width) if project_vision else nn.Identity()
        self.connector_width = connector_width
        self.connector = connector
        self.time_pool: TimePool = MeanOverTime()
        self.opt_proj = nn.Linear(connector_width, lm.get_input_embeddings().embedding_dim)
        self.lm = lm
        self.text = text
        # Activation checkpointing of the ViT blocks that run with autograd: less memory, one more ViT forward.
        self.checkpoint_vit = False

    def __setattr__(self, name: str, value: object) -> None:
        """A placement may put another pool over time in; one that is not a `TimePool` is refused here."""
        if name == "time_pool" and not isinstance(value, TimePool):
            raise TypeError(
                f"{type(value).__name__} is not a pool over time: it lacks parts of the TimePool protocol "
                "(simvlg_video.model.protocols)"
            )
        super().__setattr__(name, value)

    def frame_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) -> per-frame ViT tokens (B, T, N, C); adapters inside the ViT see all T frames of a clip."""
        batch, num_frames = frames.shape[:2]
        with clip_length(self.vit, num_frames):
            tokens = vit_tokens(
                self.vit,
                frames.flatten(0, 1),
                grad_from_block=first_trainable_block(self.vit),
                checkpoint_blocks=self.checkpoint_vit,
                recompute_context=lambda: clip_length(self.vit, num_frames),
            )
        return tokens.unflatten(0, (batch, num_frames))

    def connect(self, tokens: torch.Tensor, track_positions: bool = False) -> torch.Tensor:
        """ViT tokens (N, P, C) -> connector tokens (N, M, D); ln_vision runs in fp32 as in the reference.

        With `track_positions` the connector also follows where each of its tokens sits in the frame
        (`self.connector.last_token_positions()`).
        """
        tokens = self.ln_vision(tokens.float())
        if isinstance(self.VL_proj, nn.Linear):
            tokens = self.VL_proj(tokens.to(self.VL_proj.weight.dtype))
        positions = token_positions(self.vit).to(tokens.device) if track_positions else None
        return self.connector(tokens, token_positions=positions)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) normalised frames -> soft prompt (B, tokens, LM width)."""
        tokens = self.frame_tokens(frames)
        pool = self.time_pool
        if pool.pools_vit_tokens:
            return self.opt_proj(self.connect(pool(tokens)))
        track = pool.uses_positions
        clip_view = clip_places = None
        if pool.reads_clip_view:  # before the frames, so that the last merge groups are the frames' (pictures)
            clip_view = self.connect(tokens.mean(dim=1), track_positions=track)
            clip_places = self.connector.last_token_positions() if track else None
        views, times = pool.frame_views(tokens)  # every frame's tokens, or time averages over spans of frames
        clips = views.shape[:2]
        with torch.set_grad_enabled(torch.is_grad_enabled() and pool.frame_gradients):
            per_frame = self.connect(views.flatten(0, 1), track_positions=track).unflatten(0, clips)
            positions = self.connector.last_token_positions().unflatten(0, clips) if track else None
        return self.opt_proj(pool(per_frame, positions, clip_view, clip_places, times))

    def embed_with_soft_prompt(self, soft_prompt: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """LM input embeddings: the soft prompt followed by the embedded text tokens."""
        text_embeds = self.lm.get_input_embeddings()(token_ids)
        return torch.cat([soft_prompt.to(text_embeds.dtype), text_embeds], dim=1)

    def forward(self, frames: torch.Tensor, captions: list[str], num_targets: int | None = None) -> torch.Tensor:
        """The single captioning loss: next-token cross-entropy on caption tokens only.

        By default the mean over this batch's caption tokens; with `num_targets` the sum divided by it, so that
        micro-batches and ranks given the token count of the whole global batch add up to its exact mean.
        """
        return self.caption_loss(frames, *self.text.training_batch(captions, frames.device), num_targets=num_targets)

    def caption_loss(
        self,
        frames: torch.Tensor,
        token_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        num_targets: int | None = None,
    ) -> torch.Tensor:
        """The loss for already tokenised captions (labels -100 where nothing is predicted)."""
        soft_prompt = self.encode(frames)
        batch, num_soft = soft_prompt.shape[:2]
        ignore = torch.full((batch, num_soft), -100, dtype=labels.dtype, device=labels.device)
        visible = torch.ones(batch, num_soft, dtype=attention_mask.dtype, device=attention_mask.device)
        output = self.lm(
            inputs_embeds=self.embed_with_soft_prompt(soft_prompt, token_ids),
            attention_mask=torch.cat([visible, attention_mask], dim=1),
            labels=torch.cat([ignore, labels], dim=1),
            **({} if num_targets is None else {"num_items_in_batch": num_targets}),
        )
        return output.loss

    @torch.no_grad()
    def generate(
        self,
        frames: torch.Tensor,
        *,
        num_beams: int,
        min_new_tokens: int,
        max_new_tokens: int,
        synced: bool = False,
    ) -> list[str]:
        """Beam-search captions through the LM's own `generate`, continuing soft prompt + text prompt. The decoding
        settings have no defaults here: they come from the one schema of them (eval.inference.Decoding)."""
        ids = self.generate_ids(
            frames, num_beams=num_beams, min_new_tokens=min_new_tokens, max_new_tokens=max_new_tokens, synced=synced
        )
        return self.text.decode(ids)

    @torch.no_grad()
    def generate_ids(
        self,
        frames: torch.Tensor,
        *,
        num_beams: int,
        min_new_tokens: int,
        max_new_tokens: int,
        synced: bool = False,
    ) -> torch.Tensor:
        """The new token ids `generate` decodes: (B, up to max_new_tokens), padded after each caption's end.

        `synced`: every rank keeps stepping until all ranks' captions are done (FSDP layers gather their
        parameters in collectives that all ranks must join)."""
        soft_prompt = self.encode(frames)
        prompt_ids = self.text.prompt_batch(soft_prompt.shape[0], frames.device)
        inputs = self.embed_with_soft_prompt(soft_prompt, prompt_ids)
        return self.lm.generate(
            inputs_embeds=inputs,
            attention_mask=torch.ones(inputs.shape[:2], dtype=torch.long, device=inputs.device),
            num_beams=num_beams,
            do_sample=False,
            min_new_tokens=min_new_tokens,
            max_new_tokens=max_new_tokens,
            eos_token_id=self.text.end_token_id,
            pad_token_id=self.text.tokenizer.pad_token_id,
            synced_gpus=synced,
        )
