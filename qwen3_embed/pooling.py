"""Pooling, Matryoshka truncation and normalisation: the one place vectors are made from hidden
states. Order matters: pool -> truncate to `dim` -> L2-normalise (truncate *before* normalising,
as the official code, vLLM and TEI do; sentence-transformers' `truncate_dim` instead slices
after its Normalize module, so its truncated vectors are not unit length) -> float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .vocabulary import POOLING_MODES, PoolingMode


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H), (B, T) -> (B, H): the hidden state at each row's last attended position.

    Works for left and right padding alike: the flipped mask's argmax is the distance of the
    last 1 from the end.
    """
    seq_len = attention_mask.shape[1]
    last_index = seq_len - 1 - attention_mask.flip(1).int().argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H), (B, T) -> (B, H): mean over attended positions, summed in fp32."""
    mask = attention_mask.unsqueeze(-1).to(torch.float32)
    summed = (hidden.to(torch.float32) * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1e-9)


def cls_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H) -> (B, H): the first position (assumes right padding, as BERT-style models use)."""
    return hidden[:, 0]


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: PoolingMode) -> torch.Tensor:
    if mode == "lasttoken":
        return last_token_pool(hidden, attention_mask)
    if mode == "mean":
        return mean_pool(hidden, attention_mask)
    if mode == "cls":
        return cls_pool(hidden, attention_mask)
    raise ValueError(f"unknown pooling mode {mode!r}; valid values are: {', '.join(POOLING_MODES)}")


def truncate_and_normalize(
    pooled: torch.Tensor, dim: int | None, normalize: bool = True
) -> torch.Tensor:
    """(B, H) -> (B, dim) float32: Matryoshka slice first, then L2-normalise."""
    vectors = pooled.to(torch.float32)
    if dim is not None:
        vectors = vectors[:, :dim]
    if normalize:
        vectors = F.normalize(vectors, p=2, dim=1)
    return vectors
