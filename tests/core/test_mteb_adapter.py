"""`qwen3_embed.mteb_adapter.MTEBEncoder` under MTEB's own evaluation code: a retrieval task built
from in-memory data (no hub), scored with the real MiniLM weights, and the Qwen3 instructions
checked against mteb's own Qwen3 wrapper logic. Needs the [mteb] extra (part of [test])."""

from __future__ import annotations

import numpy as np
import pytest
import torch

mteb = pytest.importorskip("mteb")

from datasets import Dataset  # noqa: E402  (mteb's own dependency)
from mteb.abstasks.retrieval import AbsTaskRetrieval  # noqa: E402
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData  # noqa: E402
from mteb.abstasks.task_metadata import TaskMetadata  # noqa: E402
from mteb.types import PromptType  # noqa: E402

from qwen3_embed import Embedder  # noqa: E402
from qwen3_embed.mteb_adapter import MTEBEncoder  # noqa: E402

# query id -> (query, the one relevant document); each pair is easy for a real sentence model.
PAIRS = {
    "q1": ("What is the capital of France?", "Paris is the capital and largest city of France."),
    "q2": (
        "How do plants make their food?",
        "Plants use photosynthesis to turn sunlight, water and carbon dioxide into sugar.",
    ),
    "q3": ("Who wrote Romeo and Juliet?", "Romeo and Juliet is a tragedy by William Shakespeare."),
    "q4": (
        "At what temperature does water boil?",
        "At sea level, water boils at 100 degrees Celsius.",
    ),
    "q5": ("How many legs does a spider have?", "Spiders are arachnids with eight legs."),
    "q6": ("Which planet is the largest?", "Jupiter is the largest planet in the solar system."),
}
DISTRACTORS = [
    "The stock market fell sharply on Monday morning.",
    "Mix butter, sugar and flour to bake chocolate chip cookies.",
    "The football match ended in a draw after extra time.",
]
# A query whose labelled answer is a distractor: no model ranks it first, so the scores are not
# all 1.0 and comparing MTEB's metrics with ours below tests the ranks, not just a ceiling.
MISLABELLED = {"q7": ("What is the capital of Germany?", "x0")}
QUERIES = {qid: query for qid, (query, _) in PAIRS.items()} | {
    qid: query for qid, (query, _) in MISLABELLED.items()
}
RELEVANT = {qid: f"d{qid[1:]}" for qid in PAIRS} | {
    qid: doc for qid, (_, doc) in MISLABELLED.items()
}


def _corpus() -> list[dict[str, str]]:
    documents = [{"id": f"d{qid[1:]}", "text": doc} for qid, (_, doc) in PAIRS.items()]
    documents += [{"id": f"x{i}", "text": text} for i, text in enumerate(DISTRACTORS)]
    return documents


class LocalRetrieval(AbsTaskRetrieval):
    """A retrieval task whose data lives in this file: MTEB's loaders, evaluator and metrics."""

    metadata = TaskMetadata(
        type="Retrieval",
        name="Qwen3EmbedLocalRetrieval",
        description="Six easy question/answer pairs and three distractors, built in memory.",
        reference="https://github.com/embeddings-benchmark/mteb",
        dataset={"path": "local/in-memory", "revision": "1"},
        category="t2t",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score="ndcg_at_10",
        date=("2026-01-01", "2026-01-01"),
        domains=[],
        task_subtypes=[],
        license="cc-by-4.0",
        annotations_creators="derived",
        dialect=[],
        sample_creation="created",
        bibtex_citation="",
    )

    def load_data(self, num_proc: int | None = None, **kwargs) -> None:
        self.dataset = {
            "default": {
                "test": RetrievalSplitData(
                    queries=Dataset.from_list(
                        [{"id": qid, "text": query} for qid, query in QUERIES.items()]
                    ),
                    corpus=Dataset.from_list(_corpus()),
                    relevant_docs={qid: {doc: 1} for qid, doc in RELEVANT.items()},
                    top_ranked=None,
                )
            }
        }
        self.data_loaded = True


def _own_scores(embedder: Embedder) -> dict[str, float]:
    """Recall@1 and MRR@10 computed here, from the core's vectors, without MTEB."""
    queries = embedder.embed(list(QUERIES.values())).embeddings
    corpus = _corpus()
    documents = embedder.embed([doc["text"] for doc in corpus]).embeddings
    ranking = (queries @ documents.T).argsort(dim=1, descending=True)
    ranks = []
    for row, qid in enumerate(QUERIES):
        ids = [corpus[int(j)]["id"] for j in ranking[row]]
        ranks.append(ids.index(RELEVANT[qid]) + 1)
    return {
        "recall_at_1": float(np.mean([rank == 1 for rank in ranks])),
        "mrr_at_10": float(np.mean([1 / rank if rank <= 10 else 0 for rank in ranks])),
    }


