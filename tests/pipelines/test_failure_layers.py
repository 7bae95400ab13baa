"""`pipelines.failure_layers`: each layer driven by a fake forward that fails in one way — a
transient error, a poison item, out of memory, a crash bound exceeded — checking what is
tried again and what becomes an error row (with which code and reason). No Ray: the ledger
runs in-process, the embedding replica is the real `EmbedWorker` around a fake (or the tiny
real) embedder."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import torch

import pipelines.ledger as ledger_module
import pipelines.stages as stages
from pipelines import failure_layers
from pipelines.failure_layers import (
    REPLICA_CRASHES_PER_BATCH,
    STAGE_ATTEMPTS,
    StageBroken,
    attempts_then_rows,
    embed_layers,
    items_alone_after_failure,
    rerank_layers,
)
from pipelines.ledger import CrashGuard, Ledger, _digest
from pipelines.rerank_stage import _crashed_groups
from pipelines.rows import GROUP_SCHEMA, PREPARED_SCHEMA, ROW_ERROR_CODES
from pipelines.stages import EmbedWorker, _failed_rows
from qwen3_embed.errors import InputTooLargeForDeviceError
from qwen3_embed.oom import RECOVERY_AFTER, RECOVERY_STEP

DIM = 4
POISON, TOO_LARGE, FLAKY = 666, 777, 13  # token ids the fake embedder reacts to


def prepared(tokens: list[int], statuses: list[str] | None = None) -> pa.Table:
    """PREPARED_SCHEMA rows, one token each; the id names the token."""
    statuses = statuses or ["ok"] * len(tokens)
    return pa.table(
        {
            "id": [f"t{token}" for token in tokens],
            "status": statuses,
            "error": ["earlier" if s == "error" else None for s in statuses],
            "code": ["invalid_input" if s == "error" else None for s in statuses],
            "num_tokens": pa.array([1] * len(tokens), pa.int32()),
            "input_ids": [[token] for token in tokens],
            "media": [None] * len(tokens),
        },
        schema=PREPARED_SCHEMA,
    )


def expected_vector(token: int) -> np.ndarray:
    vector = np.array([token, 1.0, 2.0, 3.0], dtype=np.float32)
    return vector / np.linalg.norm(vector)


class FakeEmbedder:
    """`embed_prepared(..., errors="collect")` as the core answers it, with faults by token:
    POISON raises in any forward holding it; TOO_LARGE is reported as the core reports an input
    out of memory alone (in `failures`, no exception); FLAKY raises on its first `flaky` calls;
    `broken` makes every forward raise."""

    def __init__(self, flaky: int = 0, broken: bool = False):
        self.calls: list[list[int]] = []
        self.flaky, self.broken = flaky, broken

    def embed_prepared(self, items, dim, errors="raise"):
        assert errors == "collect"  # the layers rely on the core collecting OOM, never raising it
        tokens = [item.input_ids[0] for item in items]
        self.calls.append(tokens)
        if self.broken:
            raise RuntimeError("device lost")
        if POISON in tokens:
            raise RuntimeError("poisoned input")
        if FLAKY in tokens and self.flaky:
            self.flaky -= 1
            raise ConnectionError("transient")
        vectors = torch.zeros((len(items), dim))
        failures = {}
        for position, token in enumerate(tokens):
            if token == TOO_LARGE:
                failures[position] = InputTooLargeForDeviceError("input has 9999 tokens and ...")
            else:
                vectors[position] = torch.from_numpy(expected_vector(token))
        return SimpleNamespace(embeddings=vectors, failures=failures)


def worker(embedder, ledger: Ledger | None = None) -> EmbedWorker:
    """The real replica class without loading a model (as tests/core/test_oom_layers.py does)."""
    replica = EmbedWorker.__new__(EmbedWorker)
    replica.embedder, replica.dim = embedder, DIM
    if ledger is not None:
        replica.guard = CrashGuard(None, ledger)
    return replica


def outcome(table: pa.Table) -> list[tuple[str, str, str | None]]:
    return [(row["id"], row["status"], row["code"]) for row in table.to_pylist()]


def assert_vectors(table: pa.Table) -> None:
    """Every `ok` row holds its own token's vector: a fallback never mixes rows up."""
    for row in table.to_pylist():
        if row["status"] == "ok":
            token = int(row["id"][1:])
            assert np.allclose(row["embedding"], expected_vector(token), atol=1e-6), row["id"]
        else:
            assert row["embedding"] is None


