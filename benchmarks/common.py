"""Helpers shared by the benchmarks that run Ray: a corpus on disk, a model, a local cluster,
and the result rows the report prints."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .core_vs_st import CPU_SHAPE, QUICK_SHAPE, Shape, build_model
from .corpus import make_corpus

# Logical CPUs for the benchmark's Ray: one replica with 2 torch threads plus one prepare task,
# on this machine's 2 cores (Ray's CPU count is a scheduling number, not a core count).
RAY_CPUS = 3


def log(message: str) -> None:
    print(f"   {message}", file=sys.stderr, flush=True)


def write_corpus(path: Path, texts: list[str]) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for index, text in enumerate(texts):
            handle.write(json.dumps({"id": f"doc-{index:07d}", "text": text}) + "\n")
    return path


def shape_for(quick: bool) -> Shape:
    return QUICK_SHAPE if quick else CPU_SHAPE


def corpus_texts(quick: bool, count: int | None = None) -> list[str]:
    return make_corpus(
        count or (64 if quick else 600),
        low=8,
        high=256 if quick else 1024,
        median=30 if quick else 60,
    )


def start_ray() -> float:
    """Start a private local Ray; returns its start-up seconds (reported apart from the work)."""
    import ray

    started = time.perf_counter()
    ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False, logging_level="ERROR")
    return time.perf_counter() - started


def row(what: str, value: str, target: str, met: bool | None) -> dict:
    verdict = "n/a" if met is None else ("met" if met else "**not met**")
    return {"what": what, "value": value, "target": target, "verdict": verdict}


__all__ = ["build_model", "corpus_texts", "log", "row", "shape_for", "start_ray", "write_corpus"]
