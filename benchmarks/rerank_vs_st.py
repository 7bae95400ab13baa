"""Benchmark: `Reranker.score_pairs` vs sentence-transformers' `CrossEncoder.predict` on the same
Qwen3-Reranker-architecture checkpoint (random weights), same pairs, same machine, same run.

sentence-transformers (6.x) loads a `*ForCausalLM` checkpoint as a CrossEncoder scoring
`logit(yes) - logit(no)` with a sigmoid — the reranker's own score — and renders each pair
through the checkpoint's chat template with `query` / `document` roles. A template that renders
exactly the official prompt (prefix, `<Instruct>: …\n<Query>: …\n<Document>: …`, suffix) is
given at load time, so both sides score the same tokens; the scores are compared before any
timing (max |Δ| <= 1e-4 on CPU, fp32). Where CrossEncoder cannot load the checkpoint, the peer is
the model card's reference loop (one left-padded batch per `batch_size` pairs, full-vocabulary
logits), said so in the results. Pairs stay under max_length, so no truncation is involved.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from qwen3_embed import Reranker
from qwen3_embed.rerank.formats import DEFAULT_INSTRUCTIONS, TEXT_PREFIX, TEXT_SUFFIX
from qwen3_embed.testing import make_tiny_text_model

from .common import row
from .core_vs_st import CPU_SHAPE, QUICK_SHAPE, Shape
from .corpus import make_corpus
from .machine import synchronize

INSTRUCTION = DEFAULT_INSTRUCTIONS["text"]


def _literal(text: str) -> str:
    """A Jinja string literal of `text`."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _role(role: str) -> str:
    # Flat (`content` a string) and structured (`content` a list of parts) messages alike.
    return (
        f'{{%- set m = messages | selectattr("role", "eq", "{role}") | first -%}}'
        "{%- if m.content is string -%}{{- m.content -}}"
        "{%- else -%}{{- m.content[0].text -}}{%- endif -%}"
    )


# The official prompt as a chat template over sentence-transformers' query/document roles.
PAIR_TEMPLATE = (
    "{{- " + _literal(TEXT_PREFIX + f"<Instruct>: {INSTRUCTION}\n<Query>: ") + " -}}"
    + _role("query")
    + "{{- " + _literal("\n<Document>: ") + " -}}"
    + _role("document")
    + "{{- " + _literal(TEXT_SUFFIX) + " -}}"
)  # fmt: skip


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


def _cross_encoder(model_dir: Path, device: torch.device, dtype: torch.dtype, max_length: int):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(
        str(model_dir),
        device=str(device),
        max_length=max_length,
        model_kwargs={"dtype": dtype},
        processor_kwargs={"padding_side": "left", "chat_template": PAIR_TEMPLATE},
    )


