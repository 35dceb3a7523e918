"""Bipartite soft matching (token merging, "ToMe") as pure tensor functions.

A layer's matching is decided once from a similarity metric (the connector uses that layer's attention keys,
averaged over heads) and returned as a :class:`Merge`, which then applies the same grouping to any tensor over the
same tokens: the hidden states, and in "weighted" mode the token sizes.

The matching (as SimVLG's connector and the ToMe paper do it): cosine-normalise the metric; split the tokens
alternately into set A (even positions, CLS included) and set B (odd positions); every A token picks its most similar
B token; the ``r`` A tokens with the highest best-match similarity join their B partner; the CLS token is never
merged. Output order is ``[unmerged A tokens in original order] + [B tokens in original order]``.

Merge modes:

* ``"mean"`` (the SimVLG reference): a B token and the A tokens joining it become their plain mean.
* ``"weighted"`` (the ToMe paper): every token carries a size (how many input tokens it stands for, 1 at the start);
  a merged token is the size-weighted mean and sizes add up. The caller adds ``log(size)`` to the attention logits
  ("proportional attention").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

MERGE_MODES = ("mean", "weighted")


def check_merge_mode(mode: str) -> str:
    """Return ``mode`` if it is a known merge mode, else raise a ValueError naming the choices."""
    if mode not in MERGE_MODES:
        raise ValueError(f"merge mode must be one of {MERGE_MODES}, got {mode!r}")
    return mode


def max_merge_count(num_tokens: int, protect_cls: bool = True) -> int:
    """Largest r one layer can merge: every merged A token needs a B partner, and a protected CLS stays."""
    return max(0, (num_tokens - int(protect_cls)) // 2)


def r_per_layer(r: int | Sequence[int], num_layers: int) -> list[int]:
    """Expand ``r`` (one int for every layer, or one per layer) into a list of ``num_layers`` non-negative ints."""
    values = [r] * num_layers if isinstance(r, int) else list(r)
    if len(values) != num_layers:
        raise ValueError(f"r must be an int or a list of {num_layers} ints (one per layer), got {len(values)}: {r!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"every r must be an int >= 0, got {value!r} in r={r!r}")
    return values


def merge_schedule(num_tokens: int, r: int | Sequence[int], num_layers: int, protect_cls: bool = True) -> list[int]:
    """Token counts entering the first layer and leaving every layer (``num_layers + 1`` numbers), r capped per layer.

    >>> merge_schedule(257, 19, 12)[-1]
    29
    """
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    counts = [num_tokens]
    for r_layer in r_per_layer(r, num_layers):
        counts.append(counts[-1] - min(r_layer, max_merge_count(counts[-1], protect_cls)))
    return counts


@dataclass(frozen=True)
class Merge:
    """One layer's matching, applicable to any (B, N, D) tensor over the same N tokens.

    Index tensors are (B, k) positions *within* set A (``x[:, ::2]``) or set B (``x[:, 1::2]``).
    """

    num_tokens: int
    kept_a: Tensor  # (B, nA - r) A positions that stay, ascending
    merged_a: Tensor  # (B, r) A positions that join a B token
    partner_b: Tensor  # (B, r) the B position each merged A token joins

    @property
    def r(self) -> int:
        return self.merged_a.shape[1]

    @property
    def num_tokens_after(self) -> int:
        """Tokens left after this merge."""
        return self.num_tokens - self.r

    @property
    def assignment(self) -> Tensor:
        """(B, N) long: for every input token, the index of the output token it ends up in."""
        batch = self.kept_a.shape[0]
        device = self.kept_a.device
        if self.r == 0:
            return torch.arange(self.num_tokens, device=device).expand(batch, -1)
        num_a, num_b = (self.num_tokens + 1) // 2, self.num_tokens // 2
        num_kept = num_a - self.r
        a_to_out = torch.empty(batch, num_a, dtype=torch.long, device=device)
        a_to_out.scatter_(1, self.kept_a, torch.arange(num_kept, device=device).expand(batch, -1))
        a_to_out.scatter_(1, self.merged_a, num_kept + self.partner_b)
        out = torch.empty(batch, self.num_tokens, dtype=torch.long, device=device)
        out[:, ::2] = a_to_out
        out[:, 1::2] = num_kept + torch.arange(num_b, device=device)
        return out

    def __call__(self, x: Tensor, mode: str = "mean", sizes: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Merge ``x`` (B, N, D); returns ``(x_merged, sizes_merged)``.

        ``sizes`` (B, N) only applies to "weighted" mode, where None means every token has size 1; the returned
        sizes are None in "mean" mode. Accumulates in at least fp32 and returns ``x``'s dtype.
        """
        check_merge_mode(mode)
        if mode == "mean" and sizes is not None:
            raise ValueError('token sizes only apply to merge mode "weighted"; mode "mean" is a plain mean')
        batch = self.kept_a.shape[0]
        if x.ndim != 3 or x.shape[0] != batch or x.shape[1] != self.num_tokens:
            raise ValueError(f"x must be (B={batch}, N={self.num_tokens}, D) like the matching, got {tuple(x.shape)}")
        if sizes is not None and sizes.shape != x.shape[:2]:
            raise ValueError(f"sizes must be (B, N) = {tuple(x.shape[:2])}, got {tuple(sizes.shape)}")
        if self.r == 0:
            return x, sizes
        accumulate = torch.promote_types(x.dtype, torch.float32)
        if mode == "mean":
            return self._reduce(x.to(accumulate), "mean").to(x.dtype), None
        if sizes is None:
            sizes = torch.ones(x.shape[:2], dtype=accumulate, device=x.device)
        weights = sizes.to(accumulate).unsqueeze(-1)
        weighted_sum = self._reduce(x.to(accumulate) * weights, "sum")
        merged_sizes = self._reduce(weights, "sum")
        return (weighted_sum / merged_sizes).to(x.dtype), merged_sizes.squeeze(-1)

    def _reduce(self, x: Tensor, reduce: str) -> Tensor:
        """Gather kept A tokens, fold merged A tokens into their B partner with ``reduce``, concatenate."""
        width = x.shape[-1]
        set_a, set_b = x[:, ::2], x[:, 1::2]
        kept = set_a.gather(1, self.kept_a.unsqueeze(-1).expand(-1, -1, width))
        joining = set_a.gather(1, self.merged_a.unsqueeze(-1).expand(-1, -1, width))
        index_b = self.partner_b.unsqueeze(-1).expand(-1, -1, width)
        set_b = set_b.scatter_reduce(1, index_b, joining, reduce=reduce, include_self=True)
        return torch.cat([kept, set_b], dim=1)


