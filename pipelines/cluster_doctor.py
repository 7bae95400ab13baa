"""`qwen3-embed doctor --address ADDR`: the core's doctor (`qwen3_embed.doctor`) once on every
node of a Ray cluster, a Ray task pinned to each, and a table of what each node will run.

Nodes with a GPU get the task with `num_gpus=1` (so CUDA is visible to it); a cluster with no
GPU at all is said to be CPU-only, and the doctor then runs on every alive node instead (with
`num_cpus=1`), so a CPU cluster can be checked too. Lives in a layer because it needs Ray; the
core's doctor never imports it unless `--address` (or `RAY_ADDRESS`) is given.
"""

from __future__ import annotations

import json
import logging
from typing import Any


def _doctor_on_this_node(kwargs: dict[str, Any]) -> dict[str, Any]:
    import ray
    from transformers.utils import logging as transformers_logging

    from qwen3_embed.doctor import run_doctor

    transformers_logging.disable_progress_bar()
    context = ray.get_runtime_context()
    node = {"node_id": context.get_node_id(), "node_ip": ray.util.get_node_ip_address()}
    return {**node, **run_doctor(**kwargs)}


def targets(nodes: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """(the alive nodes to run on, whether the cluster has GPUs): GPU nodes, else every node."""
    alive = [node for node in nodes if node.get("Alive")]
    with_gpu = [node for node in alive if node.get("Resources", {}).get("GPU", 0) >= 1]
    return (with_gpu, True) if with_gpu else (alive, False)


def run_on_cluster(address: str, kwargs: dict[str, Any], as_json: bool) -> int:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not ray.is_initialized():
        ray.init(address=address, logging_level=logging.WARNING)
    nodes, has_gpus = targets(ray.nodes())
    if not has_gpus:
        print(
            f"CPU-only cluster: no node has a GPU; running the doctor on each of the "
            f"{len(nodes)} alive node(s) instead",
            flush=True,
        )
    remote = ray.remote(_doctor_on_this_node)
    pending = []
    for node in nodes:
        resources = {"num_gpus": 1} if has_gpus else {"num_cpus": 1}
        strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        pending.append(
            (node, remote.options(scheduling_strategy=strategy, **resources).remote(kwargs))
        )
    reports = []
    for node, ref in pending:
        try:
            reports.append(ray.get(ref))
        except Exception as error:  # noqa: BLE001 - a node that cannot run it is a failed row
            reports.append(
                {
                    "node_id": node["NodeID"],
                    "node_ip": node.get("NodeManagerAddress"),
                    "ok": False,
                    "error": f"{type(error).__name__}: {error}",
                }
            )
    print(format_table(reports), flush=True)
    ok = bool(reports) and all(report["ok"] for report in reports)
    if as_json:
        summary = {"ok": ok, "cluster": "gpu" if has_gpus else "cpu-only", "nodes": reports}
        print(json.dumps(summary, default=str), flush=True)
    return 0 if ok else 1


def format_table(reports: list[dict[str, Any]]) -> str:
    lines = [
        f"{'node':16} {'device':8} {'dtype':9} {'forward':8} {'attention kernel':18} {'ok':6} checks",
    ]
    for report in reports:
        if "checks" not in report:
            lines.append(
                f"{report['node_ip'] or '?':16} {'-':8} {'-':9} {'-':8} {'-':18} {'FAILED':6} {report['error']}"
            )
            continue
        checks = ", ".join(
            f"{check['name']} {'skipped' if check['ok'] is None else 'ok' if check['ok'] else 'FAILED'}"
            for check in report["checks"]
        )
        lines.append(
            f"{report['node_ip']:16} {report['device']:8} {report['dtype']:9} "
            f"{report['forward_mode']:8} {report['attention_kernel']:18} "
            f"{'ok' if report['ok'] else 'FAILED':6} {checks}"
        )
    return "\n".join(lines)
