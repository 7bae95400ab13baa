"""`python -m benchmarks.gpu [--smoke] [--device cuda|cpu] [--models 0.6b[,8b]]`

The forward pass on a GPU: padded vs packed vs packed+compiled, and sentence-transformers at its
best batch size on the same weights, with tokens/s and MFU (model FLOPs / time, against the
datasheet bf16 dense peak and against a large bf16 GEMM measured in the same run).

Random weights with the real Qwen3-Embedding shapes are built directly on the device in bf16
(`torch.device` context: no fp32 copy on the CPU, no checkpoint on disk). The corpus is random
token ids with lognormal lengths (mean ~300, up to 8192; >= 1M tokens), plus a long-document
mix; each contender times each corpus three times and keeps the best. The default is the 0.6B
shape alone (the 8B is opt-in, `--models 8b`, as its own command), and each model's results are
written as soon as each of its paths is measured, so a run stopped by a device time limit keeps
what it measured. One packed call's host syncs are counted with `torch.cuda.set_sync_debug_mode`
(one expected: the final copy). The forwards go through the core's own loop (`qwen3_embed.runner.run_forwards`: planner,
staging, OOM handling), so what is measured is what the batch job and the server run.

Imports only the core, torch, transformers and (for the peer) sentence-transformers: the GPU
machine has no Ray. `--smoke` runs the same code on a tiny shape on CPU in seconds (a CI test
runs it); its numbers mean nothing. Results: `benchmarks/results/gpu.json` + `gpu.md`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qwen3_embed.contracts import PreparedInput
from qwen3_embed.model_info import ModelInfo
from qwen3_embed.oom import TokenBudget
from qwen3_embed.pooling import truncate_and_normalize
from qwen3_embed.runner import run_forwards
from qwen3_embed.text.backend import TextBackend

from .core_vs_st import CPU_SHAPE, QUICK_SHAPE, Shape
from .machine import describe, gemm_flops_per_second, synchronize

H100_BF16_DENSE_PEAK = 989e12  # H100/H200 SXM datasheet, bf16 dense (no sparsity)
# head_dim is 128 for every Qwen3 embedding model (not hidden / heads).
QWEN3_06B = Shape("Qwen3-Embedding-0.6B shape", 1024, 28, 16, 8, 3072, 128)
QWEN3_4B = Shape("Qwen3-Embedding-4B shape", 2560, 36, 32, 8, 9728, 128)
QWEN3_8B = Shape("Qwen3-Embedding-8B shape", 4096, 36, 32, 8, 12288, 128)
SHAPES = {"0.6b": QWEN3_06B, "4b": QWEN3_4B, "8b": QWEN3_8B}
# 0.6B alone by default: aimed at under 5 minutes with compile (estimated, not measured on a
# GPU), inside a 10-minute device command; 8B (~2x longer) is a separate, opt-in command.
DEFAULT_MODELS = "0.6b"
REAL_VOCAB = 151669
PADDED_BUDGET = 16384
PACKED_BUDGET = 65536


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: real on a GPU, tiny for the smoke."""

    corpus_tokens: int
    long_tokens: int
    peer_tokens: int  # the sentence-transformers sweep runs on a slice (it is the slow one)
    peer_sweep: tuple[int, ...]
    max_length: int
    vocab: int
    gemm_size: int
    repeats: int  # each corpus timed this many times per contender, the best kept


# >= 1M tokens per contender on the main corpus (many forwards, not two), best of three.
GPU_PLAN = Plan(1_000_000, 262_144, 131_072, (16, 32, 64, 128), 8192, REAL_VOCAB, 8192, 3)
CPU_PLAN = Plan(60_000, 8_192, 12_000, (8, 32), 1024, 4096, 2048, 1)
# vocab >= the Qwen-style test tokenizer's (597 tokens), which the peer comparison uses.
SMOKE_PLAN = Plan(3_000, 600, 600, (8,), 256, 1024, 256, 2)


_STARTED = time.perf_counter()


def log(message: str) -> None:
    print(f"   [{time.perf_counter() - _STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------- model
def _config(shape: Shape, vocab: int):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        head_dim=shape.head_size,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        pad_token_id=0,
    )


