"""`deployments.serving_defaults.serving_load_options`: the replicas' `auto` forward mode on a
CPU, for embedding models and rerankers alike (the text reranker's packed scores equal its
padded ones: tests/core/test_reranker_core.py)."""

from __future__ import annotations

import pytest

from deployments.serving_defaults import serving_load_options
from qwen3_embed.options import LoadOptions


def test_text_embedder_and_text_reranker_serve_packed_on_cpu(
    tiny_text_model_dir, tiny_text_reranker_dir
):
    for model in (tiny_text_model_dir, tiny_text_reranker_dir):
        options = LoadOptions(model=str(model), device="cpu")
        assert serving_load_options(options).forward_mode == "packed", model
        padded = LoadOptions(model=str(model), device="cpu", forward_mode="padded")
        assert serving_load_options(padded) == padded  # an explicit choice is kept


def test_served_text_reranker_is_packed_with_the_padded_scores(
    tiny_text_reranker_dir, tiny_text_reranker
):
    """What a reranker replica loads (`Reranker.from_options(serving_load_options(...))`) runs
    packed, and its scores are the core's default (padded on CPU) to 1e-5."""
    from qwen3_embed import Reranker

    served = Reranker.from_options(
        serving_load_options(LoadOptions(model=str(tiny_text_reranker_dir), device="cpu"))
    )
    assert (served.forward_mode, served.backend.attention_kernel) == (
        "packed",
        "per_sequence_sdpa",
    )
    assert tiny_text_reranker.forward_mode == "padded"
    pairs = [("a query", "a short document"), ("another query", "a much longer document " * 9)]
    pairs.append(("q", "x " * 50))
    scores = served.score_pairs(pairs)
    assert abs(scores - tiny_text_reranker.score_pairs(pairs)).max() <= 1e-5


@pytest.mark.requires_vl
def test_vl_reranker_keeps_the_cores_auto(tiny_vl_reranker_dir):
    options = LoadOptions(model=str(tiny_vl_reranker_dir), device="cpu")
    assert serving_load_options(options) == options
