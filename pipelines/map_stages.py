"""The embedding pipeline's Ray Data stages, each declared with its own `map_batches` arguments
(as Ray's batch processors declare theirs), and applied in order by `apply_stages`.

    prepare (CPU tasks: the core's `Preparer`)  ->  embed (an actor pool of model replicas)

The batch job (`job.py`) reads -> applies these stages -> writes, on its own rows
(`stages.prepare_batch`, `stages.EmbedWorker`); `embed_dataset` applies the same two stages to a
user's dataset, with functions that map its rows in and out (`dataset_stage`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.data import Dataset

# A real reservation (tokenizer / processor and a batch of media), and different remote args from
# the replicas: Ray Data fuses maps with equal args, which on CPU-only clusters would run
# tokenisation inside the replicas, serialised with the forward passes.
PREPARE_TASK_MEMORY = 1024**3


@dataclass(frozen=True)
class StageResources:
    """Batch sizes and resources of the two stages (the job and `embed_dataset` alike)."""

    prepare_rows: int
    embed_rows: int | None  # None: each replica call takes one prepare block whole
    num_replicas: int
    cpus_per_replica: float
    gpus_per_replica: float


@dataclass(frozen=True)
class MapStage:
    """One `Dataset.map_batches` call: the function (or callable class, for an actor pool) and
    every argument Ray Data gets for it."""

    name: str
    fn: Callable[..., Any] | type
    map_batches_args: dict[str, Any] = field(default_factory=dict)

    def apply(self, dataset: Dataset) -> Dataset:
        return dataset.map_batches(self.fn, **self.map_batches_args)


def prepare_stage(
    fn: Callable[..., Any], fn_kwargs: dict[str, Any], resources: StageResources
) -> MapStage:
    """CPU tasks: validate, format and tokenise rows (load images for VL)."""
    return MapStage(
        "prepare",
        fn,
        {
            "fn_kwargs": fn_kwargs,
            "batch_format": "pyarrow",
            "batch_size": resources.prepare_rows,
            "num_cpus": 1,
            "memory": PREPARE_TASK_MEMORY,
        },
    )


def embed_stage(
    worker: type, constructor_kwargs: dict[str, Any], resources: StageResources
) -> MapStage:
    """The actor pool: one model replica (a `worker` instance) per actor."""
    from ray.data import ActorPoolStrategy

    return MapStage(
        "embed",
        worker,
        {
            "fn_constructor_kwargs": constructor_kwargs,
            "compute": ActorPoolStrategy(size=resources.num_replicas),
            "batch_format": "pyarrow",
            "batch_size": resources.embed_rows,
            "num_cpus": resources.cpus_per_replica,
            "num_gpus": resources.gpus_per_replica,
        },
    )


def apply_stages(dataset: Dataset, stages: Sequence[MapStage]) -> Dataset:
    for stage in stages:
        dataset = stage.apply(dataset)
    return dataset