# --------------------------------------------------------------------- the policy, once
def test_policy_constants_live_in_one_place_and_the_table_states_them():
    assert not hasattr(stages, "STAGE_ATTEMPTS")  # the stages use it, they do not define it
    assert ledger_module.REPLICA_CRASHES_PER_BATCH is REPLICA_CRASHES_PER_BATCH
    doc = failure_layers.__doc__
    for stated in (
        f"`STAGE_ATTEMPTS` ({STAGE_ATTEMPTS})",
        f"after {STAGE_ATTEMPTS} attempts on its block",
        f"`REPLICA_CRASHES_PER_BATCH` ({REPLICA_CRASHES_PER_BATCH})",
        f"died {REPLICA_CRASHES_PER_BATCH} times",
        f"at {REPLICA_CRASHES_PER_BATCH} more deaths",
        f"by 1/{RECOVERY_STEP} after {RECOVERY_AFTER} clean forwards",
    ):
        assert stated in doc, stated
    # The table's last column names only codes a `_errors/` row can carry.
    table_rows = [line for line in doc.splitlines() if re.match(r"\| \d \|", line)]
    assert len(table_rows) == 5
    codes = {code for line in table_rows for code in re.findall(r"`(\w+)`", line.split("|")[-2])}
    assert codes == {
        "replica_crashed",
        "prepare_failed",
        "embed_failed",
        "input_too_large_for_device",
    }
    assert codes <= set(ROW_ERROR_CODES)


# ----------------------------------------------------------- a transient error: retried
def test_a_transient_error_is_retried_and_leaves_no_error_row():
    # Raised by the forward: layer 3 tries each item alone, and the retry succeeds.
    embedder = FakeEmbedder(flaky=1)
    out = worker(embedder, Ledger())(prepared([1, FLAKY, 2]))
    assert outcome(out) == [("t1", "ok", None), ("t13", "ok", None), ("t2", "ok", None)]
    assert embedder.calls == [[1, FLAKY, 2], [1], [FLAKY], [2]]
    assert_vectors(out)

    # Raised by the block itself (outside the forward): layer 2 tries the block again.
    calls: list[list[str]] = []

    def block(table: pa.Table) -> pa.Table:
        calls.append(table.column("id").to_pylist())
        if len(calls) < STAGE_ATTEMPTS:
            raise OSError("connection reset")
        return table

    table = prepared([1, 2])
    assert attempts_then_rows("prepare", block, table, _schema_rows(), "prepare_failed") == table
    assert calls == [["t1", "t2"]] * STAGE_ATTEMPTS


def _schema_rows():
    return lambda rows, reason, code: _failed_rows(rows, PREPARED_SCHEMA, reason, code)


# --------------------------------------------------------------- a poison item: one row
def test_a_poison_item_in_the_forward_is_its_own_embed_failed_row():
    embedder = FakeEmbedder()
    out = worker(embedder, Ledger())(prepared([1, POISON, 2], ["ok", "ok", "ok"]))
    # Layer 3: the forward once, then each item once alone; layer 2 never sees an exception.
    assert embedder.calls == [[1, POISON, 2], [1], [POISON], [2]]
    assert outcome(out) == [
        ("t1", "ok", None),
        ("t666", "error", "embed_failed"),
        ("t2", "ok", None),
    ]
    assert out.column("error").to_pylist()[1] == "RuntimeError: poisoned input"
    assert_vectors(out)


def test_a_poison_row_in_the_block_is_its_own_row_after_the_attempts():
    calls: list[list[str]] = []

    def block(table: pa.Table) -> pa.Table:
        ids = table.column("id").to_pylist()
        calls.append(ids)
        if "t666" in ids:
            raise RuntimeError("poisoned block")
        return table

    table = prepared([1, POISON, 2, 3], ["ok", "ok", "ok", "skipped"])
    out = attempts_then_rows("prepare", block, table, _schema_rows(), "prepare_failed")
    assert calls == [["t1", "t666", "t2", "t3"]] * STAGE_ATTEMPTS + [
        ["t1"],
        ["t666"],
        ["t2"],
        ["t3"],
    ]
    assert outcome(out) == [
        ("t1", "ok", None),
        ("t666", "error", "prepare_failed"),
        ("t2", "ok", None),
        ("t3", "skipped", None),  # a row not `ok` keeps its status
    ]
    assert out.column("error").to_pylist()[1] == (
        f"prepare failed on this row alone after {STAGE_ATTEMPTS} attempts on its block: "
        "RuntimeError: poisoned block"
    )


