"""deployments/prepare_pool.py and its use by a model replica (`ModelServer` called directly, no
cluster): a small text request is tokenised right on the event loop (no hand-off to a pool
thread), a long one on a pool thread however it is truncated, with the same token ids and
vectors either way. Which thread ran the tokenizer is asserted, never how long it took."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from deployments.config import MediaPolicy, ModelConfig, RequestLimits
from deployments.model_deployment import ModelServer
from deployments.prepare_pool import INLINE_PREPARE_MAX_TOKENS, PreparerPool
from deployments.protocol import EmbedJob, EmbedReply
from qwen3_embed.preparer import Preparer

TOL = 1e-5


class _ThreadRecorder:
    """Records the thread of every `Preparer.prepare_each` call (which every copy runs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.threads: list[int] = []
        original = Preparer.prepare_each
        recorder = self

        def prepare_each(preparer, inputs, *args, **kwargs):
            recorder.threads.append(threading.get_ident())
            return original(preparer, inputs, *args, **kwargs)

        monkeypatch.setattr(Preparer, "prepare_each", prepare_each)


def _ids(prepared) -> list[list[int]]:
    return [list(item.input_ids) for item in prepared]


def test_pool_prepares_a_small_request_on_the_calling_thread(tiny_text_embedder, monkeypatch):
    preparer = tiny_text_embedder.preparer
    pool = PreparerPool(preparer, 2, "test-prepare", inline_max_tokens=64)
    expected = _ids(preparer.prepare(["a short query", "another"], None, False, None))
    recorder = _ThreadRecorder(monkeypatch)

    async def scenario() -> tuple[int, list, list, list]:
        items = ["a short query", "another"]
        small = await pool.prepare(items, None, False, None, bound_tokens=64)
        large = await pool.prepare(items, None, False, None, bound_tokens=65)
        unbounded = await pool.prepare(items, None, False, None)  # no bound: the pool
        return threading.get_ident(), small, large, unbounded

    try:
        loop_thread, small, large, unbounded = asyncio.run(scenario())
    finally:
        pool.shutdown()
    assert _ids(small) == _ids(large) == _ids(unbounded) == expected
    inline, *pooled = recorder.threads
    assert inline == loop_thread
    assert len(pooled) == 2 and loop_thread not in pooled


def test_pool_without_inline_never_prepares_on_the_calling_thread(tiny_text_embedder, monkeypatch):
    pool = PreparerPool(tiny_text_embedder.preparer, 1, "test-prepare")
    recorder = _ThreadRecorder(monkeypatch)

    async def scenario() -> int:
        await pool.prepare(["x"], None, False, None, bound_tokens=1)
        return threading.get_ident()

    try:
        loop_thread = asyncio.run(scenario())
    finally:
        pool.shutdown()
    assert recorder.threads and loop_thread not in recorder.threads


def test_replica_tokenises_a_short_text_inline_and_a_long_truncated_one_on_the_pool(
    tiny_text_model_dir, tiny_text_embedder, monkeypatch
):
    """The inline choice goes by the text's length before truncation: a long text whose
    truncated token count is small still goes to a pool thread (never holding the loop)."""
    server = ModelServer(
        ModelConfig(model=str(tiny_text_model_dir), device="cpu"), RequestLimits(), MediaPolicy()
    )
    short = "a short query"
    long_text = "a long document sentence. " * (INLINE_PREPARE_MAX_TOKENS // 8)
    recorder = _ThreadRecorder(monkeypatch)

    async def scenario() -> tuple[int, EmbedReply, EmbedReply]:
        first = await server.embed(EmbedJob((short,), None, None, False))
        second = await server.embed(EmbedJob((long_text,), None, None, True, 16))
        return threading.get_ident(), first, second

    loop_thread, first, second = asyncio.run(scenario())
    assert isinstance(first, EmbedReply) and isinstance(second, EmbedReply)
    assert recorder.threads[0] == loop_thread
    assert recorder.threads[1] != loop_thread
    expected = tiny_text_embedder.embed([short]).embeddings.numpy()
    assert float(np.max(np.abs(first.embeddings - expected))) <= TOL
    assert second.token_counts == (16,)
    (prepared,) = tiny_text_embedder.prepare([long_text], None, True, 16)
    expected_long = tiny_text_embedder.embed_prepared([prepared]).embeddings.numpy()
    assert float(np.max(np.abs(second.embeddings - expected_long))) <= TOL
