"""Benchmark 3: online serving under 1, 8 and 64 concurrent clients (one text per request) and
sequential 16-text requests, for this app (the `qwen3-embed serve` command, run in a subprocess
exactly as users run it, in three layouts: the default (colocated ingress, HAProxy on Linux),
`--split-ingress`, and `--http-proxy ray`, Ray's Python proxy) and infinity (`infinity_emb v2`,
in its own virtual environment), next to the core's own latency
and batched throughput. Same model directory (sentence-transformers format), same texts, same
HTTP client (httpx on loopback), one server at a time, all in one run.

This app's answers carry Server-Timing stages (ingress.timing_header), so the report also
splits its single-client latency into hops: proxy, ingress, ingress->model call, tokenising,
queueing, forward, rendering.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import torch

from qwen3_embed import Embedder

from .common import RAY_CPUS, build_model, log, row, shape_for
from .corpus import make_corpus
from .infinity_peer import InfinityServer, ensure_environment
from .st_format import write_sentence_transformers_files

CONCURRENCY = (1, 8, 64)
# Torch threads for every contender alike (the core in this process, infinity's server, the
# Serve replica): QWEN3_EMBED_BENCH_THREADS, default 2 (this machine's cores). On a machine
# shared with other work, 1 avoids OpenMP threads spinning against each other.
THREADS = int(os.environ.get("QWEN3_EMBED_BENCH_THREADS", "2"))
# The core's forward mode, for the core alone and this app alike (infinity has its own):
# QWEN3_EMBED_BENCH_FORWARD_MODE, default auto: what the server resolves it to
# (deployments.serving_defaults: packed for Qwen3 text on CPU; on a GPU the core's auto, packed
# in bf16/fp16), for the core alone too.
FORWARD_MODE = os.environ.get("QWEN3_EMBED_BENCH_FORWARD_MODE", "auto")
BATCH_TEXTS = 16
SERVED_NAME = "bench"
MAX_LENGTH = 512
DEFAULT = "qwen3-embed serve"  # one model: colocated ingress, HAProxy (auto, on Linux)
SPLIT = "qwen3-embed serve --split-ingress"
RAY_PROXY = "qwen3-embed serve --http-proxy ray"  # colocated, Ray's Python proxy
APP_LAYOUTS = (DEFAULT, SPLIT, RAY_PROXY)


def _free_port() -> int:
    """Below the kernel's ephemeral range: Ray's own processes may not take it before the
    server binds it (deployments.ray_env.free_port)."""
    from deployments.ray_env import free_port

    return free_port()


def _timings(header: str | None) -> dict[str, float] | None:
    if not header:
        return None
    parts = (part.strip().split(";dur=") for part in header.split(","))
    return {name: float(ms) for name, ms in parts}


async def _load(
    url: str, texts: list[str], clients: int, requests_per_client: int, texts_per_request: int = 1
) -> dict:
    """`clients` concurrent loops, each sending `requests_per_client` requests in turn."""
    latencies: list[float] = []
    stages: list[dict[str, float]] = []

    async def client_loop(client: httpx.AsyncClient, offset: int) -> None:
        for index in range(requests_per_client):
            first = (offset * requests_per_client + index) * texts_per_request
            batch = [texts[(first + i) % len(texts)] for i in range(texts_per_request)]
            start = time.perf_counter()
            response = await client.post(url, json={"model": SERVED_NAME, "input": batch})
            latency = time.perf_counter() - start
            response.raise_for_status()
            latencies.append(latency)
            timing = _timings(response.headers.get("server-timing"))
            if timing is not None:
                stages.append({**timing, "client": latency * 1000})

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client, offset) for offset in range(clients)))
        wall = time.perf_counter() - started
    measured = {
        "requests": len(latencies),
        "requests_per_second": len(latencies) / wall,
        "texts_per_second": len(latencies) * texts_per_request / wall,
        "p50_ms": float(np.percentile(latencies, 50) * 1000),
        "p99_ms": float(np.percentile(latencies, 99) * 1000),
    }
    if stages:
        measured["stages_median_ms"] = {
            name: statistics.median(stage[name] for stage in stages) for name in stages[0]
        }
    return measured


def _measure_server(url: str, texts: list[str], quick: bool) -> dict:
    per_client = {1: 10 if quick else 40, 8: 4 if quick else 12, 64: 1 if quick else 3}
    asyncio.run(_load(url, texts, 4, 2))  # warm-up
    asyncio.run(_load(url, texts, 1, 2, BATCH_TEXTS))
    measured: dict = {}
    for clients in CONCURRENCY:
        measured[str(clients)] = asyncio.run(_load(url, texts, clients, per_client[clients]))
        log(f"  {clients} clients: {_short(measured[str(clients)])}")
    batches = asyncio.run(_load(url, texts, 1, 4 if quick else 12, BATCH_TEXTS))
    measured[f"{BATCH_TEXTS}-text"] = batches
    log(f"  {BATCH_TEXTS}-text requests: {_short(batches)}")
    return measured


def _short(m: dict) -> str:
    return (
        f"{m['texts_per_second']:.1f} texts/s, p50 {m['p50_ms']:.1f} ms, p99 {m['p99_ms']:.1f} ms"
    )


def _core(model_dir: Path, texts: list[str], device: torch.device, quick: bool) -> dict:
    torch.set_num_threads(THREADS)
    embedder = Embedder.from_pretrained(
        model_dir, device=device, forward_mode=_served_forward_mode(model_dir, device)
    )
    embedder.embed(texts[:4])
    singles = []
    for text in texts[: 10 if quick else 40]:
        start = time.perf_counter()
        embedder.embed([text])
        singles.append(time.perf_counter() - start)
    start = time.perf_counter()
    for offset in range(0, len(texts), 64):
        embedder.embed(texts[offset : offset + 64])
    throughput = len(texts) / (time.perf_counter() - start)
    batches = []
    for offset in range(0, BATCH_TEXTS * (4 if quick else 12), BATCH_TEXTS):
        start = time.perf_counter()
        embedder.embed([texts[(offset + i) % len(texts)] for i in range(BATCH_TEXTS)])
        batches.append(time.perf_counter() - start)
    reference = embedder.embed(texts[:8]).embeddings.numpy()
    return {
        "forward_mode": embedder.forward_mode,
        "single_p50_ms": float(np.percentile(singles, 50) * 1000),
        "single_p99_ms": float(np.percentile(singles, 99) * 1000),
        "batched_texts_per_second": throughput,
        f"{BATCH_TEXTS}-text": {
            "p50_ms": float(np.percentile(batches, 50) * 1000),
            "p99_ms": float(np.percentile(batches, 99) * 1000),
            "texts_per_second": BATCH_TEXTS * len(batches) / sum(batches),
        },
        "reference": reference,
    }


def _parity(url: str, texts: list[str], reference: np.ndarray) -> float:
    response = httpx.post(url, json={"model": SERVED_NAME, "input": texts[:8]}, timeout=300)
    response.raise_for_status()
    rows = np.asarray([item["embedding"] for item in response.json()["data"]], np.float32)
    return float(np.max(np.abs(rows - reference)))


def _infinity(model_dir: Path, texts: list[str], device: torch.device, quick: bool, reference):
    if quick and not os.environ.get("QWEN3_EMBED_BENCH_INFINITY"):
        # Its virtual environment costs minutes and several GB on a fresh machine: too much for
        # the smoke run CI makes. The table says so; a full run always includes it.
        raise RuntimeError("not run in --quick (set QWEN3_EMBED_BENCH_INFINITY=1 to include it)")
    executable = ensure_environment(log)
    port = _free_port()
    with InfinityServer(executable, model_dir, port, device.type, SERVED_NAME, THREADS) as url:
        measured = _measure_server(url, texts, quick)
        measured["max_abs_diff_vs_core"] = _parity(url, texts, reference)
    return measured


def _served_forward_mode(model_dir: Path, device: torch.device) -> str:
    """The forward mode a replica of the app runs FORWARD_MODE as (the core alone runs the same)."""
    from deployments.serving_defaults import serving_load_options
    from qwen3_embed.options import LoadOptions

    options = LoadOptions(model=str(model_dir), device=device.type, forward_mode=FORWARD_MODE)
    return serving_load_options(options).forward_mode


def _this_app(
    model_dir: Path,
    texts: list[str],
    device: torch.device,
    quick: bool,
    reference,
    colocate: bool = True,
    http_proxy: str = "auto",
):
    """`qwen3-embed serve` run as users run it: the command in a subprocess, with the private Ray
    (and its Serve settings, deployments/ray_env.py) that it starts itself."""
    port = _free_port()
    config = {
        "models": [
            {
                "model": str(model_dir),
                "served_model_name": SERVED_NAME,
                "cpus_per_replica": THREADS,  # Ray sets OMP_NUM_THREADS from it
                "forward_mode": FORWARD_MODE,
                "gpus_per_replica": 1 if device.type == "cuda" else 0,
                "batching": {"max_batch_size": 64},  # no wait: continuous batching
            }
        ],
        "ingress": {"cpus_per_replica": 0.25, "timing_header": True, "colocate": colocate},
    }
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "app.json"
        config_path.write_text(json.dumps(config))
        command = [
            sys.executable, "-m", "qwen3_embed", "serve", "--app-config", str(config_path),
            "--port", str(port), "--num-cpus", str(RAY_CPUS), "--http-proxy", http_proxy,
        ]  # fmt: skip
        log_path = Path(tmp) / "serve.log"
        with _serve_command(command, log_path, f"http://127.0.0.1:{port}/ready"):
            url = f"http://127.0.0.1:{port}/v1/embeddings"
            measured = _measure_server(url, texts, quick)
            measured["max_abs_diff_vs_core"] = _parity(url, texts, reference)
    return measured


@contextlib.contextmanager
def _serve_command(command: list[str], log_path: Path, ready_url: str) -> Iterator[None]:
    """Run the command until it serves (`/ready` answers 200); Ctrl-C it afterwards."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    with log_path.open("wb") as sink:
        proc = subprocess.Popen(
            command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 300
        while not _ready(ready_url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"qwen3-embed serve did not start: {log_path.read_text()[-2000:]}"
                )
            time.sleep(1)
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _hops(stages: dict[str, float]) -> dict[str, float]:
    """Where one request's time went (medians, ms): each hop is what its outer span has
    beyond its inner one."""
    return {
        "client -> proxy -> ingress and back (HTTP, proxy)": stages["client"] - stages["ingress"],
        "ingress: auth, parse, validate": stages["ingress-in"],
        "ingress -> model replica call (Ray handle, pickling)": stages["model-call"]
        - stages["model"],
        "model: tokenise": stages["prepare"],
        "model: queue": stages["queue"],
        "model: forward": stages["forward"],
        "model: rest (reply)": stages["model"]
        - stages["prepare"]
        - stages["queue"]
        - stages["forward"],
        "ingress: render JSON": stages["render"],
    }


def run(device: torch.device, quick: bool) -> dict:
    shape = shape_for(quick)
    texts = make_corpus(64 if quick else 256, low=8, high=96, median=30, seed=7)
    results: dict = {
        "benchmark": "serve_load",
        "model": shape.name,
        "torch_threads": THREADS,
        "forward_mode": FORWARD_MODE,
        "servers": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(shape, Path(tmp) / "model")
        write_sentence_transformers_files(model_dir, shape.hidden_size, MAX_LENGTH)
        core = _core(model_dir, texts, device, quick)
        reference = core.pop("reference")
        results["core"] = core
        log(
            f"core: single p50 {core['single_p50_ms']:.1f} ms, "
            f"batched {core['batched_texts_per_second']:.1f} texts/s"
        )
        for name, measure in (
            ("infinity", _infinity),
            (DEFAULT, _this_app),
            (SPLIT, functools.partial(_this_app, colocate=False)),
            (RAY_PROXY, functools.partial(_this_app, http_proxy="ray")),
        ):
            log(f"{name}:")
            try:
                results["servers"][name] = measure(model_dir, texts, device, quick, reference)
            except Exception as error:  # reported in the table, never silently dropped
                log(f"{name} failed: {error!r}")
                results["servers"][name] = {"error": repr(error)}
    for name in APP_LAYOUTS:
        app = results["servers"][name]
        if "1" in app and "stages_median_ms" in app["1"]:
            results.setdefault("hops_1_client_ms", {})[name] = _hops(app["1"]["stages_median_ms"])
    results["rows"] = _rows(results)
    return results


def _cell(server: dict, key: str) -> str:
    if "error" in server:
        return "failed"
    m = server[key]
    return f"p50 {m['p50_ms']:.1f} / p99 {m['p99_ms']:.1f} ms, {m['texts_per_second']:.1f} texts/s"


def _rows(results: dict) -> list[dict]:
    core, servers = results["core"], results["servers"]
    infinity = servers["infinity"]
    rows = [
        row(
            f"core alone ({core['forward_mode']} forwards): one text / batches of 64 / 16 texts",
            f"p50 {core['single_p50_ms']:.1f} / p99 {core['single_p99_ms']:.1f} ms; "
            f"{core['batched_texts_per_second']:.1f} texts/s; "
            f"16 texts p50 {core['16-text']['p50_ms']:.1f} ms",
            "—",
            None,
        )
    ]
    for key, what in (
        ("1", "1 client, one text per request"),
        ("8", "8 clients, one text per request"),
        ("64", "64 clients, one text per request"),
        (f"{BATCH_TEXTS}-text", f"{BATCH_TEXTS}-text requests, sequential"),
    ):
        for name, server in servers.items():
            rows.append(row(f"{name}: {what}", _cell(server, key), "—", None))
    for name, server in servers.items():
        if "error" not in server:
            rows.append(
                row(
                    f"parity before timing: {name} vs core",
                    f"max abs diff {server['max_abs_diff_vs_core']:.1e}",
                    "<= 1e-4 (fp32)",
                    server["max_abs_diff_vs_core"] <= 1e-4,
                )
            )
    for name in APP_LAYOUTS:
        if "error" not in servers[name]:
            rows.extend(_target_rows(name, servers[name], core, infinity))
    for name, hops in results.get("hops_1_client_ms", {}).items():
        total = servers[name]["1"]["stages_median_ms"]["client"]
        rows.append(
            row(
                f"{name}: 1-client latency by hop (medians, ms)",
                "; ".join(f"{hop} {ms:.1f}" for hop, ms in hops.items())
                + f" (client total {total:.1f})",
                "—",
                None,
            )
        )
    return rows


def _target_rows(name: str, app: dict, core: dict, infinity: dict) -> list[dict]:
    """The issue's targets for one layout of this app."""
    p50, core_p50 = app["1"]["p50_ms"], core["single_p50_ms"]
    throughput = app["64"]["texts_per_second"]
    core_batched = core["batched_texts_per_second"]
    rows = [
        row(
            f"{name}: 1-client p50 vs the core's",
            f"{p50:.1f} vs {core_p50:.1f} ms = **+{p50 - core_p50:.1f} ms**",
            "<= +10 ms",
            p50 - core_p50 <= 10,
        ),
        row(
            f"{name}: 64-client throughput vs the core batched",
            f"{throughput:.1f} vs {core_batched:.1f} texts/s = **{throughput / core_batched:.2f}x**",
            ">= 0.8x",
            throughput / core_batched >= 0.8,
        ),
    ]
    if "error" not in infinity:
        inf_p50, inf_tp = infinity["1"]["p50_ms"], infinity["64"]["texts_per_second"]
        rows.append(
            row(
                f"{name}: 1-client p50 vs infinity's",
                f"{p50:.1f} vs {inf_p50:.1f} ms",
                "<= infinity",
                p50 <= inf_p50,
            )
        )
        rows.append(
            row(
                f"{name}: 64-client throughput vs infinity's",
                f"{throughput:.1f} vs {inf_tp:.1f} texts/s = **{throughput / inf_tp:.2f}x**",
                ">= 2x",
                throughput / inf_tp >= 2,
            )
        )
    return rows
