"""The pipeline's stages are declared, each with its own Ray Data arguments, and applied in order."""

from __future__ import annotations

import pyarrow as pa

from pipelines.map_stages import (
    PREPARE_TASK_MEMORY,
    MapStage,
    StageResources,
    apply_stages,
    embed_stage,
    prepare_stage,
)

RESOURCES = StageResources(
    prepare_rows=7, embed_rows=11, num_replicas=3, cpus_per_replica=0.5, gpus_per_replica=1.0
)


def _prepare(table: pa.Table, settings: str) -> pa.Table:
    return table.append_column("prepared", pa.array([settings] * table.num_rows))


class _Worker:
    def __init__(self, settings: str):
        self.settings = settings

    def __call__(self, table: pa.Table) -> pa.Table:
        return table.append_column("embedded", pa.array([self.settings] * table.num_rows))


def test_each_stage_carries_its_own_map_batches_arguments():
    prepare = prepare_stage(_prepare, {"settings": "p"}, RESOURCES)
    embed = embed_stage(_Worker, {"settings": "e"}, RESOURCES)
    assert (prepare.name, prepare.fn) == ("prepare", _prepare)
    assert prepare.map_batches_args == {
        "fn_kwargs": {"settings": "p"},
        "batch_format": "pyarrow",
        "batch_size": 7,
        "num_cpus": 1,
        "memory": PREPARE_TASK_MEMORY,
    }
    args = dict(embed.map_batches_args)
    compute = args.pop("compute")
    assert (embed.name, embed.fn) == ("embed", _Worker)
    assert compute.min_size == compute.max_size == 3  # a fixed pool: one replica per actor
    assert args == {
        "fn_constructor_kwargs": {"settings": "e"},
        "batch_format": "pyarrow",
        "batch_size": 11,
        "num_cpus": 0.5,
        "num_gpus": 1.0,
    }


def test_stages_apply_in_order(ray_cluster):
    import sys

    import ray
    from ray import cloudpickle

    # The workers cannot import this test module: ship its functions by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])

    resources = StageResources(
        prepare_rows=2, embed_rows=4, num_replicas=1, cpus_per_replica=0.5, gpus_per_replica=0.0
    )
    stages = (
        prepare_stage(_prepare, {"settings": "p"}, resources),
        embed_stage(_Worker, {"settings": "e"}, resources),
        MapStage(
            "tag",
            lambda table: table.append_column("last", table.column("embedded")),
            {"batch_format": "pyarrow"},
        ),
    )
    rows = apply_stages(ray.data.from_items([{"n": n} for n in range(5)]), stages).take_all()
    assert sorted(row["n"] for row in rows) == list(range(5))
    assert {(row["prepared"], row["embedded"], row["last"]) for row in rows} == {("p", "e", "e")}
