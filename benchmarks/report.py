"""The markdown table benchmarks/README.md shows, with each target and whether it was met."""

from __future__ import annotations


def _verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "**not met**"


def _core_rows(entry: dict) -> list[str]:
    speed = entry["tokens_per_second"]
    rows = [
        f"| core vs sentence-transformers defaults ({entry['model']}, {entry['dtype']}) | "
        f"{speed['ours']:.0f} vs {speed['peer_default']:.0f} tok/s = **{entry['speedup_vs_peer_default']:.2f}x** | >= 3x (CPU) | "
        f"{_verdict(entry['speedup_vs_peer_default'], 3.0)} |",
        f"| core vs sentence-transformers best batch ({entry['peer_best_batch_size']}) | "
        f"{speed['ours']:.0f} vs {speed['peer_best']:.0f} tok/s = **{entry['speedup_vs_peer_best']:.2f}x** | >= 1.5x | "
        f"{_verdict(entry['speedup_vs_peer_best'], 1.5)} |",
        f"| share of practical roofline (model FLOP/s / GEMM FLOP/s) | "
        f"{entry['model_flops_per_second'] / 1e9:.1f} / {entry['gemm_flops_per_second'] / 1e9:.1f} GFLOP/s = "
        f"**{entry['roofline_share']:.0%}** | >= 50% (CPU) | {_verdict(entry['roofline_share'], 0.5)} |",
        f"| padding (padded / real tokens) | **{entry['padding_ratio']:.3f}** | <= 1.1 | "
        f"{_verdict(entry['padding_ratio'], 1.1, higher_is_better=False)} |",
        f"| parity with the peer before timing | max abs diff {entry['max_abs_diff_vs_peer']:.1e} | <= 1e-4 (fp32) | "
        f"{_verdict(entry['max_abs_diff_vs_peer'], 1e-4, higher_is_better=False) if entry['dtype'] == 'float32' else 'n/a (bf16)'} |",
    ]
    return rows


def _generic_rows(name: str, entry: dict) -> list[str]:
    return [
        f"| {row['what']} | {row['value']} | {row['target']} | {row['verdict']} |"
        for row in entry.get("rows", [])
    ]


def markdown(results: dict) -> str:
    machine = results["machine"]
    header = [
        f"Measured {machine['date']} on {machine.get('gpu', machine['processor'])} "
        f"({machine['cpu_count']} CPUs, torch {machine['versions']['torch']}, "
        f"transformers {machine['versions']['transformers']}, "
        f"sentence-transformers {machine['versions']['sentence-transformers']}, ray {machine['versions']['ray']})"
        + (" — QUICK smoke run, not a measurement" if results["quick"] else ""),
        "",
        "| what | measured | target | |",
        "|---|---|---|---|",
    ]
    rows: list[str] = []
    for name, entry in results["results"].items():
        if name == "core":
            for shape_entry in entry:
                rows.extend(_core_rows(shape_entry))
        else:
            rows.extend(_generic_rows(name, entry))
    return "\n".join(header + rows) + "\n"
