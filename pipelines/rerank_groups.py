"""Input rows -> query groups (`rows.GROUP_SCHEMA`), the unit of the rerank job: a row of the
list form is one group; rows of the pairs form are keyed by query here and gathered by the job's
`groupby`. Groups already in OUTPUT become `skipped` (resume).

A cell is a text or an item (VL: see `rerank_cells`); items travel as canonical JSON with a flag,
their relative references resolved against the folder of the row's table file (Ray Data's
`path` column, requested by the job when a column holds items)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa
import ray

from .rerank_cells import PATH_COLUMN, cell_value, holds_items, table_folder
from .rerank_stage import (
    text_digest,
)
from .resume import DoneSet
from .rows import GROUP_SCHEMA, STATUS_ERROR, STATUS_OK, STATUS_SKIPPED

if TYPE_CHECKING:
    from .rerank_job import RerankPlan


def to_groups(batch: pa.Table, plan: RerankPlan, done: Any) -> pa.Table:
    """Input rows -> GROUP_SCHEMA rows (list form: a row is a group); groups already in OUTPUT
    become `skipped` (their cells dropped)."""
    config = plan.config
    queries = batch.column(config.query_column).to_pylist()
    candidates = batch.column(config.document_column).to_pylist()
    query_ids = _column(batch, plan.query_ids)
    document_ids = _column(batch, plan.document_ids)
    folders = _folders(batch, plan)
    rows = []
    for index, (query, documents) in enumerate(zip(queries, candidates, strict=True)):
        documents = list(documents or [])
        query, query_item = cell_value(query, folders[index])
        cells = [cell_value(d, folders[index]) for d in documents]
        texts = [text for text, _ in cells]
        if document_ids is not None and document_ids[index] is not None:
            ids = [str(i) for i in document_ids[index]]
        else:
            ids = [str(i) for i in range(len(documents))]
        query_id = str(query_ids[index]) if query_ids is not None else text_digest(query, *texts)
        row = _group(query_id, query, ids, texts)
        if query_item or any(item for _, item in cells):
            row.update(query_item=query_item, document_items=[item for _, item in cells])
        rows.append(row)
    return _mark_done(pa.Table.from_pylist(rows, schema=GROUP_SCHEMA), done)


def with_query_key(batch: pa.Table, plan: RerankPlan) -> pa.Table:
    """Pairs form: the grouping key (the query id, or one derived from the query's cell)."""
    config = plan.config
    folders = _folders(batch, plan)
    query, query_items = _cells(batch.column(config.query_column), folders)
    document, document_items = _cells(batch.column(config.document_column), folders)
    if plan.query_ids is not None:
        key = [None if v is None else str(v) for v in batch.column(plan.query_ids).to_pylist()]
    else:
        key = [text_digest(q) for q in query.to_pylist()]
    columns = {
        "__query_id": pa.array(key, pa.string()),
        "__query": query,
        "__document": document,
        "__query_item": query_items,
        "__document_item": document_items,
    }
    if plan.document_ids is not None:
        columns["__document_id"] = batch.column(plan.document_ids).cast(pa.string())
    return pa.table(columns)


def _cells(column: pa.ChunkedArray, folders: list[str | None]) -> tuple[Any, pa.Array]:
    """A pairs-form column -> (its cells' strings, their item flags). A text column is cast as
    it always was (flags all false); an object column goes cell by cell."""
    if not holds_items(column.type):
        return column.cast(pa.string()), pa.array([False] * len(column), pa.bool_())
    values = [
        cell_value(cell, folder) for cell, folder in zip(column.to_pylist(), folders, strict=True)
    ]
    return (
        pa.array([text for text, _ in values], pa.string()),
        pa.array([item for _, item in values], pa.bool_()),
    )


def _folders(batch: pa.Table, plan: RerankPlan) -> list[str | None]:
    """Each row's table folder (for relative references); None where the read carried no paths."""
    if PATH_COLUMN not in batch.column_names or not plan.items:
        return [None] * batch.num_rows
    prefix = plan.inputs.prefix
    return [table_folder(prefix, path) for path in batch.column(PATH_COLUMN).to_pylist()]


def pairs_to_group(group: pa.Table, done: Any) -> pa.Table:
    query_id = group.column("__query_id")[0].as_py()
    queries = group.column("__query").to_pylist()
    query_items = group.column("__query_item").to_pylist()
    documents = group.column("__document").to_pylist()
    document_items = group.column("__document_item").to_pylist()
    if "__document_id" in group.column_names:
        ids = [str(v) for v in group.column("__document_id").to_pylist()]
    else:
        ids = [text_digest(d) for d in documents]
    row = _group(query_id, queries[0], ids, documents)
    if any(query_items) or any(document_items):
        row.update(query_item=bool(query_items[0]), document_items=document_items)
    if len(set(zip(queries, query_items, strict=True))) > 1:
        row = {
            **row,
            "status": STATUS_ERROR,
            "error": f"query id {query_id!r} has different queries (texts or items)",
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
            row.update(
                status=STATUS_SKIPPED,
                query=None,
                documents=None,
                query_item=None,
                document_items=None,
            )
    del status
    return pa.Table.from_pylist(rows, schema=GROUP_SCHEMA)


def _column(batch: pa.Table, name: str | None) -> list[Any] | None:
    return None if name is None else batch.column(name).to_pylist()
