"""`Embedder`: the one entry point the batch job, the server and notebooks share."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .backend import Backend, InputPreparer, PreparedInput, PrepareResult
from .device import resolve_attention, resolve_device, resolve_dtype
from .errors import InputTooLargeForDeviceError
from .model_info import ModelInfo, read_model_info
from .oom import TokenBudget
from .pooling import pool, truncate_and_normalize
from .preparer import Preparer
from .registry import lookup
from .runner import run_forwards
from .source import resolve_model_dir

if TYPE_CHECKING:
    from .vl.media import MediaOptions

logger = logging.getLogger(__name__)

# Tokens per forward pass when none is given: padded (CPU, non-Qwen, VL) forwards pay for their
# padding and a (B, T) attention working set; a packed forward on a GPU pays for real tokens only,
# and 0.6B needs tens of thousands of them per pass to keep an H100's matrix units busy.
DEFAULT_MAX_BATCH_TOKENS = 16384
DEFAULT_GPU_PACKED_BATCH_TOKENS = 65536
FORWARD_MODES = ("auto", "padded", "packed")
ITEM_ERRORS = ("raise", "collect")


@dataclass
class EmbeddingOutput:
    embeddings: (
        torch.Tensor
    )  # (N, dim) float32 on CPU, rows L2-normalised when the model normalises
    batch_size: int
    sequence_lengths: list[
        int
    ]  # tokens per input after truncation, special (and vision) tokens included
    # With `errors="collect"`: inputs that ran out of device memory even alone, by position; their
    # rows in `embeddings` are zeros and must not be used.
    failures: dict[int, InputTooLargeForDeviceError] = field(default_factory=dict)


class Embedder:
    """A loaded embedding model: prepare (CPU) -> forward (device) -> postprocess (pool, MRL, norm)."""

    def __init__(self, preparer: Preparer, backend: Backend, max_batch_tokens: int | None = None):
        if max_batch_tokens is None:
            max_batch_tokens = default_batch_tokens(backend)
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
        self.preparer = preparer
        self.backend = backend
        self.max_batch_tokens = max_batch_tokens
        # Shrinks on out-of-memory and grows back slowly; shared by every later call.
        self.budget = TokenBudget(max_batch_tokens)

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        max_length: int | None = None,
        max_batch_tokens: int | None = None,
        attn_implementation: str | None = None,
        revision: str | None = None,
        media_options: MediaOptions | None = None,
        forward_mode: str = "auto",
        compile: bool = False,
    ) -> Embedder:
        """Load from a hub id, a local directory or an fsspec URL (copied once into a local cache).

        `media_options` (VL only, `qwen3_embed.vl.media.MediaOptions`) says where images and videos
        may come from (local paths, URLs) and how large they may be; the default is permissive.

        `forward_mode`: "packed" (padding-free: one row of all the batch's tokens, attention per
        sequence; Qwen3 text models), "padded", or "auto" = packed for Qwen3 text on a GPU,
        padded otherwise (on a CPU the batched padded kernels are faster; both give the same
        vectors). `max_batch_tokens` (None = 65536 when packed on a GPU, else 16384) caps the
        tokens of one forward, padding included when padded. `compile=True` runs the backbone
        through `torch.compile` (dynamic shapes); the first batches pay for compilation.
        """
        source_text = os.fspath(source)
        model_dir = resolve_model_dir(source_text, revision)
        info = read_model_info(model_dir, lookup(source_text))
        preparer = Preparer.from_model_dir(source_text, model_dir, info, max_length, media_options)
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        attn = resolve_attention(attn_implementation)
        mode = resolve_forward_mode(forward_mode, preparer.info, torch_device)
        backend = _load_backend(model_dir, preparer.impl, torch_device, torch_dtype, attn, mode)
        if compile:
            backend.compile()
        embedder = cls(preparer, backend, max_batch_tokens)
        logger.info(
            "loaded %s on %s: forward_mode=%s, attention kernel=%s, compiled=%s, max_batch_tokens=%d",
            source_text,
            torch_device,
            embedder.forward_mode,
            getattr(backend, "packed_kernel", None) or attn,
            compile,
            embedder.max_batch_tokens,
        )
        return embedder

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
    def forward_mode(self) -> str:
        """ "packed" or "padded": the batch layout the forward passes use."""
        return self.backend.forward_mode

    @property
    def compiled(self) -> bool:
        return bool(getattr(self.backend, "compiled", False))

    @property
    def default_query_instruction(self) -> str | None:
        return self.info.default_query_instruction

    def validate_dim(self, dim: int | None) -> int:
        """The output dimension for `dim` (None = full size); a ValueError names the valid range."""
        return self.preparer.validate_dim(dim)

    # ------------------------------------------------------------------ stages
    def prepare_each(
        self,
        inputs: Sequence[Any],
        instruction: str | None = None,
        truncate: bool = True,
        max_length: int | None = None,
    ) -> list[PrepareResult]:
        """CPU stage, per item (see `Preparer.prepare_each`)."""
        return self.preparer.prepare_each(inputs, instruction, truncate, max_length)

    def prepare(
        self,
        inputs: Sequence[Any],
        instruction: str | None = None,
        truncate: bool = True,
        max_length: int | None = None,
    ) -> list[PreparedInput]:
        """CPU stage: raises the first InputError (see `Preparer.prepare`). `max_length`
        overrides the embedder's for this call."""
        return self.preparer.prepare(inputs, instruction, truncate, max_length)

    def forward_pooled(self, batch: Sequence[PreparedInput]) -> torch.Tensor:
        """Device stage for one batch: (B, H) pooled, not yet truncated or normalised."""
        hidden, attention_mask = self.backend.forward(batch)
        return pool(hidden, attention_mask, self.info.pooling_mode)

    def postprocess(self, pooled: torch.Tensor, dim: int | None) -> torch.Tensor:
        """(B, H) -> (B, dim) float32 CPU: Matryoshka slice, then L2-normalise."""
        return truncate_and_normalize(pooled, dim, self.info.normalize).cpu()

    def embed_prepared(
        self, prepared: Sequence[PreparedInput], dim: int | None = None, errors: str = "raise"
    ) -> EmbeddingOutput:
        """Batch by token budget over length-sorted inputs; results in input order.

        An input that runs out of device memory even alone is an `InputTooLargeForDeviceError`:
        `errors="raise"` raises it (naming its position); `errors="collect"` (the batch job and
        the server) returns every other vector and lists it in `failures`."""
        if errors not in ITEM_ERRORS:
            raise ValueError(
                f"errors={errors!r} is invalid; valid values are: {', '.join(ITEM_ERRORS)}"
            )
        out_dim = self.validate_dim(dim)
        lengths = [item.num_tokens for item in prepared]
        if not prepared:
            return EmbeddingOutput(torch.empty((0, out_dim), dtype=torch.float32), 0, lengths)
        vectors, failures = run_forwards(
            self.backend,
            prepared,
            out_dim,
            self.info.pooling_mode,
            lambda pooled: truncate_and_normalize(pooled, out_dim, self.info.normalize),
            self.budget,
        )
        failures = {position: error.at(position) for position, error in failures.items()}
        if failures and errors == "raise":
            raise failures[min(failures)]
        # The one device -> host copy of the call.
        return EmbeddingOutput(vectors.cpu(), len(prepared), lengths, failures)

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


