"""Unit tests of the rerank API's request handling without Ray or a model: the request shapes
(Jina/Cohere/vLLM), pairs, error names, result order and top_n, routing by task, the CLI."""

from __future__ import annotations

import asyncio
import base64
import json
from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import ValidationError
from serve_support import png_bytes

from deployments.config import MediaPolicy, RequestLimits, ServeAppConfig
from deployments.errors import ApiError
from deployments.rerank_routes import check_truncation, load_pairs, rerank_form, score_form
from deployments.rerank_schemas import (
    RerankRequest,
    ScoreRequest,
    render_rerank,
    render_score,
    rerank_order,
)

PNG = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()


def _load(form, family="text", limits=None, media=None):
    return asyncio.run(
        load_pairs(
            form,
            None,
            (True, None),
            family,
            "m",
            limits or RequestLimits(),
            media or MediaPolicy(),
            None,
        )
    )


def test_rerank_pairs_one_query_against_each_document_in_order():
    form = rerank_form(RerankRequest(query="q", documents=["a", {"text": "b"}, "c"]))
    job = _load(form)
    assert job.pairs == (("q", "a"), ("q", {"text": "b"}), ("q", "c"))
    assert job.pair_params == ("documents[0]", "documents[1]", "documents[2]")
    assert job.truncate is True and job.instruction is None


def test_vllm_content_parts_documents_and_query():
    request = RerankRequest(
        query={"content": [{"type": "text", "text": "red"}, {"type": "image_url", "image_url": {"url": PNG}}]},
        documents={"content": [{"type": "text", "text": "t"}, {"type": "image_url", "image_url": {"url": PNG}}]},
    )  # fmt: skip
    job = _load(rerank_form(request), family="vl")
    query, document = job.pairs[1]
    assert query["text"] == "red" and isinstance(query["image"], bytes)  # media as bytes
    assert isinstance(document["image"], bytes) and job.pairs[0][1] == {"text": "t"}
    assert job.pair_params == ("documents.content[0]", "documents.content[1]")


def test_score_forms_one_to_many_and_many_to_many():
    job = _load(score_form(ScoreRequest(text_1="q", text_2=["a", "b"])))
    assert job.pairs == (("q", "a"), ("q", "b"))
    job = _load(score_form(ScoreRequest(queries=["q1", "q2"], documents=["a", "b"])))
    assert job.pairs == (("q1", "a"), ("q2", "b"))
    assert job.pair_params == ("(queries[0], documents[0])", "(queries[1], documents[1])")
    with pytest.raises(ApiError) as info:
        score_form(ScoreRequest(text_1=["q1", "q2"], text_2=["a", "b", "c"]))
    assert info.value.status == 400 and info.value.param == "text_1"
    with pytest.raises(ApiError) as info:
        score_form(ScoreRequest(text_1="q", queries="q", text_2="a"))
    assert info.value.code == "invalid_value"
    with pytest.raises(ApiError) as info:
        score_form(ScoreRequest(text_2="a"))
    assert info.value.code == "missing_required_parameter"


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"query": "q", "documents": []}, "documents", "empty_input"),
        ({"query": "q", "documents": ["a", 3]}, "documents[1]", "invalid_input"),
        ({"query": "q", "documents": [{"text": "a", "instruction": "x"}]}, "documents[0]", "invalid_input"),
        ({"query": {"content": [{"type": "audio"}]}, "documents": ["a"]}, "query.content[0]", "invalid_type"),
    ],
)  # fmt: skip
def test_bad_rerank_bodies_name_the_field(body, param, code):
    with pytest.raises(ApiError) as info:
        rerank_form(RerankRequest.model_validate(body))
    assert (info.value.status, info.value.param, info.value.code) == (400, param, code)


def test_limits_and_media_rules_name_the_document_not_input():
    limits = RequestLimits(max_inputs_per_request=2, max_chars_per_request=10)
    with pytest.raises(ApiError) as info:
        _load(rerank_form(RerankRequest(query="q", documents=["a", "b", "c"])), limits=limits)
    assert (info.value.code, info.value.param) == ("too_many_inputs", "documents")
    with pytest.raises(ApiError) as info:
        _load(rerank_form(RerankRequest(query="q", documents=["x" * 20])), limits=limits)
    assert info.value.status == 413
    # an image for a text reranker, and a local path: refused naming documents[1].image
    form = rerank_form(RerankRequest(query="q", documents=["a", {"image": PNG}]))
    with pytest.raises(ApiError) as info:
        _load(form, family="text")
    assert info.value.param == "documents[1].image" and "documents[1].image" in info.value.message
    assert "input[" not in info.value.message
    form = rerank_form(RerankRequest(query={"image": "/etc/passwd"}, documents=["a"]))
    with pytest.raises(ApiError) as info:
        _load(form, family="vl")
    assert (info.value.param, info.value.code) == ("query.image", "media_source_forbidden")


def test_schema_refuses_unknown_fields_and_negative_top_n():
    with pytest.raises(ValidationError):
        RerankRequest.model_validate({"query": "q", "documents": ["a"], "top_k": 2})
    with pytest.raises(ValidationError):
        RerankRequest.model_validate({"query": "q", "documents": ["a"], "top_n": -1})

    def truncation(**fields):
        return check_truncation(RerankRequest(query="q", documents=["a"], **fields))

    assert truncation() == (True, None) and truncation(truncate=False) == (False, None)
    assert truncation(truncate_prompt_tokens=-1) == (True, None)
    assert truncation(truncate_prompt_tokens=64, truncate=False) == (True, 64)  # implies truncate
    with pytest.raises(ApiError):
        truncation(truncate_prompt_tokens=0)