def bipartite_soft_matching(metric: Tensor, r: int, protect_cls: bool = True) -> Merge:
    """Match tokens by cosine similarity of ``metric`` (B, N, C) and merge ``r`` of them (capped to what N allows).

    The similarity and ranking run in at least fp32 outside autocast and without autograd (they only pick indices),
    so bf16 activations give the same matching as fp32 ones up to their rounding. Ties rank the earlier A token first.
    """
    if metric.ndim != 3:
        raise ValueError(f"metric must be (B, N, C), got shape {tuple(metric.shape)}")
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
        raise ValueError(f"r must be an int >= 0, got {r!r}")
    batch, num_tokens, _ = metric.shape
    r = min(r, max_merge_count(num_tokens, protect_cls))
    num_a = (num_tokens + 1) // 2
    device = metric.device
    if r == 0:
        everything = torch.arange(num_a, device=device).expand(batch, -1)
        nothing = torch.empty(batch, 0, dtype=torch.long, device=device)
        return Merge(num_tokens, everything, nothing, nothing)
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        unit = F.normalize(metric.detach().to(torch.promote_types(metric.dtype, torch.float32)), dim=-1)
        scores = unit[:, ::2] @ unit[:, 1::2].transpose(1, 2)  # (B, nA, nB)
        if protect_cls:
            scores[:, 0, :] = -torch.inf
        best_score, best_b = scores.max(dim=-1)
        ranking = torch.sort(best_score, dim=-1, descending=True, stable=True).indices
        merged_a = ranking[:, :r]
        kept_a = ranking[:, r:].sort(dim=-1).values
        partner_b = best_b.gather(1, merged_a)
    return Merge(num_tokens, kept_a, merged_a, partner_b)


def compose_assignments(assignments: Sequence[Tensor]) -> Tensor:
    """Chain per-layer assignments into one: for every input token, its index among the last layer's outputs."""
    if not assignments:
        raise ValueError("need at least one assignment to compose")
    total = assignments[0]
    for step, nxt in enumerate(assignments[1:], start=1):
        if nxt.shape[0] != total.shape[0] or nxt.shape[1] != int(total.max()) + 1:
            raise ValueError(
                f"assignment {step} has shape {tuple(nxt.shape)} but the previous one maps into "
                f"{int(total.max()) + 1} tokens (batch {total.shape[0]})"
            )
        total = nxt.gather(1, total)
    return total
