"""`qwen3-embed doctor`: what will run on this device, and self-checks that it is right.

Before spending GPU hours a user wants to know, in a minute: the device(s), the torch /
transformers / CUDA versions, the dtype, the forward mode and attention kernel `auto` picks for
the model, the token budget, and whether this device computes the same vectors every way the
core can batch them. Checks (each `{"name", "ok", ...}`; `ok` is null with a `skipped` reason
when a check cannot run here — never reported as passed):

- `parity`: packed == padded == each input alone (fp32: max abs difference <= 1e-4; bf16 /
  fp16: min cosine >= 0.999), vectors unit length.
- `oom_split` (GPU): the allocator capped (`torch.cuda.set_per_process_memory_fraction`) so one
  forward of the whole batch runs out of memory; the core must split it and give the same
  vectors, none lost. A CPU's allocator cannot be capped: skipped there.
- `compile` (only with `--compile`): `torch.compile` graphs and recompiles across batch mixes,
  and its vectors against the eager ones.
- `host_syncs` (CUDA): host/device synchronisations of one `embed_prepared` call in the mode
  `auto` picked (`torch.cuda.set_sync_debug_mode`); one is expected, the final copy to the host.

Needs only the core's dependencies (torch, transformers): the GPU machine may have no Ray.
Without `--model` it builds a tiny random Qwen3 with the real head size (head_dim 128, GQA 2:1)
in a temporary folder: what it checks there is the code path, not a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

# fp32: the same vectors to float rounding; half precision: the same direction.
FP32_MAX_ABS_DIFF = 1e-4
HALF_MIN_COSINE = 0.999
# The built-in model: the real Qwen3 head size (128), grouped-query heads 2:1, tiny otherwise.
TINY_SHAPE = {
    "hidden_size": 256,
    "num_layers": 2,
    "num_heads": 2,
    "num_kv_heads": 1,
    "intermediate_size": 512,
}
# Ragged on purpose: one-token-ish queries next to a few hundred tokens.
_SENTENCE = "Embedding models map text to vectors so that related passages land close together. "
TEXTS = [
    "a",
    "what is the capital of france?",
    _SENTENCE,
    _SENTENCE * 3,
    "short query about packed attention",
    _SENTENCE * 12,
    "b c d e f g",
    _SENTENCE * 6 + "the end.",
    "x " * 90,
    _SENTENCE * 20,
]
COMPILE_BACKEND = "inductor"


# ----------------------------------------------------------------------- facts
def versions() -> dict[str, str | None]:
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version()) if torch.cuda.is_available() else None,
    }


def devices() -> list[dict[str, Any]]:
    if not torch.cuda.is_available():
        return [{"device": "cpu", "name": platform.processor() or platform.machine(), "cores": os.cpu_count()}]  # fmt: skip
    out = []
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        out.append(
            {
                "device": f"cuda:{index}",
                "name": properties.name,
                "memory_gib": round(properties.total_memory / 2**30, 1),
                "capability": f"{properties.major}.{properties.minor}",
            }
        )
    return out


# ----------------------------------------------------------------------- checks
def _compare(got: torch.Tensor, reference: torch.Tensor, half: bool) -> dict[str, Any]:
    cosine = torch.nn.functional.cosine_similarity(got, reference).min().item()
    difference = (got - reference).abs().max().item()
    ok = cosine >= HALF_MIN_COSINE if half else difference <= FP32_MAX_ABS_DIFF
    return {"ok": ok, "max_abs_diff": difference, "min_cosine": cosine}


def _skipped(name: str, reason: str) -> dict[str, Any]:
    return {"name": name, "ok": None, "skipped": reason}


def _guarded(name: str, check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A check that raises has failed; its error is the report."""
    started = time.perf_counter()
    try:
        result = check()
    except Exception as error:  # noqa: BLE001 - reported as the check's failure
        logger.exception("doctor check %s raised", name)
        result = {"ok": False, "error": f"{type(error).__name__}: {error}"}
    return {"name": name, **result, "seconds": round(time.perf_counter() - started, 2)}


