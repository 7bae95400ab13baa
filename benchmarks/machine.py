"""What a result was measured on, and the practical roofline: a large GEMM's FLOP rate."""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
from importlib import metadata

import torch


def versions() -> dict[str, str]:
    names = ("torch", "transformers", "sentence-transformers", "ray", "qwen3-embed")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def describe(device: torch.device) -> dict:
    info = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "versions": versions(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def gemm_flops_per_second(
    device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 10
) -> float:
    """Median FLOP/s of a square GEMM: the practical peak model FLOPs are compared against."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    timings = []
    for _ in range(repeats + 2):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        timings.append(time.perf_counter() - start)
    timings = sorted(timings[2:])
    return 2 * size**3 / timings[len(timings) // 2]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
