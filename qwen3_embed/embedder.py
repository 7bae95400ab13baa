"""`Embedder`: the one entry point the batch job, the server and notebooks share."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .contracts import Backend, InputPreparer, PreparedInput, PrepareResult
from .device import resolve_attention, resolve_device, resolve_dtype
from .errors import InputTooLargeForDeviceError
from .model_info import ModelInfo, read_model_info
from .oom import TokenBudget
from .options import (
    DEFAULT_GPU_PACKED_BATCH_TOKENS,
    DEFAULT_MAX_BATCH_TOKENS,
    DTYPE_ALIASES,
    FORWARD_MODES,
    LoadOptions,
)
from .pooling import pool, truncate_and_normalize
from .preparer import Preparer
from .progress import PROGRESS_BAR_MIN_ITEMS, progress_bar, want_progress  # noqa: F401 (re-export)
from .registry import lookup
from .runner import run_forwards
from .source import resolve_model_dir
from .task import require_task
from .vocabulary import Family

if TYPE_CHECKING:
    import numpy as np

    from .chunking import Chunk
    from .vl.media import MediaOptions

logger = logging.getLogger(__name__)

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
    # `embed(precision=...)`: the values' precision (see `qwen3_embed.precision`); for anything
    # but float32, `embeddings` holds (N, width) float16 / int8 / uint8 values, packed bits for
    # binary / ubinary.
    precision: str = "float32"


class Embedder:
    """A loaded embedding model: prepare (CPU) -> forward (device) -> postprocess (pool, MRL, norm)."""

    def __init__(self, preparer: Preparer, backend: Backend, max_batch_tokens: int | None = None):
        if max_batch_tokens is None:
            max_batch_tokens = default_batch_tokens(backend)
        # Checked where it enters (`LoadOptions`, which from_pretrained / from_options build).
        assert max_batch_tokens >= 1, max_batch_tokens
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

        The keyword arguments are the knobs of `qwen3_embed.options.LoadOptions` (see its help
        texts, or `from_options`); `device` and `dtype` may also be torch objects.

        `media_options` (VL only, `qwen3_embed.vl.media.MediaOptions`) says where images and videos
        may come from (local paths, URLs) and how large they may be; the default is permissive.

        `forward_mode`: "packed" (padding-free: one row of all the batch's tokens, attention per
        sequence; Qwen3 text models), "padded", or "auto" = packed for Qwen3 text where a varlen
        attention kernel runs (a GPU in bf16/fp16 with torch >= 2.10, or flash-attn), padded
        otherwise (on a CPU the batched padded kernels are faster; both give the same
        vectors). `max_batch_tokens` (None = 65536 when packed on a GPU, else 16384) caps the
        tokens of one forward, padding included when padded. `compile=True` runs the backbone
        through `torch.compile` (dynamic shapes); the first batches pay for compilation.
        """
        options = LoadOptions(
            model=os.fspath(source),
            revision=revision,
            device=str(device),
            dtype=DTYPE_ALIASES.get(str(dtype), str(dtype).removeprefix("torch.")),
            max_length=max_length,
            max_batch_tokens=max_batch_tokens,
            forward_mode=forward_mode,
            attn_implementation=attn_implementation or "auto",
            compile=compile,
        )
        return cls.from_options(options, media_options)

    @classmethod
    def from_options(
        cls, options: LoadOptions, media_options: MediaOptions | None = None
    ) -> Embedder:
        """Load the model `options` describe (the batch job's, the Dataset stage's and Serve's
        replicas all load through here)."""
        source_text = options.model
        model_dir = resolve_model_dir(source_text, options.revision)
        # A reranker checkpoint looks like an embedding model to config.json: refuse it by the
        # signals `qwen3_embed.task` reads, naming the class to use.
        require_task(source_text, model_dir, "embed")
        info = read_model_info(model_dir, lookup(source_text))
        preparer = Preparer.from_model_dir(
            source_text, model_dir, info, options.max_length, media_options
        )
        backend = load_backend(options, model_dir, preparer.impl)
        embedder = cls(preparer, backend, options.max_batch_tokens)
        log_loaded(source_text, backend, options, embedder.max_batch_tokens)
        return embedder

    # -------------------------------------------------------------- properties
    @property
    def info(self) -> ModelInfo:
        return self.preparer.info

    @property
    def source(self) -> str:
        return self.preparer.source

    @property
    def family(self) -> Family:
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
    def attention_kernel(self) -> str:
        """What attention runs: `varlen_attn` (torch's varlen kernel), `flash_attn_varlen` (the
        flash-attn package's) or `per_sequence_sdpa` when packed; the model's attention
        implementation (`sdpa`, `eager`, `flash_attention_2`) when padded."""
        return self.backend.attention_kernel

    def describe(self) -> dict[str, Any]:
        """How this model runs, as the batch job's manifest and Serve's `/v1/models` report it:
        device, dtype, forward mode, attention kernel, compiled, token budget."""
        return {
            "device": str(self.device),
            "dtype": str(self.backend.dtype).removeprefix("torch."),
            "forward_mode": self.forward_mode,
            "attention_kernel": self.attention_kernel,
            "compiled": self.compiled,
            "max_batch_tokens": self.max_batch_tokens,
        }

    @property
    def default_query_instruction(self) -> str | None:
        return self.info.default_query_instruction

    @property
    def prompts(self) -> dict[str, str]:
        """Named prompts from the model's `config_sentence_transformers.json` (name -> literal
        prefix; Qwen3-Embedding ships "query" = `Instruct: <web search task>\nQuery:` and
        "document" = ""), for `prompt_name=`. As in sentence-transformers, "query" and
        "document" are always there ("" unless the file sets them)."""
        return self.preparer.prompts

    @property
    def default_prompt_name(self) -> str | None:
        """The prompt applied when a call gives no instruction, prompt or prompt_name."""
        return self.info.default_prompt_name

    def validate_dim(self, dim: int | None, name: str = "dim") -> int:
        """The output dimension for `dim` (None = full size); a `DimensionError` names the valid
        range and the value by its caller's field `name` (`Preparer.validate_dim`)."""
        return self.preparer.validate_dim(dim, name)

    def apply_dim(self, vectors: torch.Tensor, dim: int | None) -> torch.Tensor:
        """(N, H) pooled vectors, or this model's own vectors at any width >= `dim`, -> (N, dim)
        float32 on their device (None: all of their width): the Matryoshka slice, then
        L2-normalisation when the model normalises (`pooling.truncate_and_normalize`). The one
        place a dimension is applied: `embed_prepared`'s forwards use it, and so does the server
        for the rows of a batch embedded at full size (normalising before the slice changes
        nothing, as normalising only scales a row). `dim` is trusted: `validate_dim` checks it
        where it enters."""
        return truncate_and_normalize(vectors, dim, self.info.normalize)

    # ------------------------------------------------------------------ stages
    def prepare_each(self, inputs: Sequence[Any], *args: Any, **kwargs: Any) -> list[PrepareResult]:
        """CPU stage, per item: `Preparer.prepare_each`, same arguments (instruction, truncate,
        max_length, prompt=, prompt_name=)."""
        return self.preparer.prepare_each(inputs, *args, **kwargs)

    def prepare(self, inputs: Sequence[Any], *args: Any, **kwargs: Any) -> list[PreparedInput]:
        """CPU stage, raising the first InputError: `Preparer.prepare`, same arguments."""
        return self.preparer.prepare(inputs, *args, **kwargs)

    def forward_pooled(self, batch: Sequence[PreparedInput]) -> torch.Tensor:
        """Device stage for one batch: (B, H) pooled, not yet truncated or normalised."""
        hidden, attention_mask = self.backend.forward(batch)
        return pool(hidden, attention_mask, self.info.pooling_mode)

    def postprocess(self, pooled: torch.Tensor, dim: int | None) -> torch.Tensor:
        """(B, H) -> (B, dim) float32 CPU: Matryoshka slice, then L2-normalise (`apply_dim`)."""
        return self.apply_dim(pooled, dim).cpu()

    def embed_prepared(
        self,
        prepared: Sequence[PreparedInput],
        dim: int | None = None,
        errors: str = "raise",
        show_progress_bar: bool = False,
    ) -> EmbeddingOutput:
        """Batch by token budget over length-sorted inputs; results in input order.

        An input that runs out of device memory even alone is an `InputTooLargeForDeviceError`:
        `errors="raise"` raises it (naming its position); `errors="collect"` (the batch job and
        the server) returns every other vector and lists it in `failures`. `show_progress_bar`
        draws a tqdm bar of inputs done (off here: the batch job and the server call this)."""
        if errors not in ITEM_ERRORS:
            raise ValueError(
                f"errors={errors!r} is invalid; valid values are: {', '.join(ITEM_ERRORS)}"
            )
        return self._embed_checked(prepared, self.validate_dim(dim), errors, show_progress_bar)

    def _embed_checked(
        self,
        prepared: Sequence[PreparedInput],
        out_dim: int,
        errors: str,
        show_progress_bar: bool,
    ) -> EmbeddingOutput:
        """`embed_prepared` once its arguments are checked (`embed` checks them first too)."""
        lengths = [item.num_tokens for item in prepared]
        if not prepared:
            return EmbeddingOutput(torch.empty((0, out_dim), dtype=torch.float32), 0, lengths)
        bar = progress_bar(len(prepared)) if show_progress_bar else None
        try:
            vectors, failures = run_forwards(
                self.backend,
                prepared,
                out_dim,
                self.info.pooling_mode,
                lambda pooled: self.apply_dim(pooled, out_dim),
                self.budget,
                progress=bar.update if bar is not None else None,
            )
        finally:
            if bar is not None:
                bar.close()
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
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        show_progress_bar: bool | None = None,
        precision: str = "float32",
        ranges: Any = None,
    ) -> EmbeddingOutput:
        """Embed `inputs` (queries when `instruction` is given, documents otherwise).

        `prompt_name` (a key of `prompts`, e.g. "query") or a literal `prompt` instead of
        `instruction`, as in sentence-transformers. `show_progress_bar`: None = a tqdm bar from
        `PROGRESS_BAR_MIN_ITEMS` inputs on, in a notebook or a terminal; True / False force it.
        `precision` (float32, float16, int8, uint8, binary, ubinary) quantises the vectors by
        `qwen3_embed.precision.quantize`; int8 / uint8 need `ranges` (2, dim), e.g. a batch
        job's manifest's `precision.ranges` or `precision.calibration_ranges(sample_vectors)`."""
        from .precision import check_quantization, quantize

        out_dim = self.validate_dim(dim)  # fail before any work
        check_quantization(precision, ranges, out_dim)
        prepared = self.prepare(
            inputs, instruction, truncate, prompt=prompt, prompt_name=prompt_name
        )
        output = self._embed_checked(
            prepared, out_dim, "raise", want_progress(show_progress_bar, len(prepared))
        )
        if precision == "float32":
            return output
        output.embeddings = torch.from_numpy(quantize(output.embeddings.numpy(), precision, ranges))
        output.precision = precision
        return output

    def encode(
        self,
        inputs: Sequence[Any] | str | dict,
        prompt_name: str | None = None,
        prompt: str | None = None,
        *,
        instruction: str | None = None,
        truncate_dim: int | None = None,
        truncate: bool = True,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        precision: str = "float32",
        ranges: Any = None,
    ) -> np.ndarray | torch.Tensor:
        """`embed` with sentence-transformers' `encode` conventions, for notebooks and tools
        written against it: returns the (N, dim) float32 vectors themselves, a numpy array by
        default (`convert_to_numpy=True`), a CPU tensor with `convert_to_tensor=True` (which wins,
        as there) or `convert_to_numpy=False`; one item (a string, or a VL dict) gives one 1-D
        vector. `truncate_dim` is `embed`'s `dim`. Vectors are L2-normalised when the model
        normalises (sentence-transformers' `normalize_embeddings` is not needed). `precision`
        and `ranges` as in `embed` (sentence-transformers' `encode(precision=...)` computes int8
        ranges from the call's own vectors; here they are given, so calls stay comparable)."""
        single = isinstance(inputs, (str, dict))
        items = [inputs] if single else inputs
        output = self.embed(
            items,  # type: ignore[arg-type]
            instruction,
            truncate_dim,
            truncate,
            prompt_name=prompt_name,
            prompt=prompt,
            show_progress_bar=show_progress_bar,
            precision=precision,
            ranges=ranges,
        )
        vectors = output.embeddings[0] if single else output.embeddings
        if convert_to_tensor or not convert_to_numpy:
            return vectors
        return vectors.numpy()

    def chunk(
        self, text: str, chunk_tokens: int, overlap: int = 0, instruction: str | None = None
    ) -> list[Chunk]:
        """`text` cut into chunks of at most `chunk_tokens` tokens as embedded (prompt and special
        tokens included), neighbours sharing `overlap` tokens: `qwen3_embed.chunking.chunk_text`.
        `self.embed([text[c.char_start:c.char_end]], instruction)` is each chunk's vector."""
        from .chunking import chunk_text

        return chunk_text(self, text, chunk_tokens, overlap, instruction)

    def __repr__(self) -> str:
        return f"Embedder({self.source!r}, family={self.family!r}, hidden_size={self.hidden_size}, device={self.device})"