class _Subject:
    """The loaded model and, sharing its weights, a padded and (Qwen3 text) a packed Embedder."""

    def __init__(self, embedder: Any):
        from .embedder import Embedder
        from .text.backend import TextBackend

        self.embedder = embedder
        self.device, self.dtype = embedder.device, embedder.backend.dtype
        self.half = self.dtype in (torch.float16, torch.bfloat16)
        backend = embedder.backend
        self.packable = isinstance(backend, TextBackend) and embedder.info.is_qwen
        if isinstance(backend, TextBackend):
            pad_id = embedder.preparer.impl.pad_id

            def view(mode: str) -> Embedder:
                other = TextBackend.from_model(
                    backend.model, embedder.info, pad_id, self.device, self.dtype, mode
                )
                return Embedder(embedder.preparer, other, embedder.max_batch_tokens)

            self.padded = embedder if embedder.forward_mode == "padded" else view("padded")
            packed = embedder if embedder.forward_mode == "packed" else None
            self.packed = packed or (view("packed") if self.packable else None)
        else:  # VL: one (padded) path
            self.padded, self.packed = embedder, None
        self.prepared = embedder.prepare(TEXTS)


def check_parity(subject: _Subject) -> dict[str, Any]:
    prepared = subject.prepared
    alone = torch.cat([subject.padded.embed_prepared([item]).embeddings for item in prepared])
    padded = subject.padded.embed_prepared(prepared).embeddings
    result: dict[str, Any] = {
        "inputs": len(prepared),
        "tokens": [min(i.num_tokens for i in prepared), max(i.num_tokens for i in prepared)],
        "padded_vs_alone": _compare(padded, alone, subject.half),
    }
    if subject.packed is not None:
        packed = subject.packed.embed_prepared(prepared).embeddings
        result["packed_vs_alone"] = _compare(packed, alone, subject.half)
        result["packed_vs_padded"] = _compare(packed, padded, subject.half)
    else:
        result["packed"] = "not available for this model (Qwen3 text models only)"
    if subject.embedder.info.normalize:
        norms = padded.norm(dim=1)
        result["max_norm_error"] = (norms - 1).abs().max().item()
        result["unit_norm"] = result["max_norm_error"] <= 1e-3
    parts = [value["ok"] for value in result.values() if isinstance(value, dict)]
    return {"ok": all(parts) and result.get("unit_norm", True), **result}


def check_oom_split(subject: _Subject) -> dict[str, Any]:
    """A real out-of-memory error: the allocator capped a little above what one input needs."""
    from .embedder import Embedder

    device = subject.device
    embedder = subject.embedder
    longest = max(subject.prepared, key=lambda item: item.num_tokens)
    copies = 32
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    reference = embedder.embed_prepared([longest]).embeddings
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    embedder.embed_prepared([longest])
    one = max(torch.cuda.max_memory_allocated(device) - base, 1)
    inputs = [longest] * copies
    # One forward for all copies, unless it runs out of memory.
    trial = Embedder(embedder.preparer, embedder.backend, longest.num_tokens * copies)
    total = torch.cuda.get_device_properties(device).total_memory
    cap = base + 4 * one + (64 << 20)
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device)
    try:
        output = trial.embed_prepared(inputs, errors="collect")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()
    split = trial.budget.current < trial.max_batch_tokens
    compared = _compare(output.embeddings, reference.expand(copies, -1), subject.half)
    return {
        "ok": split and not output.failures and compared["ok"],
        "out_of_memory_split": split,
        "budget_after": trial.budget.current,
        "budget_before": trial.max_batch_tokens,
        "capped_at_gib": round(cap / 2**30, 3),
        "failures": len(output.failures),
        "vs_alone": compared,
    }


