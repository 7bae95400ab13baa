"""Reranking on Ray Data: the replica stage of `qwen3-embed rerank` and `rerank_dataset`.

The unit of work is a *query group*: one query and its candidate documents (a row of the
list form, or the pairs of one query gathered by the job); its cells are texts or items (VL:
canonical JSON, flagged; `rerank_cells` turns them back into the core's items, fetching their
remote media, and a cell that cannot be read fails its pair). A replica (`RerankWorker`, one
`qwen3_embed.Reranker` each) takes a block of groups, prepares every pair with the core's
`prepare_pairs` (which never raises for a bad pair: a bad pair is an error row, its neighbours
are scored), scores them in one `rerank_prepared` call (the core batches them by tokens) and
ranks each group's scores:

    GROUP_SCHEMA  (id, query, document_ids[], documents[], status, query_item, document_items[])
      -> SCORED_SCHEMA  (id, status, document_ids[], scores[], ranks[], kept[], errors[], ...)

Out comes one row per group (so Ray Data never splits a query between write tasks), its
per-pair values in lists: `rank` is 1 for the best document of its query (ties in input order);
with `top_n`, pairs ranked below it are not `kept` (counted, not written). A group the job found
already in OUTPUT comes in `skipped` and goes out `skipped`, carrying its pair count.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from qwen3_embed.options import LoadOptions
from qwen3_embed_layers.config_base import LoadFields, ReadableConfig, ReplicaFields

from .config import storage_option_pairs
from .failure_layers import rerank_layers
from .ledger import CrashGuard
from .rerank_cells import CellProblem, CellReader, cell_value
from .rows import GROUP_SCHEMA, SCORED_SCHEMA, STATUS_ERROR, STATUS_OK

if TYPE_CHECKING:
    from ray.data import Dataset

logger = logging.getLogger(__name__)

DEFAULT_GROUPS_PER_CALL = 64  # query groups per replica call (the core re-batches pairs by tokens)


def text_digest(*texts: str | None) -> str:
    """A stable id derived from text (32 hex digits): the same text gets the same id in every
    run, which is what resume needs."""
    digest = hashlib.blake2b(digest_size=16)
    for text in texts:
        digest.update((text or "").encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()


@dataclass(frozen=True)
class RerankSettings:
    load: LoadOptions
    instruction: str | None
    truncate: bool
    top_n: int | None
    ledger: str | None = None  # the run's ledger actor (see `ledger`); None outside a job
    # For fetching the remote images / videos of item cells (s3://, gs://, ...; see rerank_cells).
    storage_options: tuple[tuple[str, Any], ...] = ()


def rank_scores(scores: np.ndarray) -> np.ndarray:
    """1-based ranks, best first, ties in input order."""
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    ranks = np.empty(len(scores), dtype=np.int32)
    ranks[order] = np.arange(1, len(scores) + 1, dtype=np.int32)
    return ranks


def score_groups(groups: pa.Table, reranker: Any, settings: RerankSettings) -> pa.Table:
    """GROUP_SCHEMA rows -> SCORED_SCHEMA rows (see the module docstring)."""
    from qwen3_embed import InputError

    rows = groups.to_pylist()
    cells = CellReader(dict(settings.storage_options), fetch_media=reranker.family == "vl")
    pairs: list[tuple[Any, Any]] = []
    where: list[tuple[int, int]] = []  # (group, candidate) of each pair
    # Pairs whose cells could not become core values (a media file missing, a fetch failing).
    failures: dict[int, tuple[str, str]] = {}
    for g, row in enumerate(rows):
        if row["status"] != STATUS_OK:
            continue
        try:
            query = cells.core_value(row["query"], row.get("query_item"), "query")
        except CellProblem as problem:
            query = problem
        flags = row.get("document_items") or []
        for c, document in enumerate(row["documents"] or []):
            where.append((g, c))
            try:
                if isinstance(query, CellProblem):
                    raise query
                flag = flags[c] if c < len(flags) else False
                pairs.append((query, cells.core_value(document, flag, "document")))
            except CellProblem as problem:
                failures[len(where) - 1] = (problem.reason, problem.code)
                pairs.append(None)
    asked = [i for i, pair in enumerate(pairs) if pair is not None]
    prepared: list[Any] = [None] * len(pairs)
    if asked:
        results = reranker.prepare_pairs(
            [pairs[i] for i in asked], settings.instruction, settings.truncate
        )
        for i, result in zip(asked, results, strict=True):
            prepared[i] = result
    good = [i for i in asked if not isinstance(prepared[i], InputError)]
    scores = np.zeros(len(pairs), dtype=np.float32)
    failures.update(
        (i, (prepared[i].reason, prepared[i].code))
        for i in asked
        if isinstance(prepared[i], InputError)
    )
    if good:
        # A pair too large for the device even alone is its own error; the core scores the rest.
        output = reranker.rerank_prepared([prepared[i] for i in good], errors="collect")
        scores[good] = output.scores
        for position, error in output.failures.items():
            failures[good[position]] = (error.reason, error.code)

    by_group: dict[int, list[int]] = {}
    for i, (g, _) in enumerate(where):
        by_group.setdefault(g, []).append(i)
    out: list[dict[str, Any]] = []
    for g, row in enumerate(rows):
        base = {"id": row["id"], "num_pairs": row["num_pairs"], "document_ids": row["document_ids"]}
        if row["status"] != STATUS_OK:  # skipped (already in OUTPUT), or refused before scoring
            out.append({**base, "status": row["status"], "error": row.get("error")})
            continue
        members = by_group.get(g, [])
        scored = [i for i in members if i not in failures]
        ranks = (
            dict(zip(scored, rank_scores(scores[scored]).tolist(), strict=True)) if scored else {}
        )
        out.append(
            {
                **base,
                "status": STATUS_OK if scored else STATUS_ERROR,
                "scores": [None if i in failures else float(scores[i]) for i in members],
                "ranks": [ranks.get(i) for i in members],
                "kept": [
                    i in ranks and (settings.top_n is None or ranks[i] <= settings.top_n)
                    for i in members
                ],
                "num_tokens": [None if i in failures else prepared[i].num_tokens for i in members],
                "errors": [failures[i][0] if i in failures else None for i in members],
                "codes": [failures[i][1] if i in failures else None for i in members],
                "error": None if scored else "no pair of this query could be scored",
            }
        )
    return pa.Table.from_pylist(out, schema=SCORED_SCHEMA)


class RerankWorker:
    """A reranker replica (one per Ray Data actor); heavy imports happen here, not at import."""

    guard = CrashGuard(None)

    def __init__(self, settings: RerankSettings):
        from transformers.utils import logging as transformers_logging

        from qwen3_embed import Reranker

        transformers_logging.disable_progress_bar()
        self.settings = settings
        self.reranker = Reranker.from_options(settings.load, task="rerank")
        self.guard = CrashGuard(settings.ledger, work="reranking")
        self.guard.replica_ready()

    def __call__(self, table: pa.Table) -> pa.Table:
        # The failure layers of a reranker replica (see `failure_layers`: 0, 1 and the core's 4).
        return rerank_layers(
            self.guard,
            lambda block: score_groups(block, self.reranker, self.settings),
            table,
            _crashed_groups,
        )


def _crashed_groups(groups: pa.Table, reason: str, code: str) -> pa.Table:
    """Every pair of `groups` as an error (a failure layer, the ledger's crash bound, wrote the
    group off); groups already skipped or failed keep their status."""
    out = []
    for row in groups.to_pylist():
        count = len(row["document_ids"] or [])
        out.append(
            {
                "id": row["id"],
                "status": STATUS_ERROR if row["status"] == STATUS_OK else row["status"],
                "num_pairs": row["num_pairs"],
                "document_ids": row["document_ids"],
                "errors": [reason] * count,
                "codes": [code] * count,
                "error": reason,
            }
        )
    return pa.Table.from_pylist(out, schema=SCORED_SCHEMA)


# ---------------------------------------------------------------------- rerank_dataset
class RerankStageConfig(LoadFields, ReplicaFields, ReadableConfig):
    """What `rerank_dataset` reranks and how; validated on construction (`InvalidConfigError`).
    The loading and replica fields mean what the batch job's fields of the same names mean."""

    what = "rerank stage config"

    query_column: str = Field(
        "query", min_length=1, description="column holding the query (a text or an item)"
    )
    document_column: str = Field(
        "documents",
        min_length=1,
        description="column holding the candidates: a list of texts or items per row (a query "
        "and its candidates), or one text or item per row (a (query, document) pair)",
    )
    instruction: str | None = Field(None, description="task instruction; default: the model's")
    top_n: int | None = Field(
        None, ge=1, strict=True, description="list rows: order only the best N candidates"
    )
    truncate: bool = Field(True, strict=True, description="off: over-long pairs are errors")
    batch_rows: int | None = Field(None, ge=1, strict=True, description="rows per replica call")
    score_column: str = Field(
        "rerank_score", min_length=1, description="scores (list rows: a list)"
    )
    order_column: str = Field(
        "rerank_order", min_length=1, description="list rows: candidate indices, best first"
    )
    error_column: str = Field("rerank_error", min_length=1, description="why a row has no score")
    storage_options: tuple[tuple[str, Any], ...] = Field(
        (), description="for items' remote images and videos (s3://, gs://, ...)"
    )

    @field_validator("storage_options", mode="before")
    @classmethod
    def _options(cls, value: Any) -> tuple[tuple[str, Any], ...]:
        return storage_option_pairs(value)

    @model_validator(mode="after")
    def _columns(self) -> RerankStageConfig:
        names = (self.score_column, self.order_column, self.error_column)
        if len(set(names)) != 3 or {self.query_column, self.document_column} & set(names):
            raise ValueError(
                f"the output column names must differ from each other and the inputs, got {names}"
            )
        return self


