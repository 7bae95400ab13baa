"""The failure layers around one forward pass, in one place: what each catches, how often it
tries, and what it leaves in `_errors/`. A change of retry policy is a change here.

Outermost first; each layer only sees what the layers inside it let through.

| # | Layer (where) | Catches | How often / bound | Leaves in `_errors/` |
|---|---------------|---------|-------------------|----------------------|
| 0 | Ray Data's own retries (its defaults, kept) | a dead worker process: a prepare task, a replica (SIGKILL, the OOM killer, a segfault, preemption) | a task is retried and a replica restarted with its batches run again, without limit (`max_retries=-1`, `max_restarts=-1`, `max_task_retries=-1`) | nothing |
| 1 | crash bound (`ledger.CrashGuard`, the run's ledger actor) | a batch in progress when its replica died (begun, never finished); replicas only, not prepare tasks | after `REPLICA_CRASHES_PER_BATCH` (2) deaths the batch goes row by row; a row in progress at 2 more deaths alone is written off | `replica_crashed`: "the embedding replica died 2 times while this row was being embedded alone ..." (rerank jobs: "the reranking replica died 2 times while this query was being scored alone ...") |
| 2 | stage attempts (`attempts_then_rows`) | any exception raised by a block's prepare or embed call, except `StageBroken` | the block `STAGE_ATTEMPTS` (3) times, then each row once alone; when every row of a multi-row block fails alone, or on `StageBroken`, it raises: the job fails loudly | `prepare_failed` / `embed_failed`: "<stage> failed on this row alone after 3 attempts on its block: <Type>: <message>" |
| 3 | item fallback (`items_alone_after_failure`, in `EmbedWorker._embed`) | any exception of one forward call over a block's distinct inputs (not OOM: the core handles it) | the call once, then each input once alone; all inputs of a multi-row call failing alone raises `StageBroken` (a broken replica, not bad rows) | `embed_failed`: "<Type>: <message>" |
| 4 | OOM split (the core: `qwen3_embed.runner`, `qwen3_embed.oom`) | out of device memory (`torch.OutOfMemoryError`, allocator errors of other devices) | the batch halved, again and again; the token budget drops to half the failed batch and grows back by 1/8 after 16 clean forwards; an input alone gets one retry after the cache is freed | `input_too_large_for_device`: "input has N tokens and ran out of device memory even when embedded alone; ..." |

Which layers each way of running has (the compositions below are the wiring):

- `qwen3-embed embed` (`job.py`): prepare 0, 2 (`prepare_layers`); embed 0, 1, 2, 3, 4
  (`embed_layers`). A prepare task that kills its process on every try (a decoder crash on one
  file, say) has no layer 1: Ray retries it without bound.
- `embed_dataset`: the same without 1 (a user's dataset has no row ids of the job's to key its
  batches by, see `dataset_stage`): a row that kills every replica is retried by Ray forever.
- `qwen3-embed rerank` (`rerank_job.py`): 0, 1, 4 (`rerank_layers`). No 2 and 3: the core's
  `prepare_pairs` returns a bad pair as its error instead of raising, and any other exception
  leaves the replica's call and fails the job (Ray Data retries application errors only when
  `DataContext.actor_task_retry_on_errors` says so, off by default).
- `rerank_dataset`: 0, 4.

Layer 4 stays in the core (Serve's replicas use it too) and the core never imports this module:
the workers ask the core for `errors="collect"`, which turns an input too large alone into that
input's failure instead of an exception, and this module only documents it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from qwen3_embed.errors import Qwen3EmbedError

from .rows import CODE_EMBED_FAILED, CODE_PREPARE_FAILED, STATUS_OK

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------ policy
STAGE_ATTEMPTS = 3  # layer 2: tries of a whole block before it is split into rows
REPLICA_CRASHES_PER_BATCH = 2  # layer 1: deaths of a batch's replicas before it goes row by row

# (rows, reason, code) -> the same rows as error rows in the stage's schema; rows already failed
# or skipped keep their status. Layers 1 and 2 write off rows only through one of these.
FailedRows = Callable[[pa.Table, str, str], pa.Table]
# Layer 3's forward: inputs -> ((N, ...) results, {position: (reason, code)} for the inputs the
# core failed on alone, e.g. `input_too_large_for_device`).
Forward = Callable[[Sequence[Any]], tuple[np.ndarray, dict[int, tuple[str, str]]]]


class StageBroken(Qwen3EmbedError, RuntimeError):
    """Every item of a batch failed alone: the stage (say, a replica's device) is broken, not the
    items. Raised, never written off as error rows."""

    code = "stage_broken"


class ReplicaGuard(Protocol):
    """Layer 1 as the compositions use it (`ledger.CrashGuard`)."""

    def run(
        self,
        table: pa.Table,
        call: Callable[[pa.Table], pa.Table],
        failed_rows: FailedRows,
        has_work: Callable[[pa.Table], bool],
    ) -> pa.Table: ...


def has_ok_rows(table: pa.Table) -> bool:
    """A block with work: any row still `ok` (others were skipped or failed upstream)."""
    return STATUS_OK in table.column("status").to_pylist()


# ----------------------------------------------------------------- layer 2: the stage
def attempts_then_rows(
    stage: str,
    call: Callable[[pa.Table], pa.Table],
    table: pa.Table,
    failed_rows: FailedRows,
    code: str,
) -> pa.Table:
    """`call(table)`, tried `STAGE_ATTEMPTS` times; then row by row, where a row that raises alone
    becomes an error row (`code`, the exception as its reason). Raises when the stage is broken:
    `StageBroken` at once (never retried), or every row of a multi-row block failing alone."""
    failure: Exception | None = None
    for attempt in range(1, STAGE_ATTEMPTS + 1):
        try:
            return call(table)
        except StageBroken:
            # The call already tried the block and each item alone: a retry would only repeat
            # those (N + 1) doomed forwards.
            raise
        except Exception as error:  # noqa: BLE001 - retried, then narrowed to rows below
            failure = error
            logger.warning(
                "%s failed on a block of %d rows (attempt %d of %d): %s: %s",
                stage,
                table.num_rows,
                attempt,
                STAGE_ATTEMPTS,
                type(error).__name__,
                error,
            )
    pieces, failed = [], 0
    for index in range(table.num_rows):
        row = table.slice(index, 1)
        try:
            pieces.append(call(row))
        except Exception as error:  # noqa: BLE001 - recorded as this row's error
            failed += 1
            reason = (
                f"{stage} failed on this row alone after {STAGE_ATTEMPTS} attempts on its block: "
                f"{type(error).__name__}: {error}"
            )
            pieces.append(failed_rows(row, reason, code))
    if table.num_rows > 1 and failed == table.num_rows:
        raise failure  # type: ignore[misc]
    logger.warning(
        "%s: %d of %d rows failed alone and became error rows", stage, failed, table.num_rows
    )
    # By name: a failed row lacks the flag columns a stage adds (see `rows.TRUNCATED_COLUMN`).
    return pa.concat_tables(pieces, promote_options="default")


# ------------------------------------------------------------ layer 3: the worker's items
def items_alone_after_failure(
    forward: Forward,
    items: Sequence[Any],
    empty: Callable[[int], np.ndarray],
    rows: int | None = None,
    release: Callable[[], None] = lambda: None,
) -> tuple[np.ndarray, dict[int, tuple[str, str]]]:
    """`forward(items)`; if it raises, each item alone, so that one pathological input fails
    alone (`embed_failed`, the exception as its reason). `empty(n)` is the results' array for n
    items (rows of failed items stay as it made them); `release()` frees device memory after a
    failed forward. `rows`: the call's rows before identical inputs were merged (see
    `qwen3_embed.dedupe`); when more than one row's every input fails alone, the replica itself
    is broken: `StageBroken`, which layer 2 raises on, and Ray retries or the job fails loudly.

    Out-of-memory does not come here: the core (layer 4) splits the forward and reports an input
    too large alone among the returned failures."""
    if not items:
        return empty(0), {}
    try:
        return forward(items)
    except Exception as batch_error:  # noqa: BLE001 - narrowed below, item by item
        logger.warning("batch of %d failed (%s); retrying item by item", len(items), batch_error)
        release()
        results = empty(len(items))
        failures: dict[int, tuple[str, str]] = {}
        for position, item in enumerate(items):
            try:
                result, failed = forward([item])
            except Exception as item_error:  # noqa: BLE001 - recorded as this row's error
                failures[position] = (
                    f"{type(item_error).__name__}: {item_error}",
                    CODE_EMBED_FAILED,
                )
                release()
                continue
            if failed:
                failures[position] = failed[0]
            else:
                results[position] = result[0]
        # As many rows failing alone as before merging tells the same broken replica.
        if (rows or len(items)) > 1 and len(failures) == len(items):
            raise StageBroken(
                f"every item of a batch of {len(items)} failed alone: "
                f"{type(batch_error).__name__}: {batch_error}"
            ) from batch_error
        return results, failures


# ------------------------------------------------------------------ the compositions
def prepare_layers(
    prepare_block: Callable[[pa.Table], pa.Table], table: pa.Table, failed_rows: FailedRows
) -> pa.Table:
    """A prepare task's block: layer 2 (Ray Data's task retries, layer 0, around it)."""
    return attempts_then_rows("prepare", prepare_block, table, failed_rows, CODE_PREPARE_FAILED)


def embed_layers(
    guard: ReplicaGuard,
    embed_block: Callable[[pa.Table], pa.Table],
    table: pa.Table,
    failed_rows: FailedRows,
) -> pa.Table:
    """An embedding replica's call: layer 1 around layer 2 around `embed_block` (whose forward
    runs through layer 3, `items_alone_after_failure`, and the core's layer 4)."""
    return guard.run(
        table,
        lambda block: attempts_then_rows(
            "embed", embed_block, block, failed_rows, CODE_EMBED_FAILED
        ),
        failed_rows,
        has_ok_rows,
    )


def rerank_layers(
    guard: ReplicaGuard,
    score_block: Callable[[pa.Table], pa.Table],
    table: pa.Table,
    failed_groups: FailedRows,
) -> pa.Table:
    """A reranker replica's call: layer 1 around `score_block` (the core's layer 4 inside)."""
    return guard.run(table, score_block, failed_groups, has_ok_rows)