def check_compile(subject: _Subject, compile_backend: str) -> dict[str, Any]:
    from torch._dynamo.utils import counters

    from .embedder import Embedder
    from .text.backend import TextBackend

    base = subject.embedder
    if not isinstance(base.backend, TextBackend):
        return {"ok": None, "skipped": f"compile is not supported for the {base.family} family"}
    backend = TextBackend.from_model(
        base.backend.model,
        base.info,
        base.preparer.impl.pad_id,
        subject.device,
        subject.dtype,
        base.forward_mode,
    )
    backend.compile(compile_backend)
    compiled = Embedder(base.preparer, backend, base.max_batch_tokens)
    prepared = subject.prepared
    mixes = [prepared[:3], prepared[3:8], prepared, prepared[::2], prepared[1:]]
    torch._dynamo.reset()
    counters.clear()
    graphs: list[int] = []
    worst: dict[str, Any] = {"ok": True, "max_abs_diff": 0.0, "min_cosine": 1.0}
    for mix in mixes:
        got = compiled.embed_prepared(mix).embeddings
        compared = _compare(got, base.embed_prepared(mix).embeddings, subject.half)
        worst = {
            "ok": worst["ok"] and compared["ok"],
            "max_abs_diff": max(worst["max_abs_diff"], compared["max_abs_diff"]),
            "min_cosine": min(worst["min_cosine"], compared["min_cosine"]),
        }
        graphs.append(int(counters["stats"]["unique_graphs"]))
    recompiles = graphs[-1] - graphs[0]  # graphs made after the first batch mix
    return {
        "ok": worst["ok"] and recompiles == 0,
        "backend": compile_backend,
        "forward_mode": base.forward_mode,
        "batch_mixes": len(mixes),
        "graphs": graphs[-1],
        "recompiles_after_first_mix": recompiles,
        "vs_eager": worst,
    }


def check_host_syncs(subject: _Subject) -> dict[str, Any]:
    """Synchronisations of one call in the mode `auto` chose: the one expected is the final
    copy of the vectors to the host."""
    embedder = subject.embedder
    embedder.embed_prepared(subject.prepared)  # warm: first-call library initialisation
    torch.cuda.synchronize(subject.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            embedder.embed_prepared(subject.prepared)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    return {
        "ok": len(syncs) <= 1,
        "forward_mode": embedder.forward_mode,
        "syncs_per_call": len(syncs),
        "expected": "1 (the final device -> host copy)",
        "first": syncs[:3],
    }


# ------------------------------------------------------------------------- run
def run_doctor(
    model: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    forward_mode: str = "auto",
    attn_implementation: str = "auto",
    max_batch_tokens: int | None = None,
    compile: bool = False,
    compile_backend: str = COMPILE_BACKEND,
) -> dict[str, Any]:
    """The report: `{"ok", "device", "forward_mode", "attention_kernel", "checks", ...}`."""
    from .embedder import Embedder
    from .options import LoadOptions
    from .testing import make_tiny_text_model

    with ExitStack() as stack:
        if model is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qwen3-doctor-")))
            model_dir = make_tiny_text_model(folder / "tiny-qwen3", **TINY_SHAPE)
            label = "built-in tiny random Qwen3 (head_dim 128, 2 heads / 1 KV head, 2 layers)"
        else:
            model_dir, label = model, model
        options = LoadOptions(
            model=str(model_dir),
            device=device,
            dtype=dtype,
            forward_mode=forward_mode,
            attn_implementation=attn_implementation,
            max_batch_tokens=max_batch_tokens,
        )
        embedder = Embedder.from_options(options)
        described = embedder.describe()
        subject = _Subject(embedder)
        cuda = subject.device.type == "cuda"
        no_gpu = f"needs a CUDA GPU; this run is on {subject.device.type}"
        checks = [_guarded("parity", lambda: check_parity(subject))]
        if cuda:
            checks.append(_guarded("oom_split", lambda: check_oom_split(subject)))
        else:
            checks.append(_skipped("oom_split", f"{no_gpu} (a CPU's allocator cannot be capped)"))
        if compile:
            checks.append(_guarded("compile", lambda: check_compile(subject, compile_backend)))
        else:
            checks.append(_skipped("compile", "not asked (--compile)"))
        if cuda:
            checks.append(_guarded("host_syncs", lambda: check_host_syncs(subject)))
        else:
            checks.append(_skipped("host_syncs", f"{no_gpu} (torch.cuda.set_sync_debug_mode)"))
    return {
        "ok": all(check["ok"] is not False for check in checks),
        "device": described["device"],
        "forward_mode": described["forward_mode"],
        "attention_kernel": described["attention_kernel"],
        "checks": checks,
        "dtype": described["dtype"],
        "max_batch_tokens": described["max_batch_tokens"],
        "model": label,
        "devices": devices(),
        "versions": versions(),
    }


def format_report(report: dict[str, Any]) -> str:
    versions_line = ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v)
    lines = [
        f"qwen3-embed doctor: {'OK' if report['ok'] else 'FAILED'}",
        f"  model             {report['model']}",
        "  devices           "
        + "; ".join(
            f"{d['device']} {d.get('name', '')}"
            + (f" ({d['memory_gib']} GiB)" if "memory_gib" in d else "")
            for d in report["devices"]
        ),
        f"  versions          {versions_line}",
        f"  device / dtype    {report['device']} / {report['dtype']}",
        f"  forward mode      {report['forward_mode']}",
        f"  attention kernel  {report['attention_kernel']}",
        f"  token budget      {report['max_batch_tokens']} tokens per forward",
        "  checks",
    ]
    for check in report["checks"]:
        if check["ok"] is None:
            verdict, detail = "skipped", check["skipped"]
        else:
            verdict = "ok" if check["ok"] else "FAILED"
            detail = check.get("error") or _summary(check)
        lines.append(f"    {check['name']:<11} {verdict:<8} {detail}")
    return "\n".join(lines)