def build_on_device(shape: Shape, vocab: int, device: torch.device, dtype: torch.dtype):
    """A random-weight Qwen3Model allocated and initialised on `device` in `dtype`."""
    from transformers import Qwen3Model

    config = _config(shape, vocab)
    config._attn_implementation = "sdpa"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen3Model(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def flops(shape: Shape, lengths: list[int]) -> float:
    """2 x non-embedding params x tokens + causal attention (QK^T and AV over T^2/2 pairs)."""
    head = shape.head_size
    q_width, kv_width = shape.num_heads * head, shape.num_kv_heads * head
    per_layer = 2 * shape.hidden_size * q_width + 2 * shape.hidden_size * kv_width
    per_layer += 3 * shape.hidden_size * shape.intermediate_size
    dense = 2 * shape.num_layers * per_layer * sum(lengths)
    attention = sum(2 * shape.num_layers * q_width * t * t for t in lengths)
    return float(dense + attention)


def _info(shape: Shape, max_length: int) -> ModelInfo:
    return ModelInfo(
        model_type="qwen3",
        family="text",
        hidden_size=shape.hidden_size,
        min_dim=32,
        max_length=max_length,
        pooling_mode="lasttoken",
        normalize=True,
        default_query_instruction=None,
        is_qwen=True,
    )


# ---------------------------------------------------------------------- corpus
def lognormal_lengths(total_tokens: int, max_length: int, seed: int, mean: float = 300.0):
    """Lengths with a lognormal spread (sigma 1, mean ~`mean`), clipped to [8, max_length],
    until they sum to at least `total_tokens`."""
    rng = np.random.default_rng(seed)
    sigma = 1.0
    mu = np.log(mean) - sigma**2 / 2
    lengths: list[int] = []
    while sum(lengths) < total_tokens:
        draw = rng.lognormal(mu, sigma, size=4096)
        lengths.extend(int(x) for x in np.clip(draw, 8, max_length))
    out, running = [], 0
    for length in lengths:
        out.append(length)
        running += length
        if running >= total_tokens:
            break
    return out


def long_lengths(total_tokens: int, max_length: int, seed: int) -> list[int]:
    """Long documents: uniform between max_length / 4 and max_length."""
    rng = np.random.default_rng(seed)
    out: list[int] = []
    while sum(out) < total_tokens:
        out.append(int(rng.integers(max_length // 4, max_length + 1)))
    return out


def random_inputs(lengths: list[int], vocab: int, seed: int) -> list[PreparedInput]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=sum(lengths))
    out, start = [], 0
    for length in lengths:
        out.append(PreparedInput(input_ids=ids[start : start + length].tolist()))
        start += length
    return out


# ----------------------------------------------------------------------- timing
def _run(backend: TextBackend, inputs: list[PreparedInput], budget: int) -> torch.Tensor:
    vectors, failures = run_forwards(
        backend,
        inputs,
        backend.info.hidden_size,
        "lasttoken",
        lambda pooled: truncate_and_normalize(pooled, None, True),
        TokenBudget(budget),
    )
    if failures:
        raise RuntimeError(f"{len(failures)} inputs ran out of memory alone")
    return vectors


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def _measure(
    name: str,
    backend: TextBackend,
    corpora: dict[str, list[PreparedInput]],
    budget: int,
    shape: Shape,
    device: torch.device,
    peak: float,
    gemm: float,
    warmup: list[PreparedInput],
    repeats: int = 1,
) -> dict:
    started = time.perf_counter()
    _run(backend, warmup, budget)  # kernels chosen, allocator warm; compilation when compiled
    synchronize(device)
    warmup_s = time.perf_counter() - started
    row: dict = {"warmup_s": warmup_s, "budget_tokens": budget}
    for corpus, inputs in corpora.items():
        lengths = [item.num_tokens for item in inputs]
        runs = [
            _timed(lambda inputs=inputs: _run(backend, inputs, budget), device)
            for _ in range(repeats)
        ]
        seconds = min(runs)  # best of `repeats`
        model_flops = flops(shape, lengths)
        row[corpus] = {
            "tokens": sum(lengths),
            "seconds": seconds,
            "runs_seconds": runs,
            "tokens_per_second": sum(lengths) / seconds,
            "mfu_vs_peak": model_flops / seconds / peak if peak else None,
            "mfu_vs_gemm": model_flops / seconds / gemm,
        }
        log(
            f"{name} [{corpus}]: {sum(lengths) / seconds:,.0f} tok/s, "
            f"{model_flops / seconds / 1e12:.1f} TFLOP/s ({model_flops / seconds / gemm:.0%} of GEMM)"
        )
    return row


def count_host_syncs(
    backend: TextBackend, inputs: list[PreparedInput], budget: int, device: torch.device
) -> dict:
    """Host/device synchronisations of one call (forwards + the final copy to the host), counted
    by `torch.cuda.set_sync_debug_mode`: one is expected, the copy."""
    if device.type != "cuda":
        return {"skipped": "needs CUDA (torch.cuda.set_sync_debug_mode)"}
    _run(backend, inputs, budget).cpu()  # warm
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            _run(backend, inputs, budget).cpu()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    log(f"host syncs in one {backend.forward_mode} call: {len(syncs)} (1 expected: the copy)")
    return {"syncs_per_call": len(syncs), "expected": 1, "ok": len(syncs) <= 1, "first": syncs[:3]}


# ------------------------------------------------------------------------ peer
def _peer_comparison(
    model: torch.nn.Module,
    shape: Shape,
    plan: Plan,
    device: torch.device,
    dtype: torch.dtype,
    seed: int,
) -> dict:
    """sentence-transformers on the same weights: the weights (already on the device) are saved
    once to a temporary checkpoint with a Qwen-style tokenizer, the peer loads it, and both embed
    the same texts. Vectors are compared (cosine) before anything is timed."""
    from qwen3_embed import Embedder
    from qwen3_embed.testing.tokenizer import build_qwen_style_tokenizer, save_tokenizer

    from .core_vs_st import _sentence_transformer
    from .corpus import make_corpus

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "model"
        tokenizer = build_qwen_style_tokenizer(append_eos=True)
        save_tokenizer(tokenizer, directory)
        model.config.pad_token_id = tokenizer.token_to_id("<|endoftext|>")
        model.save_pretrained(directory)  # straight from device memory, in its own dtype
        core = Embedder.from_pretrained(
            directory,
            device=device,
            dtype=dtype,
            max_length=plan.max_length,  # the peer truncates at the same length
            forward_mode="packed",
            max_batch_tokens=PACKED_BUDGET,
        )
        peer = _sentence_transformer(directory, shape.hidden_size, device, dtype, plan.max_length)

        # ~300 tokens per text on average, as in the timed corpus.
        texts = make_corpus(
            plan.peer_tokens // 300 + 1, low=8, high=plan.max_length, median=200, seed=seed
        )
        ours_vectors = core.embed(texts).embeddings
        peer_vectors = (
            peer.encode(texts, batch_size=32, convert_to_tensor=True, normalize_embeddings=True)
            .float()
            .cpu()
        )
        cosine = torch.nn.functional.cosine_similarity(ours_vectors, peer_vectors).min().item()
        log(f"peer parity: min cosine {cosine:.5f}")
        if cosine < 0.999:
            raise AssertionError(
                f"vectors disagree with sentence-transformers: min cosine {cosine}"
            )
        tokens = sum(item.num_tokens for item in core.prepare(texts))
        ours_s = _timed(lambda: core.embed(texts), device)
        sweep = {
            size: _timed(
                lambda size=size: peer.encode(
                    texts, batch_size=size, convert_to_tensor=True, normalize_embeddings=True
                ),
                device,
            )
            for size in plan.peer_sweep
        }
        best = min(sweep, key=sweep.get)
        log(
            f"peer best batch {best}: {tokens / sweep[best]:,.0f} tok/s vs ours {tokens / ours_s:,.0f}"
        )
    return {
        "texts": len(texts),
        "tokens": tokens,
        "min_cosine": cosine,
        "ours_tokens_per_second": tokens / ours_s,
        "peer_sweep_tokens_per_second": {str(k): tokens / v for k, v in sweep.items()},
        "peer_best_batch_size": best,
        "peer_best_tokens_per_second": tokens / sweep[best],
        "speedup_vs_peer_best": sweep[best] / ours_s,
    }


# ------------------------------------------------------------------------- run
def _recorded(name: str, fn: Callable[[], dict], smoke: bool) -> dict:
    """`fn()`, or {"error": ...} shown as a failed row: on a one-shot GPU run, a compiler or peer
    failure must not throw away the rows already measured. The smoke (a test) raises instead."""
    if smoke:
        return fn()
    try:
        return fn()
    except Exception as error:  # noqa: BLE001 - recorded in the results and the table
        log(f"{name} FAILED: {type(error).__name__}: {error}")
        return {"error": f"{type(error).__name__}: {error}"}


def run_shape(
    shape: Shape,
    plan: Plan,
    device: torch.device,
    dtype: torch.dtype,
    peer: bool,
    compile: bool,
    result: dict | None = None,
    progress: Callable[[], None] = lambda: None,
) -> dict:
    """Fills `result` path by path, calling `progress()` after each, so a run stopped by its
    time limit keeps every row it measured."""
    result = {} if result is None else result
    log(f"{shape.name}: building random {str(dtype).removeprefix('torch.')} weights on {device}")
    model = build_on_device(shape, plan.vocab, device, dtype)
    info = _info(shape, plan.max_length)
    corpora = {
        "lognormal": random_inputs(
            lognormal_lengths(plan.corpus_tokens, plan.max_length, 1), plan.vocab, 1
        ),
        "long_documents": random_inputs(
            long_lengths(plan.long_tokens, plan.max_length, 2), plan.vocab, 2
        ),
    }
    for name, inputs in corpora.items():
        lengths = [item.num_tokens for item in inputs]
        log(
            f"corpus {name}: {len(lengths)} texts, {sum(lengths):,} tokens, mean {np.mean(lengths):.0f}"
        )
    warmup = random_inputs(
        lognormal_lengths(plan.corpus_tokens // 20, plan.max_length, 3), plan.vocab, 3
    )
    gemm = gemm_flops_per_second(device, dtype, size=plan.gemm_size)
    peak = H100_BF16_DENSE_PEAK if device.type == "cuda" else 0.0
    log(f"GEMM {plan.gemm_size}^3: {gemm / 1e12:.1f} TFLOP/s")
    result.update(
        model=shape.name, dtype=str(dtype).removeprefix("torch."), gemm_flops_per_second=gemm
    )
    padded = TextBackend.from_model(model, info, 0, device, dtype, "padded")
    result["padded"] = _measure(
        "padded", padded, corpora, PADDED_BUDGET, shape, device, peak, gemm, warmup, plan.repeats
    )
    packed = TextBackend.from_model(model, info, 0, device, dtype, "packed")
    progress()
    result["packed_kernel"] = packed.packed_kernel
    budget = PACKED_BUDGET if device.type == "cuda" else PADDED_BUDGET
    result["packed"] = _measure(
        "packed", packed, corpora, budget, shape, device, peak, gemm, warmup, plan.repeats
    )
    # Same vectors from both layouts before going on (bf16 on a GPU: cosine, not 1e-5).
    check = corpora["lognormal"][:64]
    cosine = (
        torch.nn.functional.cosine_similarity(
            _run(padded, check, PADDED_BUDGET), _run(packed, check, budget)
        )
        .min()
        .item()
    )
    result["packed_vs_padded_min_cosine"] = cosine
    result["packed_host_syncs"] = count_host_syncs(packed, check, budget, device)
    progress()
    if compile:

        def compiled_run() -> dict:
            compiled = TextBackend.from_model(model, info, 0, device, dtype, "packed")
            compiled.compile()
            return _measure(
                "packed+compiled",
                compiled,
                corpora,
                budget,
                shape,
                device,
                peak,
                gemm,
                warmup,
                plan.repeats,
            )

        result["packed_compiled"] = _recorded(
            "packed+compiled", compiled_run, smoke=plan is SMOKE_PLAN
        )
        progress()
    if peer:
        result["peer"] = _recorded(
            "peer",
            lambda: _peer_comparison(model, shape, plan, device, dtype, seed=4),
            smoke=plan is SMOKE_PLAN,
        )
    return result


def _setup(device: torch.device, smoke: bool, models: str) -> tuple[torch.dtype, Plan, list]:
    """(dtype, sizes, [(key, shape)]): bf16 and the real shapes on a GPU; fp32 and shapes a CPU
    can run on a CPU (bf16 is emulated and slow there); the tiny shape for the smoke."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if smoke:
        return dtype, SMOKE_PLAN, [("smoke", QUICK_SHAPE)]
    if device.type != "cuda":
        return dtype, CPU_PLAN, [("cpu", CPU_SHAPE)]
    keys = [key.strip() for key in models.split(",") if key.strip()]
    unknown = [key for key in keys if key not in SHAPES]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; valid values are: {', '.join(SHAPES)}")
    return dtype, GPU_PLAN, [(key, SHAPES[key]) for key in keys]


def run(device: torch.device, quick: bool) -> list[dict]:
    """For `benchmarks.run --only gpu,...`: the same runs, results returned."""
    dtype, plan, shapes = _setup(device, quick, DEFAULT_MODELS)
    return [
        run_shape(shape, plan, device, dtype, peer=index == 0, compile=not quick)
        for index, (_, shape) in enumerate(shapes)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny shape on CPU: a test, not a measurement"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument(
        "--models",
        default=DEFAULT_MODELS,
        help=f"comma-separated: {', '.join(SHAPES)} (default {DEFAULT_MODELS}: fits a 10-minute "
        "device slot; 8b is opt-in, run it as a second command)",
    )
    parser.add_argument(
        "--peer-models", default="0.6b", help="models also run through sentence-transformers"
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the packed+compiled run")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--name", default=None, help="results file name (default: gpu, or gpu-smoke / gpu-cpu)"
    )
    args = parser.parse_args(argv)

    device = torch.device(
        args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    )
    try:
        dtype, plan, shapes = _setup(device, args.smoke, args.models)
    except ValueError as error:
        parser.error(str(error))
    # Smoke and CPU runs compare the one shape they run with the peer.
    peers = (
        {shapes[0][0]} if args.smoke or device.type != "cuda" else set(args.peer_models.split(","))
    )
    results = {"machine": describe(device), "smoke": args.smoke, "results": []}
    name = args.name or (
        "gpu-smoke" if args.smoke else "gpu" if device.type == "cuda" else "gpu-cpu"
    )
    for key, shape in shapes:
        result: dict = {}
        results["results"].append(result)
        run_shape(
            shape,
            plan,
            device,
            dtype,
            peer=key in peers,
            result=result,
            progress=lambda: _write(args.out_dir, name, results),
            # Not in the smoke: graph capture alone takes ~a minute on a shared 2-core CI
            # machine (tests/core/test_core_packed.py proves the compiled path's vectors).
            compile=not (args.no_compile or args.smoke),
        )
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the previous model's weights are garbage by now
        _write(args.out_dir, name, results)  # after each model: a long run keeps what it measured
    print(_write(args.out_dir, name, results))
    return 0


def _fmt(run: dict, corpus: str) -> str:
    item = run[corpus]
    mfu = f", MFU {item['mfu_vs_peak']:.1%} of 989 TFLOP/s" if item["mfu_vs_peak"] else ""
    return f"{item['tokens_per_second']:,.0f} tok/s{mfu}, {item['mfu_vs_gemm']:.0%} of GEMM"


def markdown(results: dict) -> str:
    machine = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v != "absent")
    where = machine.get("gpu", machine["processor"])
    lines = [
        f"Measured {machine['date']} on {where} ({versions})"
        + (" — SMOKE RUN: tiny shape, numbers mean nothing" if results["smoke"] else ""),
        "",
        "| model | path | lognormal corpus | long documents |",
        "|---|---|---|---|",
    ]
    for result in results["results"]:
        for key, label in (
            ("padded", "padded"),
            ("packed", f"packed ({result.get('packed_kernel')})"),
            ("packed_compiled", "packed + compiled"),
        ):
            if key in result and "error" in result[key]:
                lines.append(
                    f"| {result['model']} | {label} | **failed**: {result[key]['error']} | |"
                )
            elif key in result:
                lines.append(
                    f"| {result['model']} ({result['dtype']}) | {label} | {_fmt(result[key], 'lognormal')} | {_fmt(result[key], 'long_documents')} |"
                )
        if "peer" in result and "error" in result["peer"]:
            lines.append(
                f"| {result['model']} | vs sentence-transformers | **failed**: {result['peer']['error']} | |"
            )
        elif "peer" in result:
            peer = result["peer"]
            lines.append(
                f"| {result['model']} | core (packed) vs sentence-transformers best batch "
                f"({peer['peer_best_batch_size']}), min cosine {peer['min_cosine']:.4f} | "
                f"{peer['ours_tokens_per_second']:,.0f} vs {peer['peer_best_tokens_per_second']:,.0f} tok/s "
                f"= **{peer['speedup_vs_peer_best']:.2f}x** | |"
            )
        if "packed_vs_padded_min_cosine" in result:
            lines.append(
                f"| {result['model']} | GEMM {result['gemm_flops_per_second'] / 1e12:.1f} TFLOP/s; "
                f"packed vs padded min cosine {result['packed_vs_padded_min_cosine']:.5f} | | |"
            )
    return "\n".join(lines) + "\n"


def _write(out_dir: Path, name: str, results: dict) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(results, indent=2, default=str))
    table = markdown(results)
    (out_dir / f"{name}.md").write_text(table)
    return table


if __name__ == "__main__":
    sys.exit(main())