def resolve_forward_mode(forward_mode: str, info: ModelInfo, device: torch.device) -> str:
    """ "auto" -> packed for Qwen3 text models on a GPU, else padded. An explicit "packed" that
    the model cannot run is refused, never quietly run padded."""
    if forward_mode not in FORWARD_MODES:
        raise ValueError(
            f"unknown forward_mode {forward_mode!r}; valid values are: {', '.join(FORWARD_MODES)}"
        )
    packable = info.family == "text" and info.is_qwen
    if forward_mode == "auto":
        return "packed" if packable and device.type == "cuda" else "padded"
    if forward_mode == "packed" and not packable:
        raise ValueError(
            f"forward_mode='packed' is for Qwen3 text models; this {info.family} model "
            f"({info.model_type!r}) runs padded: use forward_mode='padded' or 'auto'"
        )
    return forward_mode


def default_batch_tokens(backend: Backend) -> int:
    if backend.forward_mode == "packed" and backend.device.type == "cuda":
        return DEFAULT_GPU_PACKED_BATCH_TOKENS
    return DEFAULT_MAX_BATCH_TOKENS


def _load_backend(
    model_dir: os.PathLike,
    preparer: InputPreparer,
    device: torch.device,
    dtype: torch.dtype,
    attn: str,
    forward_mode: str,
) -> Backend:
    if preparer.info.family == "vl":
        from .vl.backend import VLBackend  # imported lazily: needs the [vl] extra

        return VLBackend(model_dir, preparer, device, dtype, attn)
    from .text_backend import TextBackend

    return TextBackend(model_dir, preparer, device, dtype, attn, forward_mode)
