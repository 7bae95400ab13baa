"""pipelines: the Ray Data batch embedding job over the `qwen3_embed` core.

    from pipelines import JobConfig, run_embedding_job
    result = run_embedding_job(JobConfig(input="corpus.jsonl", output="out/", model="Qwen/Qwen3-Embedding-0.6B"))
    print(result.summary())

    from pipelines import EmbedStageConfig, embed_dataset   # the same stages on your own dataset
    ds = embed_dataset(ray.data.read_parquet("docs/"), EmbedStageConfig(model=M, text_column="body"))

    from pipelines import RerankStageConfig, rerank_dataset   # rerank a query's candidates
    ds = rerank_dataset(ds, RerankStageConfig(model=R, query_column="query", document_column="hits"))

The names below load lazily, so `import pipelines` (and `qwen3-embed --help`) does not import
Ray or torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "EmbedStageConfig",
    "JobConfig",
    "RerankJobConfig",
    "RerankStageConfig",
    "JobPlan",
    "JobResult",
    "embed_dataset",
    "plan_job",
    "rerank_dataset",
    "run_embedding_job",
    "run_rerank_job",
    "sample_corpus_path",
]

_LAZY = {
    "EmbedStageConfig": "pipelines.dataset_stage",
    "embed_dataset": "pipelines.dataset_stage",
    "JobConfig": "pipelines.config",
    "JobPlan": "pipelines.job",
    "JobResult": "pipelines.manifest",
    "plan_job": "pipelines.job",
    "run_embedding_job": "pipelines.job",
    "RerankJobConfig": "pipelines.rerank_config",
    "run_rerank_job": "pipelines.rerank_job",
    "RerankStageConfig": "pipelines.rerank_stage",
    "rerank_dataset": "pipelines.rerank_stage",
}

if TYPE_CHECKING:
    from .config import JobConfig
    from .dataset_stage import EmbedStageConfig, embed_dataset
    from .job import JobPlan, plan_job, run_embedding_job
    from .manifest import JobResult
    from .rerank_config import RerankJobConfig
    from .rerank_job import run_rerank_job
    from .rerank_stage import RerankStageConfig, rerank_dataset


def sample_corpus_path() -> str:
    """The bundled sample corpus (jsonl: id, text), for quick starts and smoke tests."""
    from pathlib import Path

    return str(Path(__file__).parent / "sample_data" / "corpus.jsonl")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