def _reference_loop(model_dir: Path, device: torch.device, dtype: torch.dtype, max_length: int):
    """The model card's loop (full LM head), batched by `batch_size` pairs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    prefix = tokenizer.encode(TEXT_PREFIX, add_special_tokens=False)
    suffix = tokenizer.encode(TEXT_SUFFIX, add_special_tokens=False)
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")

    @torch.no_grad()
    def predict(pairs, batch_size: int) -> np.ndarray:
        scores = []
        for start in range(0, len(pairs), batch_size):
            texts = [
                f"<Instruct>: {INSTRUCTION}\n<Query>: {q}\n<Document>: {d}"
                for q, d in pairs[start : start + batch_size]
            ]
            inputs = tokenizer(
                texts,
                padding=False,
                truncation="longest_first",
                return_attention_mask=False,
                max_length=max_length - len(prefix) - len(suffix),
            )
            inputs["input_ids"] = [prefix + ids + suffix for ids in inputs["input_ids"]]
            inputs = tokenizer.pad(inputs, padding=True, return_tensors="pt").to(device)
            logits = model(**inputs).logits[:, -1, :]
            pair = torch.stack([logits[:, no], logits[:, yes]], dim=1).float()
            scores.append(torch.log_softmax(pair, dim=1)[:, 1].exp().cpu())
        return torch.cat(scores).numpy()

    return predict


def _pairs(count: int, quick: bool) -> list[tuple[str, str]]:
    queries = make_corpus(max(4, count // 8), low=4, high=24, seed=1, median=10)
    documents = make_corpus(
        count, low=8, high=256 if quick else 512, seed=2, median=40 if quick else 90
    )
    return [(queries[i % len(queries)], document) for i, document in enumerate(documents)]


def run(device: torch.device, quick: bool, shape: Shape | None = None) -> dict:
    shape = shape or (QUICK_SHAPE if quick else CPU_SHAPE)
    count, runs = (48, 1) if quick else (200, 3)
    sweep = [8, 32] if quick else [8, 32, 64]
    max_length = 8192
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    pairs = _pairs(count, quick)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_text_model(
            Path(tmp) / "reranker",
            task="rerank",
            hidden_size=shape.hidden_size,
            num_layers=shape.num_layers,
            num_heads=shape.num_heads,
            num_kv_heads=shape.num_kv_heads,
            intermediate_size=shape.intermediate_size,
        )
        reranker = Reranker.from_pretrained(
            model_dir, device=device, dtype=dtype, max_length=max_length
        )
        try:
            encoder = _cross_encoder(model_dir, device, dtype, max_length)
            peer_name = "sentence-transformers CrossEncoder"
            peer = lambda batch_size: encoder.predict(  # noqa: E731
                pairs, batch_size=batch_size, convert_to_numpy=True
            )
            peer(8)  # fails here, not in the timing, if it cannot score these pairs
        except Exception as error:  # noqa: BLE001 - any failure to load/run: the fallback peer
            _log(f"CrossEncoder cannot run this checkpoint ({type(error).__name__}: {error})")
            peer_name = "model card reference loop (CrossEncoder could not load it)"
            loop = _reference_loop(model_dir, device, dtype, max_length)
            peer = lambda batch_size: loop(pairs, batch_size)  # noqa: E731

        # Same scores before any timing.
        ours_scores = reranker.score_pairs(pairs)
        peer_scores = np.asarray(peer(32), dtype=np.float32).reshape(-1)
        max_abs_diff = float(np.abs(ours_scores - peer_scores).max())
        if device.type == "cpu" and max_abs_diff > 1e-4:
            raise AssertionError(
                f"scores differ from the peer ({peer_name}): max |Δ| {max_abs_diff}"
            )
        tokens = sum(item.num_tokens for item in reranker.prepare_pairs(pairs))
        _log(
            f"{shape.name}: {count} pairs, {tokens} tokens; vs {peer_name}: max |Δ| {max_abs_diff:.1e}"
        )

        ours_s, _ = _timed(lambda: reranker.score_pairs(pairs), device, runs)
        _log(f"ours: {ours_s:.2f} s")
        sweep_s = {}
        for size in sweep:
            sweep_s[size] = _timed(lambda size=size: peer(size), device, 1)[0]
            _log(f"peer batch {size}: {sweep_s[size]:.2f} s")
        best_size = min(sweep_s, key=sweep_s.get)
        extra = [_timed(lambda: peer(best_size), device, 1)[0] for _ in range(runs - 1)]
        best_s = statistics.median([sweep_s[best_size], *extra])
        default_s = sweep_s.get(32, best_s)

    what = f"{shape.name}, {str(dtype).removeprefix('torch.')}, {count} pairs"
    return {
        "benchmark": "reranker_vs_cross_encoder",
        "model": shape.name,
        "peer": peer_name,
        "pairs": count,
        "tokens": tokens,
        "max_abs_diff_vs_peer": max_abs_diff,
        "seconds": {
            "ours": ours_s,
            "peer_batch_32": default_s,
            "peer_best": best_s,
            "peer_sweep": sweep_s,
        },
        "peer_best_batch_size": best_size,
        "pairs_per_second": {
            "ours": count / ours_s,
            "peer_batch_32": count / default_s,
            "peer_best": count / best_s,
        },
        "runs": runs,
        "rows": [
            row(f"reranker pairs/s ({what})", f"{count / ours_s:.1f}", "measured", None),
            row(
                f"{peer_name} pairs/s, batch 32 / best batch {best_size}",
                f"{count / default_s:.1f} / {count / best_s:.1f}",
                "measured",
                None,
            ),
            row(
                f"reranker speed-up vs {peer_name} (batch 32 / best)",
                f"{default_s / ours_s:.2f}x / {best_s / ours_s:.2f}x",
                "measured",
                None,
            ),
        ],
    }