def test_minilm_scored_by_mteb_evaluate(minilm_dir):
    encoder = MTEBEncoder(minilm_dir, device="cpu")  # as mteb's loaders call an encoder
    embedder = encoder.embedder
    assert embedder.family == "text" and not embedder.info.is_qwen
    assert isinstance(encoder, mteb.EncoderProtocol)
    assert encoder.mteb_model_meta.name == f"local/{minilm_dir.name}"
    result = mteb.evaluate(
        encoder,
        LocalRetrieval(),
        cache=None,
        overwrite_strategy="always",
        show_progress_bar=False,
    )
    (task_result,) = result.task_results
    (scores,) = task_result.scores["test"]
    own = _own_scores(embedder)
    # MTEB's metrics (rounded to 5 places) from the adapter's vectors equal ours from the
    # core's: same order, same rows.
    assert scores["recall_at_1"] == pytest.approx(own["recall_at_1"], abs=1e-5)
    assert scores["mrr_at_10"] == pytest.approx(own["mrr_at_10"], abs=1e-5)
    # A real model on easy pairs finds the six true answers first; the mislabelled one it cannot.
    assert own["recall_at_1"] == pytest.approx(6 / 7)
    assert scores["main_score"] == scores["ndcg_at_10"] > 0.8


def _mteb_qwen3_prompt(task: AbsTaskRetrieval, prompt_type: PromptType) -> str:
    """The literal prompt mteb's own Qwen3-Embedding loader gives these inputs (its
    `instruction_template` over `AbsEncoder.get_task_instruction`)."""
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_implementations.qwen3_models import instruction_template

    class Reference(AbsEncoder):
        def encode(self, *args, **kwargs):  # never called: only the prompt logic is used
            raise NotImplementedError

    reference = Reference()
    reference.instruction_template = instruction_template
    return reference.get_task_instruction(task.metadata, prompt_type)


def _loader(texts: list[str]) -> torch.utils.data.DataLoader:
    """Batches shaped as MTEB hands them to an encoder: {"text": [...]} columns."""
    return torch.utils.data.DataLoader(Dataset.from_dict({"text": texts}), batch_size=2)


def test_qwen3_queries_get_mteb_task_instruction_documents_none(tiny_text_embedder):
    task = LocalRetrieval()
    encoder = MTEBEncoder.from_embedder(tiny_text_embedder, dim=32)
    queries = [query for query, _ in PAIRS.values()]
    documents = [doc["text"] for doc in _corpus()]
    call = {"task_metadata": task.metadata, "hf_split": "test", "hf_subset": "default"}
    got_queries = encoder.encode(_loader(queries), prompt_type=PromptType.query, **call)
    got_documents = encoder.encode(_loader(documents), prompt_type=PromptType.document, **call)
    query_prompt = _mteb_qwen3_prompt(task, PromptType.query)
    assert query_prompt == "Instruct: Retrieve text based on user query.\nQuery:"
    assert _mteb_qwen3_prompt(task, PromptType.document) == ""
    expected_queries = tiny_text_embedder.encode(queries, prompt=query_prompt, truncate_dim=32)
    expected_documents = tiny_text_embedder.encode(documents, truncate_dim=32)
    assert got_queries.shape == (len(queries), 32) and got_queries.dtype == np.float32
    np.testing.assert_array_equal(got_queries, expected_queries)
    np.testing.assert_array_equal(got_documents, expected_documents)


def test_vl_images_and_documents_are_instructed_like_mtebs_qwen3_vl_wrapper(tiny_vl_embedder):
    """VL: image columns become `{"image": ...}` items; documents get the task's instruction too
    (mteb's Qwen3-VL wrapper applies it to passages), unless `instruct_documents=False`."""
    from PIL import Image

    task = LocalRetrieval()
    images = [Image.new("RGB", (64, 64), color) for color in ("red", "blue")]
    batches = [{"image": images, "text": ["a red square", ""]}]
    call = {"task_metadata": task.metadata, "hf_split": "test", "hf_subset": "default"}
    encoder = MTEBEncoder.from_embedder(tiny_vl_embedder)
    got = encoder.encode(batches, prompt_type=PromptType.document, **call)
    items = [{"image": images[0], "text": "a red square"}, {"image": images[1]}]
    instruction = "Retrieve text based on user query."
    np.testing.assert_array_equal(got, tiny_vl_embedder.encode(items, instruction=instruction))
    plain = MTEBEncoder.from_embedder(tiny_vl_embedder, instruct_documents=False)
    np.testing.assert_array_equal(
        plain.encode(batches, prompt_type=PromptType.document, **call),
        tiny_vl_embedder.encode(items),
    )
    with pytest.raises(ValueError, match="audio inputs are not supported"):
        encoder.encode([{"audio": [b"..."]}], prompt_type=PromptType.query, **call)


def test_text_model_refuses_image_tasks_and_names_the_task_of_a_bad_input(tiny_text_embedder):
    task = LocalRetrieval()
    call = {"task_metadata": task.metadata, "hf_split": "test", "hf_subset": "default"}
    encoder = MTEBEncoder.from_embedder(tiny_text_embedder)
    with pytest.raises(ValueError, match="text model.*Qwen3-VL-Embedding"):
        encoder.encode([{"image": [object()]}], prompt_type=PromptType.query, **call)
    with pytest.raises(
        ValueError, match=r"Qwen3EmbedLocalRetrieval \(default/test, document\).*input\[1\].*empty"
    ):
        encoder.encode([{"text": ["fine", ""]}], prompt_type=PromptType.document, **call)


def test_without_mteb_the_encoder_names_the_extra(tiny_text_embedder, monkeypatch):
    import sys

    from qwen3_embed import MissingExtraError

    monkeypatch.setitem(sys.modules, "mteb", None)  # what `import mteb` meets when not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'qwen3-embed\[mteb\]'"):
        MTEBEncoder.from_embedder(tiny_text_embedder)