def _summary(check: dict[str, Any]) -> str:
    parts = []
    for key, value in check.items():
        if key in ("name", "ok", "seconds"):
            continue
        if isinstance(value, dict) and "max_abs_diff" in value:
            parts.append(
                f"{key}: max |diff| {value['max_abs_diff']:.1e}, min cos {value['min_cosine']:.6f}"
            )
        elif not isinstance(value, (dict, list)):
            parts.append(f"{key}={value}")
    return "; ".join(parts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="hub id, folder or URL (default: a built-in tiny random Qwen3, head_dim 128)",
    )
    parser.add_argument("--json", action="store_true", help="end with the report as one JSON line")
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster address: run on every node with a GPU (every alive node when none "
        "has one), a Ray task per node, and print a table; default: RAY_ADDRESS if set",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on a GPU, fp32 on CPU), ...")
    parser.add_argument(
        "--forward-mode", default="auto", choices=("auto", "padded", "packed"), help="as `embed`"
    )
    parser.add_argument("--attn-implementation", default="auto", help="auto, sdpa, eager, ...")
    parser.add_argument("--max-batch-tokens", type=int, default=None, help="the token budget")
    parser.add_argument(
        "--compile", action="store_true", help="also check torch.compile (slow: compiles)"
    )
    parser.add_argument(
        "--compile-backend",
        default=COMPILE_BACKEND,
        help="torch.compile backend of --compile (eager: graph capture only, seconds)",
    )


def doctor_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "forward_mode": args.forward_mode,
        "attn_implementation": args.attn_implementation,
        "max_batch_tokens": args.max_batch_tokens,
        "compile": args.compile,
        "compile_backend": args.compile_backend,
    }


def main(args: argparse.Namespace) -> int:
    address = args.address or os.environ.get("RAY_ADDRESS")
    if address:
        # Ray is a layer's dependency: the batch layer registers a Ray task per node as the
        # entry point `cluster` (`qwen3_embed.plugins`), imported only here.
        from .plugins import CLUSTER_DOCTOR, LayerNotInstalledError, load_one

        try:
            run_on_cluster = load_one(CLUSTER_DOCTOR, "cluster", "doctor --address")
        except LayerNotInstalledError as error:
            print(f"qwen3-embed doctor: error: {error}", file=sys.stderr)
            return 2
        return run_on_cluster(address, doctor_kwargs(args), args.json)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    report = run_doctor(**doctor_kwargs(args))
    print(format_report(report), flush=True)
    if args.json:
        print(json.dumps(report, default=str), flush=True)
    return 0 if report["ok"] else 1
