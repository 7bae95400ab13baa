"""The contract between the Embedder and a model family's backend.

A backend does the family-specific halves of the work:
- `prepare_items` (CPU): validate, format prompts, tokenise, load media -> `PreparedInput`s;
- `forward` (device): one padded batch through the backbone -> hidden states + mask.
Pooling, Matryoshka truncation and normalisation live in `pooling.py`, shared by all families.

The Embedder drives a backend through two more steps, so that the host work of the next batch
overlaps the device work of the current one: `stage` (CPU: the batch's host tensors, pinned on a
GPU) and `forward_staged` (device: pooled `(B, H)` vectors, left on the device). Their defaults
fall back to `forward` + `pool`; a backend with a packed path (text) overrides them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import InputError
from .model_info import ModelInfo


@dataclass
class PreparedInput:
    """One input, ready for the device: token ids plus, for multimodal items, processed media.

    Everything is plain Python / numpy so it can cross process boundaries (Ray Data blocks,
    Serve replicas) cheaply. `num_tokens` counts every token the model will see, special and
    vision tokens included.
    """

    input_ids: list[int]
    media: dict[str, np.ndarray] = field(default_factory=dict)
    # Cut at max_length (truncation on): the model sees less than the whole input. Counted by
    # the batch job (`rows_truncated`), never silent.
    truncated: bool = False

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    def to_row(self) -> dict[str, Any]:
        """A flat dict for Arrow/Ray Data (media arrays kept as numpy)."""
        row: dict[str, Any] = {"input_ids": np.asarray(self.input_ids, dtype=np.int32)}
        row.update({f"media_{key}": value for key, value in self.media.items()})
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> PreparedInput:
        media = {
            key[len("media_") :]: np.asarray(value)
            for key, value in row.items()
            if key.startswith("media_") and value is not None
        }
        return cls(input_ids=[int(token) for token in row["input_ids"]], media=media)


PrepareResult = PreparedInput | InputError


class InputPreparer(ABC):
    """The CPU half of a family: tokenizer / processor only, no weights. Cheap to build in every
    CPU worker of a batch job."""

    info: ModelInfo

    @abstractmethod
    def prepare_items(
        self,
        items: Sequence[Any],
        instruction: str | None,
        truncate: bool,
        max_length: int,
        prompt: str | None = None,
    ) -> list[PrepareResult]:
        """One result per item, in order: a PreparedInput, or the InputError (without index) that
        makes the item invalid. Must not raise for a bad item. `prompt` (never given together
        with `instruction`) is a sentence-transformers literal prompt; an item's own instruction
        takes precedence over it."""


class Backend(ABC):
    """The device half of a family: the loaded backbone."""

    info: ModelInfo
    device: torch.device
    dtype: torch.dtype
    forward_mode: str = "padded"  # "padded" | "packed": the layout `forward_staged` runs
    attn_implementation: str = "sdpa"  # transformers' attention implementation it was loaded with

    @property
    def attention_kernel(self) -> str:
        """What the forwards' attention runs (a packed backend names its packed kernel)."""
        return self.attn_implementation

    @abstractmethod
    def forward(self, batch: Sequence[PreparedInput]) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden (B, T, H), attention_mask (B, T)) for a batch, on the backend's device."""

    def stage(self, batch: Sequence[PreparedInput]) -> Any:
        """Host-side preparation of a batch (run while the previous batch is on the device)."""
        return list(batch)

    def forward_staged(self, staged: Any, pooling_mode: str) -> torch.Tensor:
        """(B, H) pooled vectors of a staged batch, on the device (no host sync)."""
        from .pooling import pool

        hidden, attention_mask = self.forward(staged)
        return pool(hidden, attention_mask, pooling_mode)

    def compile(self, backend: str | None = None) -> None:
        """Fuse the forward with `torch.compile`; families without support say so."""
        raise ValueError(f"compile=True is not supported for the {self.info.family!r} family")
