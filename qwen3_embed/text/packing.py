"""Host-side batch tensors for the text backend: padded `(B, T)` or packed `(1, ΣT)`.

Built on the CPU while the previous batch runs on the device, pinned when the device is a GPU so
that `to(device)` is an asynchronous copy (`non_blocking=True`) instead of a synchronising one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..contracts import PreparedInput


def _maybe_pin(tensor: torch.Tensor, pin: bool) -> torch.Tensor:
    return tensor.pin_memory() if pin else tensor


@dataclass(frozen=True)
class PaddedBatch:
    input_ids: torch.Tensor  # (B, T) int64
    attention_mask: torch.Tensor  # (B, T) int64, 1 = real token

    def to(self, device: torch.device) -> PaddedBatch:
        return PaddedBatch(
            self.input_ids.to(device, non_blocking=True),
            self.attention_mask.to(device, non_blocking=True),
        )


@dataclass(frozen=True)
class PackedBatch:
    """N sequences laid end to end in one row; `cu_seq_lens` are their boundaries."""

    input_ids: torch.Tensor  # (1, ΣT) int64
    position_ids: torch.Tensor  # (1, ΣT) int64, restarting at 0 for every sequence
    cu_seq_lens: torch.Tensor  # (N + 1,) int32: 0, L0, L0 + L1, ...
    max_length: int  # the longest sequence (flash varlen kernels want it as a Python int)

    @property
    def num_sequences(self) -> int:
        return self.cu_seq_lens.shape[0] - 1

    def last_token_index(self) -> torch.Tensor:
        """(N,) position of each sequence's last token in the packed row."""
        return self.cu_seq_lens[1:].long() - 1

    def to(self, device: torch.device) -> PackedBatch:
        return PackedBatch(
            self.input_ids.to(device, non_blocking=True),
            self.position_ids.to(device, non_blocking=True),
            self.cu_seq_lens.to(device, non_blocking=True),
            self.max_length,
        )


def pad_batch(
    batch: Sequence[PreparedInput], pad_id: int, left: bool, pin: bool = False
) -> PaddedBatch:
    """(B, T) ids and mask, padded on the left or on the right."""
    longest = max(item.num_tokens for item in batch)
    input_ids = np.full((len(batch), longest), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(batch), longest), dtype=np.int64)
    for row, item in enumerate(batch):
        span = slice(longest - item.num_tokens, longest) if left else slice(0, item.num_tokens)
        input_ids[row, span] = item.input_ids
        attention_mask[row, span] = 1
    return PaddedBatch(
        _maybe_pin(torch.from_numpy(input_ids), pin),
        _maybe_pin(torch.from_numpy(attention_mask), pin),
    )


def pack_batch(batch: Sequence[PreparedInput], pin: bool = False) -> PackedBatch:
    """One row of every item's tokens, positions counted per item (as if each were alone)."""
    lengths = np.array([item.num_tokens for item in batch], dtype=np.int64)
    input_ids = np.concatenate([np.asarray(item.input_ids, dtype=np.int64) for item in batch])
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    position_ids = np.arange(int(lengths.sum()), dtype=np.int64) - starts
    cu_seq_lens = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return PackedBatch(
        _maybe_pin(torch.from_numpy(input_ids).unsqueeze(0), pin),
        _maybe_pin(torch.from_numpy(position_ids).unsqueeze(0), pin),
        _maybe_pin(torch.from_numpy(cu_seq_lens), pin),
        int(lengths.max()),
    )
