"""`Embedder`: the one entry point the batch job, the server and notebooks share."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .backend import Backend, InputPreparer, PreparedInput, PrepareResult
from .batching import plan_batches
from .device import resolve_attention, resolve_device, resolve_dtype
from .model_info import ModelInfo, read_model_info
from .pooling import pool, truncate_and_normalize
from .preparer import Preparer
from .registry import lookup
from .source import resolve_model_dir

if TYPE_CHECKING:
    from .vl.media import MediaOptions

DEFAULT_MAX_BATCH_TOKENS = 16384


@dataclass
class EmbeddingOutput:
    embeddings: (
        torch.Tensor
    )  # (N, dim) float32 on CPU, rows L2-normalised when the model normalises
    batch_size: int
    sequence_lengths: list[
        int
    ]  # tokens per input after truncation, special (and vision) tokens included


class Embedder:
    """A loaded embedding model: prepare (CPU) -> forward (device) -> postprocess (pool, MRL, norm)."""

    def __init__(
        self, preparer: Preparer, backend: Backend, max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    ):
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
        self.preparer = preparer
        self.backend = backend
        self.max_batch_tokens = max_batch_tokens

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        max_length: int | None = None,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        attn_implementation: str | None = None,
        revision: str | None = None,
        media_options: MediaOptions | None = None,
    ) -> Embedder:
        """Load from a hub id, a local directory or an fsspec URL (copied once into a local cache).

        `media_options` (VL only, `qwen3_embed.vl.media.MediaOptions`) says where images and videos
        may come from (local paths, URLs) and how large they may be; the default is permissive.
        """
        source_text = os.fspath(source)
        model_dir = resolve_model_dir(source_text, revision)
        info = read_model_info(model_dir, lookup(source_text))
        preparer = Preparer.from_model_dir(source_text, model_dir, info, max_length, media_options)
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        attn = resolve_attention(attn_implementation)
        backend = _load_backend(model_dir, preparer.impl, torch_device, torch_dtype, attn)
        return cls(preparer, backend, max_batch_tokens)

    # -------------------------------------------------------------- properties
    @property
    def info(self) -> ModelInfo:
        return self.preparer.info

    @property
    def source(self) -> str:
        return self.preparer.source

    @property
    def family(self) -> str:
        return self.info.family

    @property
    def hidden_size(self) -> int:
        return self.info.hidden_size

    @property
    def min_dim(self) -> int:
        return self.info.min_dim

    @property
    def max_length(self) -> int:
        return self.preparer.max_length

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @property
    def default_query_instruction(self) -> str | None:
        return self.info.default_query_instruction

    def validate_dim(self, dim: int | None) -> int:
        """The output dimension for `dim` (None = full size); a ValueError names the valid range."""
        return self.preparer.validate_dim(dim)

    # ------------------------------------------------------------------ stages
    def prepare_each(
        self, inputs: Sequence[Any], instruction: str | None = None, truncate: bool = True
    ) -> list[PrepareResult]:
        """CPU stage, per item (see `Preparer.prepare_each`)."""
        return self.preparer.prepare_each(inputs, instruction, truncate)

    def prepare(
        self, inputs: Sequence[Any], instruction: str | None = None, truncate: bool = True
    ) -> list[PreparedInput]:
        """CPU stage: raises the first InputError (see `Preparer.prepare`)."""
        return self.preparer.prepare(inputs, instruction, truncate)

    def forward_pooled(self, batch: Sequence[PreparedInput]) -> torch.Tensor:
        """Device stage for one batch: (B, H) pooled, not yet truncated or normalised."""
        hidden, attention_mask = self.backend.forward(batch)
        return pool(hidden, attention_mask, self.info.pooling_mode)

    def postprocess(self, pooled: torch.Tensor, dim: int | None) -> torch.Tensor:
        """(B, H) -> (B, dim) float32 CPU: Matryoshka slice, then L2-normalise."""
        return truncate_and_normalize(pooled, dim, self.info.normalize).cpu()

    def embed_prepared(
        self, prepared: Sequence[PreparedInput], dim: int | None = None
    ) -> EmbeddingOutput:
        """Batch by padded-token budget over length-sorted inputs; results in input order."""
        out_dim = self.validate_dim(dim)
        lengths = [item.num_tokens for item in prepared]
        embeddings = torch.empty((len(prepared), out_dim), dtype=torch.float32)
        for indices in plan_batches(lengths, self.max_batch_tokens):
            pooled = self.forward_pooled([prepared[i] for i in indices])
            embeddings[indices] = self.postprocess(pooled, out_dim)
        return EmbeddingOutput(embeddings, len(prepared), lengths)

    def embed(
        self,
        inputs: Sequence[Any],
        instruction: str | None = None,
        dim: int | None = None,
        truncate: bool = True,
    ) -> EmbeddingOutput:
        """Embed `inputs` (queries when `instruction` is given, documents otherwise)."""
        self.validate_dim(dim)  # fail before any work
        return self.embed_prepared(self.prepare(inputs, instruction, truncate), dim)

    def __repr__(self) -> str:
        return f"Embedder({self.source!r}, family={self.family!r}, hidden_size={self.hidden_size}, device={self.device})"


def _load_backend(
    model_dir: os.PathLike,
    preparer: InputPreparer,
    device: torch.device,
    dtype: torch.dtype,
    attn: str,
) -> Backend:
    if preparer.info.family == "vl":
        from .vl.backend import VLBackend  # imported lazily: needs the [vl] extra

        return VLBackend(model_dir, preparer, device, dtype, attn)
    from .text_backend import TextBackend

    return TextBackend(model_dir, preparer, device, dtype, attn)
