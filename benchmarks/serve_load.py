"""Benchmark 3: the Serve app under 1, 8 and 64 concurrent clients (loopback, bounded), against
the core's own latency and throughput on the same inputs."""

from __future__ import annotations

import asyncio
import socket
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from qwen3_embed import Embedder

from .common import build_model, log, row, shape_for, start_ray
from .corpus import make_corpus

CONCURRENCY = (1, 8, 64)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def _load(
    url: str, texts: list[str], clients: int, requests_per_client: int
) -> tuple[float, list[float]]:
    """`clients` concurrent loops, each sending `requests_per_client` one-text requests."""
    latencies: list[float] = []

    async def client_loop(client: httpx.AsyncClient, offset: int) -> None:
        for index in range(requests_per_client):
            text = texts[(offset * requests_per_client + index) % len(texts)]
            start = time.perf_counter()
            response = await client.post(url, json={"model": "bench", "input": [text]})
            latencies.append(time.perf_counter() - start)
            response.raise_for_status()

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client, offset) for offset in range(clients)))
        return time.perf_counter() - started, latencies


def _core_numbers(model_dir: Path, texts: list[str], device: torch.device) -> tuple[float, float]:
    embedder = Embedder.from_pretrained(model_dir, device=device)
    embedder.embed(texts[:4])
    singles = []
    for text in texts[:30]:
        start = time.perf_counter()
        embedder.embed([text])
        singles.append(time.perf_counter() - start)
    start = time.perf_counter()
    for offset in range(0, len(texts), 64):
        embedder.embed(texts[offset : offset + 64])
    throughput = len(texts) / (time.perf_counter() - start)
    return statistics.median(singles), throughput


def run(device: torch.device, quick: bool) -> dict:
    import ray
    from ray import serve

    from deployments.app import build_app

    shape = shape_for(quick)
    texts = make_corpus(64 if quick else 512, low=8, high=96, median=30, seed=7)
    per_client = {1: 10 if quick else 60, 8: 4 if quick else 24, 64: 1 if quick else 8}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(shape, Path(tmp) / "model")
        core_p50, core_throughput = _core_numbers(model_dir, texts, device)
        log(f"core: single p50 {core_p50 * 1000:.1f} ms, batched {core_throughput:.1f} texts/s")
        start_ray()
        try:
            port = _free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            app = build_app(
                {
                    "models": [
                        {
                            "model": str(model_dir),
                            "served_model_name": "bench",
                            "cpus_per_replica": 2,
                            "gpus_per_replica": 1 if device.type == "cuda" else 0,
                            "batching": {"max_batch_size": 64, "batch_wait_ms": 5},
                        }
                    ],
                    "ingress": {"cpus_per_replica": 0.25},
                }
            )
            serve.run(app, name="bench", route_prefix="/")
            url = f"http://127.0.0.1:{port}/v1/embeddings"
            asyncio.run(_load(url, texts, 4, 2))  # warm-up
            measured = {}
            for clients in CONCURRENCY:
                wall, latencies = asyncio.run(_load(url, texts, clients, per_client[clients]))
                measured[clients] = {
                    "requests": len(latencies),
                    "requests_per_second": len(latencies) / wall,
                    "p50_ms": float(np.percentile(latencies, 50) * 1000),
                    "p99_ms": float(np.percentile(latencies, 99) * 1000),
                }
                log(f"{clients} clients: {measured[clients]}")
        finally:
            serve.shutdown()
            ray.shutdown()

    throughput_ratio = measured[64]["requests_per_second"] / core_throughput
    latency_gap_ms = measured[1]["p50_ms"] - core_p50 * 1000
    return {
        "benchmark": "serve_load",
        "model": shape.name,
        "core_single_p50_ms": core_p50 * 1000,
        "core_batched_texts_per_second": core_throughput,
        "by_concurrency": measured,
        "rows": [
            *[
                row(
                    f"serve, {clients} concurrent client(s), one text per request",
                    f"{m['requests_per_second']:.1f} req/s, p50 {m['p50_ms']:.1f} ms, p99 {m['p99_ms']:.1f} ms",
                    "—",
                    None,
                )
                for clients, m in measured.items()
            ],
            row(
                "serve throughput at 64 clients vs the core batched",
                f"{measured[64]['requests_per_second']:.1f} vs {core_throughput:.1f} texts/s = **{throughput_ratio:.2f}x**",
                ">= 0.8x",
                throughput_ratio >= 0.8,
            ),
            row(
                "serve single-request p50 vs the core's latency",
                f"{measured[1]['p50_ms']:.1f} vs {core_p50 * 1000:.1f} ms = **+{latency_gap_ms:.1f} ms**",
                "<= +20 ms",
                latency_gap_ms <= 20,
            ),
        ],
    }