class _DatasetReranker:
    """`rerank_dataset`'s replica: the user's rows in, the same rows out with three columns."""

    def __init__(self, config: RerankStageConfig):
        from qwen3_embed import Reranker

        self.config = config
        load = config.load_options()
        self.settings = RerankSettings(
            load, config.instruction, config.truncate, None, None, config.storage_options
        )
        self.reranker = Reranker.from_options(load)

    def __call__(self, table: pa.Table) -> pa.Table:
        config = self.config
        queries = table.column(config.query_column).to_pylist()
        documents = table.column(config.document_column).to_pylist()
        listed = pa.types.is_list(
            table.schema.field(config.document_column).type
        ) or pa.types.is_large_list(table.schema.field(config.document_column).type)
        candidates = [list(d or []) if listed else [d] for d in documents]
        # Texts or items (see `rerank_cells`); no table folder: references must be absolute.
        query_cells = [cell_value(query, None) for query in queries]
        document_cells = [[cell_value(d, None) for d in docs] for docs in candidates]
        groups = pa.table(
            {
                "id": [str(i) for i in range(table.num_rows)],
                "query": [text for text, _ in query_cells],
                "document_ids": [[str(c) for c in range(len(docs))] for docs in candidates],
                "documents": [[text for text, _ in cells] for cells in document_cells],
                "status": [STATUS_OK if docs else STATUS_ERROR for docs in candidates],
                "num_pairs": [len(docs) for docs in candidates],
                "query_item": [item for _, item in query_cells],
                "document_items": [[item for _, item in cells] for cells in document_cells],
            },
            schema=GROUP_SCHEMA,
        )
        scored = score_groups(groups, self.reranker, self.settings).to_pylist()
        scores, orders, errors = [], [], []
        for row in scored:
            failed = [
                (c, reason) for c, reason in enumerate(row["errors"] or []) if reason is not None
            ]
            reasons = [f"candidate {c}: {reason}" if listed else reason for c, reason in failed]
            errors.append("; ".join(reasons) or row["error"])
            row_scores = row["scores"] or []
            ranked = sorted(
                (rank, c) for c, rank in enumerate(row["ranks"] or []) if rank is not None
            )
            scores.append(row_scores if listed else (row_scores[0] if row_scores else None))
            orders.append([c for _, c in ranked][: config.top_n] if listed else None)
        score_type = pa.list_(pa.float32()) if listed else pa.float32()
        return (
            table.append_column(config.score_column, pa.array(scores, score_type))
            .append_column(config.order_column, pa.array(orders, pa.list_(pa.int32())))
            .append_column(config.error_column, pa.array(errors, pa.string()))
        )


