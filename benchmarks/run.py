"""`python -m benchmarks.run [--quick] [--device cpu|cuda] [--only NAME,...]`

Measures this project against its peers on the same machine in the same run, and writes
`benchmarks/results/<name>.json` plus `<name>.md` (the table benchmarks/README.md shows).

`--device cuda` runs the GPU forward benchmark (`benchmarks.gpu`, which needs no Ray) unless
`--only` says otherwise; it writes `benchmarks/results/gpu.json` + `gpu.md` itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from . import core_vs_st
from .machine import describe
from .report import markdown

BENCHMARKS = {"core": core_vs_st.run}
OPTIONAL = {
    "gpu": "benchmarks.gpu",
    "pipeline": "benchmarks.pipeline_overhead",
    "serve": "benchmarks.serve_load",
    "scale": "benchmarks.scale_memory",
    # Not in the default set: at full size it writes and deletes GiBs of synthetic OUTPUT.
    "resume": "benchmarks.resume_scale",
    "rowbytes": "benchmarks.row_bytes",
    # The reranker against sentence-transformers' CrossEncoder (not in the default set).
    "rerank": "benchmarks.rerank_vs_st",
    "chunking": "benchmarks.chunking",
}


def _load(name: str):
    if name in BENCHMARKS:
        return BENCHMARKS[name]
    import importlib

    return importlib.import_module(OPTIONAL[name]).run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes, one run each: a smoke test, not a measurement",
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated: core,gpu,pipeline,serve,scale,resume,rowbytes,rerank,chunking "
        "(default: gpu with --device cuda, else core,pipeline,serve,scale)",
    )
    parser.add_argument(
        "--name", default=None, help="results file name (default: <device>[-quick])"
    )
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if args.only is None:
        args.only = "gpu" if device.type == "cuda" else "core,pipeline,serve,scale"
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    if names == ["gpu"]:  # its own command, with its own results files (gpu.json / gpu.md)
        from . import gpu

        return gpu.main(["--device", device.type, *(["--smoke"] if args.quick else [])])
    unknown = set(names) - set(BENCHMARKS) - set(OPTIONAL)
    if unknown:
        parser.error(
            f"unknown benchmark(s) {sorted(unknown)}; valid values are: {', '.join([*BENCHMARKS, *OPTIONAL])}"
        )
    results = {"machine": describe(device), "quick": args.quick, "results": {}, "seconds": {}}
    for name in names:
        print(f"== {name}", file=sys.stderr, flush=True)
        began = time.monotonic()
        results["results"][name] = _load(name)(device, args.quick)
        results["seconds"][name] = round(time.monotonic() - began, 1)  # the whole benchmark's run
        _write(args, device, results)  # after each benchmark, so a long run keeps what it measured
    print(_write(args, device, results))
    return 0


def _write(args: argparse.Namespace, device: torch.device, results: dict) -> str:
    name = args.name or f"{device.type}{'-quick' if args.quick else ''}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{name}.json").write_text(json.dumps(results, indent=2, default=str))
    table = markdown(results)
    (args.out_dir / f"{name}.md").write_text(table)
    return table


if __name__ == "__main__":
    sys.exit(main())