def test_results_sorted_by_score_ties_in_input_order_and_top_n():
    scores = np.array([0.2, 0.9, 0.2, 0.5], dtype=np.float32)
    assert rerank_order(scores, None) == [1, 3, 0, 2]
    assert rerank_order(scores, 0) == [1, 3, 0, 2]
    assert rerank_order(scores, 2) == [1, 3]
    assert rerank_order(scores, 10) == [1, 3, 0, 2]
    body = json.loads(render_rerank("m", scores, ["a", "b", {"text": "c"}, "d"], 3, True, 7, "2"))
    assert [r["index"] for r in body["results"]] == [1, 3, 0]
    assert body["results"][0] == {
        "index": 1,
        "relevance_score": pytest.approx(0.9),
        "document": {"text": "b"},
    }
    assert body["usage"]["total_tokens"] == 7 and body["model"] == "m"
    body = json.loads(render_rerank("m", scores, ["a", "b", "c", "d"], None, False, 7, "1"))
    assert all("document" not in r for r in body["results"]) and len(body["results"]) == 4
    body = json.loads(render_score("m", scores, 9))
    assert [d["index"] for d in body["data"]] == [0, 1, 2, 3]
    assert [d["score"] for d in body["data"]] == pytest.approx(scores.tolist())
    assert body["object"] == "list" and body["usage"]["prompt_tokens"] == 9


def test_routing_by_task():
    from deployments.ingress import EmbeddingsIngress

    config = ServeAppConfig.model_validate(
        {"models": [{"model": "e"}, {"model": "r", "task": "rerank"}]}
    )
    # _route on a plain object: an instance of the Serve-wrapped class would leave an
    # un-awaited shutdown hook behind.
    route = EmbeddingsIngress.func_or_class._route
    ingress = SimpleNamespace(
        _models={"e": "E", "r": "R"},
        _tasks={model.name: model.task for model in config.models},
    )
    ingress._route = lambda *args: route(ingress, *args)
    assert ingress._route(None, "embed") == ("e", "E")
    assert ingress._route(None, "rerank") == ("r", "R")
    assert ingress._route("r", "rerank") == ("r", "R")
    with pytest.raises(ApiError) as info:
        ingress._route("e", "rerank")
    assert (info.value.status, info.value.code) == (400, "model_task_mismatch")
    assert "/v1/embeddings" in info.value.message
    with pytest.raises(ApiError) as info:
        ingress._route("r", "embed")
    assert "/v1/rerank" in info.value.message
    ingress._tasks = {"e": "embed", "r": "embed"}
    with pytest.raises(ApiError) as info:
        ingress._route(None, "rerank")
    assert info.value.code == "model_task_mismatch" and "no reranker" in info.value.message


def test_cli_serves_an_embedder_and_a_reranker():
    from deployments.app import deployment_names, model_deployment
    from deployments.cli import config_from_args
    from qwen3_embed.cli import build_parser

    def parse(*argv):
        return build_parser(["serve", *argv]).parse_args(["serve", *argv])

    config = config_from_args(
        parse("--model", "E", "--reranker-model", "R", "--reranker-served-model-name", "rr")
    )
    assert [(m.name, m.task) for m in config.models] == [("E", "embed"), ("rr", "rerank")]
    names = deployment_names(config.models)
    assert names == {"E": "EmbeddingModel-E", "rr": "RerankModel-rr"}
    assert model_deployment(config.models[1]).name == "RerankModel"
    only = config_from_args(parse("--reranker-model", "R"))
    assert [m.task for m in only.models] == ["rerank"]
    with pytest.raises(ValueError, match="--reranker-served-model-name"):
        config_from_args(parse("--reranker-model", "R", "--reranker-model", "S",
                               "--reranker-served-model-name", "x"))  # fmt: skip
    with pytest.raises(ValueError, match="--reranker-model"):
        config_from_args(parse())


def test_admission_bound_is_at_least_the_real_tokens(tiny_text_reranker):
    """A request is admitted by an upper bound of its pairs' tokens (before tokenising): it must
    never be below what tokenising then finds, or the queue bound would not hold."""
    from deployments.rerank_deployment import pair_token_bound

    (template,) = tiny_text_reranker.preparer.prepare([("-", "-")], "-")
    prompt = len(template.input_ids)
    instruction = tiny_text_reranker.default_instruction
    pairs = [
        ("q", "d"),
        ("naïve café ☕", "日本語のテキスト " * 5),
        ({"text": "x y"}, "long " * 300),
    ]
    prepared = tiny_text_reranker.prepare_pairs(pairs, instruction)
    for pair, item in zip(pairs, prepared, strict=True):
        bound = pair_token_bound(pair, instruction, prompt, tiny_text_reranker.max_length)
        assert item.num_tokens <= bound, (pair, item.num_tokens, bound)
    assert pair_token_bound(("q", "d" * 10_000), instruction, prompt, 64) == 64  # capped
    assert pair_token_bound(("q", {"image": b"png"}), instruction, prompt, 64) == 64  # media: cap