def rerank_dataset(dataset: Dataset, config: RerankStageConfig) -> Dataset:
    """`dataset` with every row reranked: its own columns, then `score_column`, `order_column`
    and `error_column`. A row whose `document_column` holds a list is a query and its candidates:
    a list of scores (aligned with the candidates) and the candidates' indices best first (cut to
    `top_n`). A row holding one text or item is a (query, document) pair: its score (order null).
    A query or document is a text, or (a Qwen3-VL reranker) an item: a struct / dict with the
    core's keys `text`, `image`, `video`, `fps`, `max_frames`, its images and videos given as
    bytes or ABSOLUTE references (a path, `file://`, `s3://`, `gs://` or any fsspec URL, http(s),
    a data URI): a Dataset has no table folder, so a relative path is that pair's error. Remote
    references are fetched with bounded retries (`storage_options`). A bad pair has a null score
    and its reason in `error_column`; every row comes out exactly once. Lazy, like any Ray Data
    transform; the checkpoint's tokenizer is checked here (no weights)."""
    from ray.data import ActorPoolStrategy

    from qwen3_embed import RerankPreparer

    from .dataset_stage import gpus_per_replica

    RerankPreparer.from_options(config.load_options())  # a wrong model fails now, not in an actor
    return dataset.map_batches(
        _DatasetReranker,
        fn_constructor_kwargs={"config": config},
        compute=ActorPoolStrategy(size=config.num_replicas),
        batch_format="pyarrow",
        batch_size=config.batch_rows or DEFAULT_GROUPS_PER_CALL,
        num_cpus=config.cpus_per_replica,
        num_gpus=gpus_per_replica(config.gpus_per_replica, False),
    )


def group_ids(values: Sequence[Any]) -> list[str]:
    return ["" if value is None else str(value) for value in values]