def test_every_item_failing_alone_is_a_broken_replica_raised_once():
    embedder = FakeEmbedder(broken=True)
    with pytest.raises(StageBroken, match="every item of a batch of 3 failed alone"):
        worker(embedder, Ledger())(prepared([1, 2, 3]))
    # Layer 3 tried the batch and each item once; layer 2 did not repeat those 4 forwards.
    assert embedder.calls == [[1, 2, 3], [1], [2], [3]]

    # A single row failing alone is that row's verdict, not a broken replica.
    out = worker(FakeEmbedder(broken=True), Ledger())(prepared([1]))
    assert outcome(out) == [("t1", "error", "embed_failed")]

    # The same rule without the worker: results stay as `empty` made them for failed items.
    def forward(items):
        if len(items) > 1 or items[0] == "bad":
            raise ValueError(f"cannot do {items}")
        return np.ones((1, 2)), {}

    released: list[int] = []
    results, failures = items_alone_after_failure(
        forward, ["a", "bad"], lambda n: np.zeros((n, 2)), release=lambda: released.append(1)
    )
    assert results.tolist() == [[1, 1], [0, 0]]
    assert failures == {1: ("ValueError: cannot do ['bad']", "embed_failed")}
    assert released == [1, 1]  # after the failed batch, and after the failed item
    with pytest.raises(StageBroken):
        items_alone_after_failure(forward, ["bad", "bad"], lambda n: np.zeros((n, 2)))


# ------------------------------------------------------------ out of memory: the core's
def test_an_input_too_large_alone_is_the_cores_verdict_not_retried():
    embedder = FakeEmbedder()
    out = worker(embedder, Ledger())(prepared([1, TOO_LARGE, 2]))
    assert embedder.calls == [[1, TOO_LARGE, 2]]  # collected by the core: no layer retries it
    assert outcome(out) == [
        ("t1", "ok", None),
        ("t777", "error", "input_too_large_for_device"),
        ("t2", "ok", None),
    ]
    assert_vectors(out)

    # Beside a poison item: layer 3 tries each alone, and keeps the core's verdict for it.
    embedder.calls.clear()
    out = worker(embedder, Ledger())(prepared([1, POISON, TOO_LARGE]))
    assert embedder.calls == [[1, POISON, TOO_LARGE], [1], [POISON], [TOO_LARGE]]
    assert outcome(out) == [
        ("t1", "ok", None),
        ("t666", "error", "embed_failed"),
        ("t777", "error", "input_too_large_for_device"),
    ]
    assert out.column("error").to_pylist()[2] == "input has 9999 tokens and ..."
    assert_vectors(out)


def test_out_of_memory_is_split_by_the_core_and_never_reaches_the_worker_layers(
    tiny_text_model_dir, tiny_text_embedder, monkeypatch
):
    """The real core (layer 4) under an OOM on every forward of more than one input: it splits
    down to single inputs and lowers its budget; the worker's layers see no exception."""
    from qwen3_embed import Embedder
    from qwen3_embed.text.packing import PackedBatch

    embedder = Embedder.from_pretrained(tiny_text_model_dir, device="cpu", forward_mode="packed")
    original = embedder.backend.forward_staged

    def forward_staged(staged, pooling_mode):
        count = (
            len(staged.cu_seq_lens) - 1
            if isinstance(staged, PackedBatch)
            else staged.attention_mask.shape[0]
        )
        if count > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original(staged, pooling_mode)

    monkeypatch.setattr(embedder.backend, "forward_staged", forward_staged)
    texts = ["first document", "the second one, longer", "third"]
    items = embedder.prepare(texts)
    table = pa.table(
        {
            "id": ["a", "b", "c"],
            "status": ["ok"] * 3,
            "error": [None] * 3,
            "code": [None] * 3,
            "num_tokens": pa.array([item.num_tokens for item in items], pa.int32()),
            "input_ids": [item.input_ids for item in items],
            "media": [None] * 3,
        },
        schema=PREPARED_SCHEMA,
    )
    replica = EmbedWorker.__new__(EmbedWorker)
    replica.embedder, replica.dim = embedder, 32
    forwards: list[int] = []
    collecting = replica._embed_collecting
    monkeypatch.setattr(
        replica, "_embed_collecting", lambda batch: forwards.append(len(batch)) or collecting(batch)
    )
    rows = replica(table).to_pylist()
    assert forwards == [3]  # one call: no item-by-item fallback, no block attempts
    assert [row["status"] for row in rows] == ["ok"] * 3
    assert embedder.budget.current < embedder.budget.maximum
    reference = tiny_text_embedder.embed(texts, dim=32).embeddings.numpy()
    got = np.array([row["embedding"] for row in rows], dtype=np.float32)
    assert np.abs(got - reference).max() <= 1e-5


