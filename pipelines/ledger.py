"""The job's ledger: one small named actor per run that bounds replica crashes and times start-up.

Ray Data restarts a dead replica and retries its unfinished batches as often as it takes (its
defaults, max_restarts=-1 and max_task_retries=-1, which this job keeps: Ray 2.64 removes the
`**ray_remote_args` that could change them). A batch that kills every replica it reaches would
then loop forever, so the replicas count their own deaths here: each batch is `begin`-ed before
its forward pass and `finish`-ed after, and a batch begun more often than finished was in
progress when its replica died. After `REPLICA_CRASHES_PER_BATCH` such deaths the batch is
embedded row by row, and a row that was in progress at as many deaths becomes an error row
(`replica_crashed`) instead of costing another replica. A one-off kill or preemption never
writes a row off. This is layer 1 of `failure_layers`, whose docstring shows it among the others.

The replicas also report when they finished loading and their first batch, so the summary can
say where a small job's time went.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pyarrow as pa

# The bound is a policy of the failure layers (see `failure_layers`), kept there with the others;
# re-exported (`X as X`) under its old address.
from .failure_layers import REPLICA_CRASHES_PER_BATCH as REPLICA_CRASHES_PER_BATCH
from .rows import CODE_REPLICA_CRASHED

logger = logging.getLogger(__name__)
LEDGER_NAMESPACE = "qwen3-embed"


class Ledger:
    """Counts per key, and the replicas' start-up times (wall clock, `time.time()`). Run as a
    Ray actor with `num_cpus=0`; also usable in-process (tests)."""

    def __init__(self) -> None:
        self.started: Counter[str] = Counter()
        self.finished: Counter[str] = Counter()
        self.ready: list[float] = []
        self.first_batch: list[float] = []
        self.forward: dict[str, Any] | None = None  # the first replica's `Embedder.describe()`
        self.rows: Counter[str] = Counter()  # rows through the embed stage, by status

    def add_rows(self, counts: dict[str, int]) -> None:
        self.rows.update(counts)

    def progress(self) -> dict[str, int]:
        """Rows through the embed stage so far, by status (a batch repeated after a replica
        died counts again: the progress line's figures, not the job's counts)."""
        return dict(self.rows)

    def begin(self, key: str) -> int:
        """Starts an attempt at `key`; returns how many earlier attempts never finished."""
        crashed = self.started[key] - self.finished[key]
        self.started[key] += 1
        return crashed

    def finish(self, key: str) -> None:
        self.finished[key] += 1

    def replica_ready(self, at: float, described: dict[str, Any] | None = None) -> None:
        self.ready.append(at)
        if self.forward is None and described is not None:
            self.forward = described

    def replica_first_batch(self, at: float) -> None:
        self.first_batch.append(at)

    def timings(self) -> dict[str, Any]:
        return {
            "first_ready": min(self.ready, default=None),
            "first_batch": min(self.first_batch, default=None),
            "replica_starts": len(self.ready),
            "forward": self.forward,
        }


def start_ledger(run_id: str) -> tuple[Any, str]:
    """The run's ledger actor (named, so replicas find it whatever restarted them), pinned to
    the driver's node: it lives and dies with the driver. Returns (handle, name)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    name = f"qwen3-embed-ledger-{run_id}"
    handle = (
        ray.remote(Ledger)
        .options(
            name=name,
            namespace=LEDGER_NAMESPACE,
            num_cpus=0,
            max_restarts=0,  # its counts are its value: a restarted, empty ledger would lie
            scheduling_strategy=NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False
            ),
        )
        .remote()
    )
    ray.get(handle.timings.remote())  # up before any replica asks for it
    return handle, name


class CrashGuard:
    """Runs a replica's batches through the ledger (see the module docstring)."""

    def __init__(self, ledger_name: str | None, ledger: Any = None, work: str = "embedding"):
        # What the replica does, for the reason of a written-off row ("embedding", "reranking").
        self.work = work
        self.ledger = ledger
        self.remote = ledger is None and ledger_name is not None
        if self.remote:
            import ray

            self.ledger = ray.get_actor(ledger_name, namespace=LEDGER_NAMESPACE)
        self.reported_first_batch = False

    def _call(self, method: str, *args: Any, wait: bool = True) -> Any:
        if self.ledger is None:
            return 0
        if not self.remote:
            return getattr(self.ledger, method)(*args)
        import ray

        ref = getattr(self.ledger, method).remote(*args)
        return ray.get(ref) if wait else None

    def replica_ready(self, described: dict[str, Any] | None = None) -> None:
        self._call("replica_ready", time.time(), described, wait=False)

    def run(
        self,
        table: pa.Table,
        call: Callable[[pa.Table], pa.Table],
        failed_rows: Callable[[pa.Table, str, str], pa.Table],
        has_work: Callable[[pa.Table], bool],
    ) -> pa.Table:
        """`call(table)`, unless the batch already went down with REPLICA_CRASHES_PER_BATCH
        replicas: then row by row, a row that did too becoming `failed_rows(row, reason, code)`.
        Batches without work (every row skipped or failed earlier) bypass the ledger."""
        if self.ledger is None:
            return call(table)
        if not has_work(table):
            out = call(table)
            self._report_rows(out)
            return out
        ids = table.column("id").to_pylist()
        key = "batch:" + _digest(ids)
        crashed = self._call("begin", key)
        if crashed < REPLICA_CRASHES_PER_BATCH:
            out = call(table)
        elif table.num_rows == 1:
            out = failed_rows(table, _reason(crashed, self.work), CODE_REPLICA_CRASHED)
        else:
            logger.warning(
                "a batch of %d rows was in progress when %d replicas died; %s it row by row",
                table.num_rows,
                crashed,
                self.work,
            )
            # A failed row lacks the flag columns an embedded row has (`rows.REUSED_COLUMN`):
            # concatenated by name, nulls filling in, as Ray concatenates blocks.
            out = pa.concat_tables(
                [self._row(table.slice(i, 1), call, failed_rows) for i in range(table.num_rows)],
                promote_options="default",
            )
        self._call("finish", key, wait=False)
        self._first_batch_done()
        self._report_rows(out)
        return out

    def _report_rows(self, out: pa.Table) -> None:
        """The batch's rows by status, for the driver's progress line (see `progress`)."""
        counts = Counter(out.column("status").to_pylist())
        self._call("add_rows", dict(counts), wait=False)

    def _row(self, row: pa.Table, call: Callable, failed_rows: Callable) -> pa.Table:
        key = "row:" + _digest(row.column("id").to_pylist())
        crashed = self._call("begin", key)
        if crashed >= REPLICA_CRASHES_PER_BATCH:
            logger.warning(
                "row %r took down %d replicas: written off as an error row",
                row.column("id")[0].as_py(),
                crashed,
            )
            out = failed_rows(row, _reason(crashed, self.work), CODE_REPLICA_CRASHED)
        else:
            out = call(row)
        self._call("finish", key, wait=False)
        return out

    def _first_batch_done(self) -> None:
        if not self.reported_first_batch:
            self.reported_first_batch = True
            self._call("replica_first_batch", time.time(), wait=False)


def _digest(ids: list[str]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for row_id in ids:
        digest.update(row_id.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()


def _reason(crashed: int, work: str = "embedding") -> str:
    doing = {"embedding": "this row was being embedded", "reranking": "this query was being scored"}
    return (
        f"the {work} replica died {crashed} times while {doing.get(work, 'this row was worked on')} "
        "alone (after its batch had taken down as many); written off rather than costing more "
        "replicas"
    )
