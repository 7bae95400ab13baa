"""Benchmark 4: peak memory of the batch job (driver and workers) at 1x and 10x corpus size."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import psutil
import torch

from .common import build_model, log, row, start_ray, write_corpus
from .core_vs_st import QUICK_SHAPE
from .corpus import make_corpus


class PeakMemory:
    """Samples RSS of this process and of its descendants (the private Ray cluster it started:
    GCS, raylet, workers) until stopped; other Ray clusters on the machine are not counted."""

    def __init__(self, interval_s: float = 0.2):
        self.interval_s = interval_s
        self.driver_peak = 0
        self.worker_peak = 0
        self.total_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        me = psutil.Process(os.getpid())
        while not self._stop.is_set():
            driver = me.memory_info().rss
            workers = []
            for process in me.children(recursive=True):
                try:
                    workers.append(process.memory_info().rss)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.driver_peak = max(self.driver_peak, driver)
            self.worker_peak = max([self.worker_peak, *workers])
            self.total_peak = max(self.total_peak, driver + sum(workers))
            self._stop.wait(self.interval_s)


def _run_job(model_dir: Path, corpus: Path, output: Path) -> tuple[PeakMemory, dict]:
    import ray

    from pipelines import JobConfig, run_embedding_job

    start_ray()
    try:
        with PeakMemory() as peak:
            result = run_embedding_job(
                JobConfig(
                    input=str(corpus),
                    output=str(output),
                    model=str(model_dir),
                    id_column="id",
                    progress=False,
                )
            )
    finally:
        ray.shutdown()
    return peak, result.manifest


def run(device: torch.device, quick: bool) -> dict:
    base = 300 if quick else 3000
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model_dir = build_model(QUICK_SHAPE, tmp_path / "model")  # memory, not speed, is measured
        measured = {}
        for factor in (1, 10):
            texts = make_corpus(base * factor, low=4, high=128, median=20, seed=factor)
            corpus = write_corpus(tmp_path / f"corpus-{factor}x.jsonl", texts)
            peak, manifest = _run_job(model_dir, corpus, tmp_path / f"out-{factor}x")
            measured[factor] = {
                "rows": manifest["rows_in"],
                "driver_peak_mib": peak.driver_peak / 2**20,
                "worker_peak_mib": peak.worker_peak / 2**20,
                "total_peak_mib": peak.total_peak / 2**20,
                "wall_seconds": manifest["wall_seconds"],
            }
            log(f"{factor}x: {measured[factor]}")
    ratios = {
        key: measured[10][key] / measured[1][key]
        for key in ("driver_peak_mib", "worker_peak_mib", "total_peak_mib")
    }
    worst = max(ratios.values())
    return {
        "benchmark": "scale_memory",
        "measured": measured,
        "ratios_10x_over_1x": ratios,
        "rows": [
            row(
                f"batch job peak memory, {measured[10]['rows']:,} vs {measured[1]['rows']:,} rows",
                f"driver {measured[1]['driver_peak_mib']:.0f}→{measured[10]['driver_peak_mib']:.0f} MiB, "
                f"largest Ray process {measured[1]['worker_peak_mib']:.0f}→{measured[10]['worker_peak_mib']:.0f} MiB, "
                f"all {measured[1]['total_peak_mib']:.0f}→{measured[10]['total_peak_mib']:.0f} MiB: worst ratio **{worst:.2f}**",
                "<= 1.2",
                worst <= 1.2,
            )
        ],
    }