# ------------------------------------------------------------- the crash bound exceeded
def crashed(ledger: Ledger, ids: list[str], times: int, row: bool = False) -> None:
    """What replicas that died holding `ids` leave in the ledger: begins without a finish."""
    for _ in range(times):
        ledger.begin(("row:" if row else "batch:") + _digest(ids))


def test_a_batch_past_the_crash_bound_goes_row_by_row_and_the_killer_is_written_off():
    ledger, embedder = Ledger(), FakeEmbedder()
    table = prepared([1, 2, 3])
    crashed(ledger, ["t1", "t2", "t3"], REPLICA_CRASHES_PER_BATCH - 1)
    out = worker(embedder, ledger)(table)
    assert embedder.calls == [[1, 2, 3]] and outcome(out) == [
        (i, "ok", None) for i in ("t1", "t2", "t3")
    ]

    embedder.calls.clear()
    crashed(ledger, ["t1", "t2", "t3"], REPLICA_CRASHES_PER_BATCH)
    crashed(ledger, ["t2"], REPLICA_CRASHES_PER_BATCH, row=True)
    out = worker(embedder, ledger)(table)
    assert embedder.calls == [[1], [3]]  # row by row; the row that kills replicas is not run
    assert outcome(out) == [
        ("t1", "ok", None),
        ("t2", "error", "replica_crashed"),
        ("t3", "ok", None),
    ]
    assert (
        out.column("error")
        .to_pylist()[1]
        .startswith(f"the embedding replica died {REPLICA_CRASHES_PER_BATCH} times while this row")
    )
    assert_vectors(out)


def groups(ids: list[str], statuses: list[str] | None = None) -> pa.Table:
    statuses = statuses or ["ok"] * len(ids)
    return pa.table(
        {
            "id": ids,
            "query": [f"query {i}" for i in ids],
            "document_ids": [["d0", "d1"]] * len(ids),
            "documents": [["one", "two"]] * len(ids),
            "status": statuses,
            "num_pairs": pa.array([2] * len(ids), pa.int32()),
            "query_item": [None] * len(ids),
            "document_items": [None] * len(ids),
        },
        schema=GROUP_SCHEMA,
    )


def test_the_rerank_replica_has_the_crash_bound_and_no_stage_attempts():
    ledger = Ledger()
    guard = CrashGuard(None, ledger, work="reranking")  # as RerankWorker makes it
    scored: list[list[str]] = []

    def score(block: pa.Table) -> pa.Table:
        ids = block.column("id").to_pylist()
        scored.append(ids)
        if "boom" in ids:
            raise RuntimeError("scoring failed")
        return _crashed_groups(block, "not scored in this test", "x")  # any SCORED_SCHEMA rows

    crashed(ledger, ["q1", "killer"], REPLICA_CRASHES_PER_BATCH)
    crashed(ledger, ["killer"], REPLICA_CRASHES_PER_BATCH, row=True)
    out = rerank_layers(guard, score, groups(["q1", "killer"]), _crashed_groups).to_pylist()
    assert scored == [["q1"]]
    killer = out[1]
    assert (killer["id"], killer["status"], killer["codes"]) == (
        "killer",
        "error",
        ["replica_crashed", "replica_crashed"],  # every pair of the group, written off
    )
    assert killer["error"].startswith(
        f"the reranking replica died {REPLICA_CRASHES_PER_BATCH} times while this query was "
        "being scored alone"
    )
    # No layer 2 here: an exception leaves the replica's call at once (and fails the job).
    scored.clear()
    with pytest.raises(RuntimeError, match="scoring failed"):
        rerank_layers(guard, score, groups(["boom", "q2"]), _crashed_groups)
    assert scored == [["boom", "q2"]]


def test_blocks_without_work_bypass_the_crash_bound():
    ledger, embedder = Ledger(), FakeEmbedder()
    out = embed_layers(
        CrashGuard(None, ledger),
        lambda block: block,
        prepared([1], ["skipped"]),
        _schema_rows(),
    )
    assert outcome(out) == [("t1", "skipped", None)] and not ledger.started
    assert not embedder.calls