def resolve_forward_mode(
    forward_mode: str,
    info: ModelInfo,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    attn: str = "sdpa",
) -> str:
    """ "auto" -> packed for Qwen3 text models where packed attention runs a varlen kernel
    (torch's `varlen_attn` on CUDA in bf16/fp16, torch >= 2.10, or flash-attn's), else padded:
    elsewhere packed means one SDPA call per sequence per layer plus a host sync per layer,
    slower than padded on a GPU. An explicit "packed" that the model cannot run is refused,
    never quietly run padded."""
    from .text.packed_attention import varlen_kernel

    if forward_mode not in FORWARD_MODES:
        raise ValueError(
            f"unknown forward_mode {forward_mode!r}; valid values are: {', '.join(FORWARD_MODES)}"
        )
    packable = info.family == "text" and info.is_qwen
    if forward_mode == "auto":
        return "packed" if packable and varlen_kernel(attn, device, dtype) else "padded"
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


def load_backend(options: LoadOptions, model_dir: os.PathLike, impl: InputPreparer) -> Backend:
    """The device half for `impl`'s family under `options`' device, dtype, attention kernel,
    forward mode and compile knobs (the Embedder's and the Reranker's, alike)."""
    torch_device = resolve_device(options.device)
    torch_dtype = resolve_dtype(options.dtype, torch_device)
    attn = resolve_attention(options.attn_implementation)
    mode = resolve_forward_mode(options.forward_mode, impl.info, torch_device, torch_dtype, attn)
    backend = _load_backend(model_dir, impl, torch_device, torch_dtype, attn, mode)
    backend.attn_implementation = attn
    if options.compile:
        backend.compile()
    return backend


def log_loaded(source: str, backend: Backend, options: LoadOptions, max_batch_tokens: int) -> None:
    logger.info(
        "loaded %s on %s (%s): forward_mode=%s, attention kernel=%s, compiled=%s, "
        "max_batch_tokens=%d",
        source,
        backend.device,
        str(backend.dtype).removeprefix("torch."),
        backend.forward_mode,
        backend.attention_kernel,
        options.compile,
        max_batch_tokens,
    )


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
    from .text.backend import TextBackend

    return TextBackend(model_dir, preparer, device, dtype, attn, forward_mode)
