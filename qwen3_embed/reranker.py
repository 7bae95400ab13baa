"""`Reranker`: Qwen3-Reranker (text) and Qwen3-VL-Reranker scores for (query, document) pairs.

Loading, devices, dtypes, token budgets, OOM splitting and progress are the `Embedder`'s own
(`embedder.load_backend`, `runner.run_forwards`, `oom.TokenBudget`): the backbone runs exactly as
an embedding model's, its last token's hidden state is taken, and the score is
`sigmoid(h · (w_yes - w_no))` with the two LM-head rows read from the checkpoint
(`rerank.head`) — the official VL reranker's head, and the text model card's
`softmax([logit_no, logit_yes])[yes]`, without ever computing the vocabulary's logits.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .contracts import Backend, PreparedInput, PrepareResult
from .embedder import ITEM_ERRORS, default_batch_tokens, load_backend, log_loaded
from .errors import InputTooLargeForDeviceError
from .model_info import ModelInfo
from .oom import TokenBudget
from .options import DTYPE_ALIASES, LoadOptions
from .progress import progress_bar, want_progress
from .rerank.head import read_score_vector
from .rerank.pairs import check_documents
from .rerank.preparer import RerankPreparer, read_reranker_info
from .rerank.quiet import quiet_head_report
from .runner import run_forwards
from .source import resolve_model_dir
from .task import require_task
from .vocabulary import Family

if TYPE_CHECKING:
    from .vl.media import MediaOptions

logger = logging.getLogger(__name__)


@dataclass
class RerankOutput:
    scores: np.ndarray  # (N,) float32 in [0, 1]; NaN where `failures` names the position
    sequence_lengths: list[int]  # tokens per pair, prompt and vision tokens included
    # With `errors="collect"`: pairs that ran out of device memory even alone, by position.
    failures: dict[int, InputTooLargeForDeviceError] = field(default_factory=dict)


class Reranker:
    """A loaded reranker: prepare pairs (CPU) -> forward (device) -> yes/no score."""

    def __init__(
        self,
        preparer: RerankPreparer,
        backend: Backend,
        score_vector: torch.Tensor,
        max_batch_tokens: int | None = None,
    ):
        if max_batch_tokens is None:
            max_batch_tokens = default_batch_tokens(backend)
        # Checked where it enters (`LoadOptions`, which from_pretrained / from_options build).
        assert max_batch_tokens >= 1, max_batch_tokens
        self.preparer = preparer
        self.backend = backend
        self.max_batch_tokens = max_batch_tokens
        self.budget = TokenBudget(max_batch_tokens)
        # (H, 1) float32 on the device: the score head, w_yes - w_no.
        self.score_vector = score_vector.to(torch.float32).reshape(-1, 1).to(backend.device)

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike,
        *,
        revision: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int | None = None,
        max_batch_tokens: int | None = None,
        forward_mode: str = "auto",
        attn_implementation: str | None = None,
        compile: bool = False,
        task: str | None = None,
        media_options: MediaOptions | None = None,
    ) -> Reranker:
        """Load a reranker from a hub id, a local directory or an fsspec URL; the knobs are
        `LoadOptions`' (as for `Embedder.from_pretrained`). `task="rerank"` declares a checkpoint
        whose task the files do not tell (see `qwen3_embed.task`); `media_options` (VL only)
        says where images and videos may come from and how large they may be."""
        options = LoadOptions(
            model=os.fspath(model),
            revision=revision,
            device=str(device or "auto"),
            dtype=DTYPE_ALIASES.get(
                str(dtype or "auto"), str(dtype or "auto").removeprefix("torch.")
            ),
            max_length=max_length,
            max_batch_tokens=max_batch_tokens,
            forward_mode=forward_mode,
            attn_implementation=attn_implementation or "auto",
            compile=compile,
        )
        return cls.from_options(options, media_options, task=task)

    @classmethod
    def from_options(
        cls,
        options: LoadOptions,
        media_options: MediaOptions | None = None,
        *,
        task: str | None = None,
    ) -> Reranker:
        """Load the reranker `options` describe (the layers' replicas load through here)."""
        source = options.model
        model_dir = resolve_model_dir(source, options.revision)
        require_task(source, model_dir, "rerank", task)
        info = read_reranker_info(source, model_dir)
        preparer = RerankPreparer.from_model_dir(
            source, model_dir, info, options.max_length, media_options
        )
        score_vector = read_score_vector(model_dir, preparer.yes_id, preparer.no_id)
        with quiet_head_report():
            backend = load_backend(options, model_dir, preparer.impl)
        reranker = cls(preparer, backend, score_vector, options.max_batch_tokens)
        log_loaded(source, backend, options, reranker.max_batch_tokens)
        return reranker

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
    def max_length(self) -> int:
        return self.preparer.max_length

    @property
    def default_instruction(self) -> str:
        return self.preparer.default_instruction

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @property
    def forward_mode(self) -> str:
        return self.backend.forward_mode

    # ------------------------------------------------------------------ stages
    def prepare_pairs(self, pairs: Sequence[Any], *args: Any, **kwargs: Any) -> list[PrepareResult]:
        """CPU stage, per pair: `RerankPreparer.prepare_pairs`, same arguments."""
        return self.preparer.prepare_pairs(pairs, *args, **kwargs)

    def postprocess(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, H) last-token hidden states -> (B, 1) float32 scores in [0, 1]."""
        return torch.sigmoid(pooled.to(torch.float32) @ self.score_vector)

    def rerank_prepared(
        self,
        prepared: Sequence[PreparedInput],
        errors: str = "raise",
        show_progress_bar: bool = False,
    ) -> RerankOutput:
        """Score prepared pairs, batched by token budget over length-sorted pairs; results in
        input order. A pair that runs out of device memory even alone is an
        `InputTooLargeForDeviceError`: raised with `errors="raise"`; with `errors="collect"` its
        score is NaN and it is listed in `failures` (the batch job and the server)."""
        if errors not in ITEM_ERRORS:
            raise ValueError(
                f"errors={errors!r} is invalid; valid values are: {', '.join(ITEM_ERRORS)}"
            )
        lengths = [item.num_tokens for item in prepared]
        if not prepared:
            return RerankOutput(np.empty((0,), dtype=np.float32), lengths)
        bar = (
            progress_bar(len(prepared), desc="reranking", unit="pair")
            if show_progress_bar
            else None
        )
        try:
            scores, failures = run_forwards(
                self.backend,
                prepared,
                1,
                "lasttoken",
                self.postprocess,
                self.budget,
                progress=bar.update if bar is not None else None,
            )
        finally:
            if bar is not None:
                bar.close()
        failures = {position: error.at(position) for position, error in failures.items()}
        if failures and errors == "raise":
            raise failures[min(failures)]
        values = scores[:, 0].cpu().numpy().astype(np.float32)
        for position in failures:
            values[position] = np.nan
        return RerankOutput(values, lengths, failures)

    def score_prepared(
        self, prepared: Sequence[PreparedInput], show_progress_bar: bool = False
    ) -> np.ndarray:
        """(N,) float32 scores of prepared pairs (raises for a pair too large for the device)."""
        return self.rerank_prepared(prepared, "raise", show_progress_bar).scores

    def score_pairs(
        self,
        pairs: Sequence[tuple[Any, Any]],
        instruction: str | None = None,
        truncate: bool = True,
        *,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray:
        """Relevance of each (query, document) pair: (N,) float32 in [0, 1]. `instruction`
        (None = `default_instruction`) applies to every pair; over-long pairs are truncated the
        official way (or refused with `truncate=False`). A bad pair raises an InputError naming
        its index. VL: a query or document is a string or an item dict (text / image / video)."""
        prepared = self.preparer.prepare(pairs, instruction, truncate)
        return self.score_prepared(
            prepared, show_progress_bar=want_progress(show_progress_bar, len(prepared))
        )

    def score(
        self,
        query: Any,
        documents: Sequence[Any],
        instruction: str | None = None,
        truncate: bool = True,
        *,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray:
        """Relevance of each document to `query`: (len(documents),) float32 in [0, 1]."""
        documents = check_documents(documents)
        return self.score_pairs(
            [(query, document) for document in documents],
            instruction,
            truncate,
            show_progress_bar=show_progress_bar,
        )

    def __repr__(self) -> str:
        return f"Reranker({self.source!r}, family={self.family!r}, device={self.device})"
