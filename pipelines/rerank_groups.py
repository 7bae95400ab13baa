"""Input rows -> query groups (`rows.GROUP_SCHEMA`), the unit of the rerank job: a row of the
list form is one group; rows of the pairs form are keyed by query here and gathered by the job's
`groupby`. Groups already in OUTPUT become `skipped` (resume)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa
import ray

from .rerank_stage import (
    text_digest,
)
from .resume import DoneSet
from .rows import GROUP_SCHEMA, STATUS_ERROR, STATUS_OK, STATUS_SKIPPED

if TYPE_CHECKING:
    from .rerank_job import RerankPlan


def to_groups(batch: pa.Table, plan: RerankPlan, done: Any) -> pa.Table:
    """Input rows -> GROUP_SCHEMA rows (list form: a row is a group); groups already in OUTPUT
    become `skipped` (their texts dropped)."""
    config = plan.config
    queries = batch.column(config.query_column).to_pylist()
    candidates = batch.column(config.document_column).to_pylist()
    query_ids = _column(batch, plan.query_ids)
    document_ids = _column(batch, plan.document_ids)
    rows = []
    for index, (query, documents) in enumerate(zip(queries, candidates, strict=True)):
        documents = list(documents or [])
        texts = [d if isinstance(d, str) else None for d in documents]
        if document_ids is not None and document_ids[index] is not None:
            ids = [str(i) for i in document_ids[index]]
        else:
            ids = [str(i) for i in range(len(documents))]
        query_id = str(query_ids[index]) if query_ids is not None else text_digest(query, *texts)
        rows.append(_group(query_id, query, ids, texts))
    return _mark_done(pa.Table.from_pylist(rows, schema=GROUP_SCHEMA), done)


def with_query_key(batch: pa.Table, plan: RerankPlan) -> pa.Table:
    """Pairs form: the grouping key (the query id, or one derived from the query text)."""
    config = plan.config
    if plan.query_ids is not None:
        key = [None if v is None else str(v) for v in batch.column(plan.query_ids).to_pylist()]
    else:
        key = [text_digest(q) for q in batch.column(config.query_column).to_pylist()]
    columns = {
        "__query_id": pa.array(key, pa.string()),
        "__query": batch.column(config.query_column).cast(pa.string()),
        "__document": batch.column(config.document_column).cast(pa.string()),
    }
    if plan.document_ids is not None:
        columns["__document_id"] = batch.column(plan.document_ids).cast(pa.string())
    return pa.table(columns)


def pairs_to_group(group: pa.Table, done: Any) -> pa.Table:
    query_id = group.column("__query_id")[0].as_py()
    queries = group.column("__query").to_pylist()
    documents = group.column("__document").to_pylist()
    if "__document_id" in group.column_names:
        ids = [str(v) for v in group.column("__document_id").to_pylist()]
    else:
        ids = [text_digest(d) for d in documents]
    row = _group(query_id, queries[0], ids, documents)
    if len(set(queries)) > 1:
        row = {
            **row,
            "status": STATUS_ERROR,
            "error": f"query id {query_id!r} has different query texts",
        }
    return _mark_done(pa.Table.from_pylist([row], schema=GROUP_SCHEMA), done)


def _group(
    query_id: str | None, query: Any, ids: list[str], documents: list[Any]
) -> dict[str, Any]:
    row = {
        "id": "" if query_id is None else query_id,
        "query": query if isinstance(query, str) else None,
        "document_ids": ids,
        "documents": documents,
        "status": STATUS_OK,
        "num_pairs": len(documents),
    }
    if not documents:
        row["status"] = STATUS_ERROR
    return row


def _mark_done(groups: pa.Table, done: Any) -> pa.Table:
    if done is None:
        return groups
    done_set = DoneSet(ray.get(done) if isinstance(done, ray.ObjectRef) else done)
    if not len(done_set):
        return groups
    mask = done_set.contains(groups.column("id").to_pylist())
    if not mask.any():
        return groups
    status = [
        STATUS_SKIPPED if m else s
        for m, s in zip(mask, groups.column("status").to_pylist(), strict=True)
    ]
    rows = groups.to_pylist()
    for row, skipped in zip(rows, mask, strict=True):
        if skipped:
            row.update(status=STATUS_SKIPPED, query=None, documents=None)
    del status
    return pa.Table.from_pylist(rows, schema=GROUP_SCHEMA)


def _column(batch: pa.Table, name: str | None) -> list[Any] | None:
    return None if name is None else batch.column(name).to_pylist()
