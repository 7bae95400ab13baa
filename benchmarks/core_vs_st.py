"""Benchmark 1: `Embedder.embed` vs `SentenceTransformer.encode` on the same checkpoint.

Same texts, same max length, same outputs (checked before timing). The peer runs with its
defaults (batch 32, length-sorted) and with its best batch size from a sweep.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from qwen3_embed import Embedder
from qwen3_embed.batching import padding_ratio, plan_batches
from qwen3_embed.testing import make_tiny_text_model

from .corpus import make_corpus
from .machine import gemm_flops_per_second, synchronize

TASK = "Given a web search query, retrieve relevant passages that answer the query"


@dataclass(frozen=True)
class Shape:
    """A Qwen3 architecture to benchmark with random weights."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    # Every Qwen3 embedding model has head_dim 128, whatever hidden / heads is (0.6B: 1024 / 16
    # heads; 4B: 2560 / 32; 8B: 4096 / 32); None = hidden / heads (the small CPU shapes).
    head_dim: int | None = None

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    def non_embedding_params(self) -> int:
        head_dim = self.head_size
        attention = (
            2 * self.hidden_size * self.num_heads * head_dim
            + 2 * self.hidden_size * self.num_kv_heads * head_dim
        )
        mlp = 3 * self.hidden_size * self.intermediate_size
        return self.num_layers * (attention + mlp)

    def flops(self, lengths: list[int]) -> float:
        """Forward FLOPs: 2 x params x tokens, plus causal attention (QK^T and AV over T^2/2 pairs)."""
        attention_width = self.num_heads * self.head_size
        dense = 2 * self.non_embedding_params() * sum(lengths)
        attention = sum(2 * self.num_layers * attention_width * t * t for t in lengths)
        return float(dense + attention)


CPU_SHAPE = Shape("qwen3-mid-random (hidden 512, 8 layers)", 512, 8, 8, 4, 1536)
QUICK_SHAPE = Shape("qwen3-tiny-random (hidden 64, 2 layers)", 64, 2, 4, 2, 128)
# The real 0.6B / 4B architectures (random weights), for GPU runs.
QWEN3_06B = Shape("Qwen3-Embedding-0.6B architecture (random weights)", 1024, 28, 16, 8, 3072, 128)
QWEN3_4B = Shape("Qwen3-Embedding-4B architecture (random weights)", 2560, 36, 32, 8, 9728, 128)


def build_model(shape: Shape, directory: Path) -> Path:
    return make_tiny_text_model(
        directory,
        hidden_size=shape.hidden_size,
        num_layers=shape.num_layers,
        num_heads=shape.num_heads,
        num_kv_heads=shape.num_kv_heads,
        intermediate_size=shape.intermediate_size,
        head_dim=shape.head_size,
    )


def _log(message: str) -> None:
    print(f"   {message}", file=sys.stderr, flush=True)


def _timed(fn, device: torch.device, runs: int) -> tuple[float, object]:
    timings, result = [], None
    for _ in range(runs):
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        timings.append(time.perf_counter() - start)
    return statistics.median(timings), result


def _sentence_transformer(
    model_dir: Path, hidden_size: int, device: torch.device, dtype: torch.dtype, max_length: int
):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    transformer = Transformer(
        str(model_dir),
        max_seq_length=max_length,
        processor_kwargs={"padding_side": "left"},
        model_kwargs={"dtype": dtype},
    )
    pooling = Pooling(hidden_size, pooling_mode="lasttoken")
    return SentenceTransformer(modules=[transformer, pooling, Normalize()], device=str(device))


def run(device: torch.device, quick: bool, shapes: list[Shape] | None = None) -> list[dict]:
    if shapes is None:
        shapes = (
            [QUICK_SHAPE]
            if quick
            else ([QWEN3_06B, QWEN3_4B] if device.type == "cuda" else [CPU_SHAPE])
        )
    return [_run_shape(shape, device, quick) for shape in shapes]


def _run_shape(shape: Shape, device: torch.device, quick: bool) -> dict:
    count, high, runs = (48, 256, 1) if quick else (300, 2048, 3)
    sweep = [8, 32] if quick else [8, 16, 32, 64, 128]
    max_length = 8192
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    texts = make_corpus(count, low=8, high=high, median=30 if quick else 60)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(shape, Path(tmp) / "model")
        embedder = Embedder.from_pretrained(
            model_dir, device=device, dtype=dtype, max_length=max_length
        )
        peer = _sentence_transformer(model_dir, shape.hidden_size, device, dtype, max_length)
        peer_encode = lambda batch_size: peer.encode(  # noqa: E731
            texts, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True
        )

        # Same outputs before any timing.
        ours_vectors = embedder.embed(texts).embeddings
        peer_vectors = peer_encode(32).float().cpu()
        max_abs_diff = (ours_vectors - peer_vectors).abs().max().item()
        cosine_min = torch.nn.functional.cosine_similarity(ours_vectors, peer_vectors).min().item()
        if device.type == "cpu" and max_abs_diff > 1e-4:
            raise AssertionError(
                f"outputs differ from sentence-transformers: max abs diff {max_abs_diff}"
            )

        lengths = [item.num_tokens for item in embedder.prepare(texts)]
        tokens = sum(lengths)
        _log(
            f"{shape.name}: {count} texts, {sum(lengths)} tokens; parity max abs diff {max_abs_diff:.1e}"
        )
        ours_s, _ = _timed(lambda: embedder.embed(texts), device, runs)
        _log(f"ours: {ours_s:.2f} s")
        default_s, _ = _timed(lambda: peer_encode(32), device, runs)
        _log(f"sentence-transformers defaults: {default_s:.2f} s")
        sweep_s = {}
        for size in sweep:
            sweep_s[size] = _timed(lambda size=size: peer_encode(size), device, 1)[0]
            _log(f"sentence-transformers batch {size}: {sweep_s[size]:.2f} s")
        best_size = min(sweep_s, key=sweep_s.get)
        extra_runs = [_timed(lambda: peer_encode(best_size), device, 1)[0] for _ in range(runs - 1)]
        best_s = statistics.median([sweep_s[best_size], *extra_runs])
        gemm = gemm_flops_per_second(device, dtype, size=512 if quick else 2048)

    model_flops = shape.flops(lengths)
    plan = plan_batches(lengths, embedder.max_batch_tokens)
    return {
        "benchmark": "core_vs_sentence_transformers",
        "model": shape.name,
        "dtype": str(dtype).removeprefix("torch."),
        "texts": count,
        "tokens": tokens,
        "token_length_range": [min(lengths), max(lengths)],
        "max_abs_diff_vs_peer": max_abs_diff,
        "min_cosine_vs_peer": cosine_min,
        "seconds": {
            "ours": ours_s,
            "peer_default": default_s,
            "peer_best": best_s,
            "peer_sweep": sweep_s,
        },
        "peer_best_batch_size": best_size,
        "tokens_per_second": {
            "ours": tokens / ours_s,
            "peer_default": tokens / default_s,
            "peer_best": tokens / best_s,
        },
        "speedup_vs_peer_default": default_s / ours_s,
        "speedup_vs_peer_best": best_s / ours_s,
        "padding_ratio": padding_ratio(lengths, plan),
        "model_flops_per_second": model_flops / ours_s,
        "gemm_flops_per_second": gemm,
        "roofline_share": (model_flops / ours_s) / gemm,
        "runs": runs,
    }
