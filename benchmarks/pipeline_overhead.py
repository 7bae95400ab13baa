"""Benchmark 2: the Ray Data job over a corpus vs a bare loop over `Embedder.embed` on the same
machine (Ray start-up reported separately)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from qwen3_embed import Embedder

from .common import build_model, corpus_texts, log, row, shape_for, start_ray, write_corpus

CHUNK = 256  # the bare loop embeds the corpus in chunks, as a streaming reader would hand it over


def run(device: torch.device, quick: bool) -> dict:
    import ray

    from pipelines import JobConfig, run_embedding_job

    shape = shape_for(quick)
    texts = corpus_texts(quick)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model_dir = build_model(shape, tmp_path / "model")
        corpus = write_corpus(tmp_path / "corpus.jsonl", texts)

        embedder = Embedder.from_pretrained(model_dir, device=device)
        embedder.embed(texts[:8])  # warm-up
        started = time.perf_counter()
        tokens = 0
        for start in range(0, len(texts), CHUNK):
            tokens += sum(embedder.embed(texts[start : start + CHUNK]).sequence_lengths)
        bare_s = time.perf_counter() - started
        del embedder
        log(f"bare loop: {len(texts)} texts, {tokens} tokens in {bare_s:.2f} s")

        ray_start_s = start_ray()
        try:
            config = JobConfig(
                input=str(corpus),
                output=str(tmp_path / "out"),
                model=str(model_dir),
                id_column="id",
                num_replicas=1,
                cpus_per_replica=2,
                gpus_per_replica=1 if device.type == "cuda" else 0,
                progress=False,
            )
            result = run_embedding_job(config)
        finally:
            ray.shutdown()
        job_s = result.manifest["wall_seconds"]
        execute_s = result.manifest.get("execute_seconds", job_s)
        log(
            f"ray data job: {job_s:.2f} s (executing {execute_s:.2f} s), ray start-up {ray_start_s:.2f} s"
        )

    ratio = bare_s / job_s
    return {
        "benchmark": "pipeline_overhead",
        "model": shape.name,
        "texts": len(texts),
        "tokens": tokens,
        "bare_loop_seconds": bare_s,
        "job_wall_seconds": job_s,
        "job_execute_seconds": execute_s,
        "ray_startup_seconds": ray_start_s,
        "throughput_ratio_job_over_bare": ratio,
        "rows": [
            row(
                f"batch job vs bare `Embedder.embed` loop ({shape.name}, {len(texts)} texts, 1 replica)",
                f"{tokens / job_s:.0f} vs {tokens / bare_s:.0f} tok/s = **{ratio:.2f}x** "
                f"(Ray start-up {ray_start_s:.1f} s apart)",
                ">= 0.85x",
                ratio >= 0.85,
            )
        ],
    }
