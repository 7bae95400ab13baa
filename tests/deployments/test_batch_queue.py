"""The replica's continuous-batching queue (deployments/batch_queue.py) and the response
renderer (deployments/render.py), in plain asyncio: no Ray, no model."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import numpy as np
import pytest

from deployments.batch_queue import ContinuousBatcher, QueueFull, QueueLimits
from deployments.config import BatchingConfig, ModelConfig
from deployments.render import render_embeddings
from deployments.schemas import embeddings_response


def limits(**overrides: float) -> QueueLimits:
    values = {
        "max_batch_requests": 8,
        "max_batch_tokens": 100,
        "max_wait_s": 0.0,
        "max_queued_requests": 64,
        "max_queued_tokens": 1000,
    }
    values.update(overrides)
    return QueueLimits(**values)  # type: ignore[arg-type]


class Device:
    """A fake device: each batch takes `run_s`; records the batches it ran."""

    def __init__(self, run_s: float = 0.05) -> None:
        self.run_s = run_s
        self.batches: list[list[str]] = []
        self.gate: asyncio.Event | None = None  # when set, batches wait for it

    async def run(self, items: list[str]) -> list[str]:
        self.batches.append(list(items))
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.run_s)
        return [item.upper() for item in items]


def test_a_lone_request_starts_at_once():
    async def scenario() -> float:
        device = Device(run_s=0.0)
        batcher = ContinuousBatcher(device.run, limits())
        started = time.monotonic()
        result, info = await batcher.submit("q", 3)
        elapsed = time.monotonic() - started
        assert result == "Q" and info.requests == 1 and info.queue_wait_s < 0.05
        await batcher.close()
        return elapsed

    # Far below any fixed batch wait: nothing held the request back.
    assert asyncio.run(scenario()) < 0.05


def test_requests_arriving_while_busy_form_the_next_batch_in_order():
    async def scenario() -> Device:
        device = Device(run_s=0.1)
        batcher = ContinuousBatcher(device.run, limits())
        first = asyncio.ensure_future(batcher.submit("a", 1))
        await asyncio.sleep(0.02)  # "a" is running now
        rest = [asyncio.ensure_future(batcher.submit(text, 1)) for text in "bcdef"]
        results = await asyncio.gather(first, *rest)
        assert [result for result, _ in results] == list("ABCDEF")
        assert [info.requests for _, info in results] == [1, 5, 5, 5, 5, 5]
        await batcher.close()
        return device

    assert asyncio.run(scenario()).batches == [["a"], ["b", "c", "d", "e", "f"]]


def test_batches_respect_the_token_and_request_budgets():
    async def scenario() -> Device:
        device = Device(run_s=0.05)
        batcher = ContinuousBatcher(device.run, limits(max_batch_requests=3, max_batch_tokens=10))
        device.gate = asyncio.Event()
        blocker = asyncio.ensure_future(batcher.submit("x", 1))
        await asyncio.sleep(0.01)
        # tokens: 4 + 4 fit 10, the next 4 does not; then 2+2+2 hit the request cap; then 50
        # (over the budget) runs alone; then the last one.
        sizes = {"a": 4, "b": 4, "c": 4, "d": 2, "e": 2, "f": 2, "g": 50, "h": 1}
        tasks = [asyncio.ensure_future(batcher.submit(text, n)) for text, n in sizes.items()]
        await asyncio.sleep(0.01)
        device.gate.set()
        await asyncio.gather(blocker, *tasks)
        await batcher.close()
        return device

    assert asyncio.run(scenario()).batches == [
        ["x"],
        ["a", "b"],
        ["c", "d", "e"],
        ["f"],
        ["g"],
        ["h"],
    ]


def test_optional_wait_lets_an_idle_batch_gather_company_but_not_longer():
    async def scenario() -> tuple[Device, float]:
        device = Device(run_s=0.0)
        batcher = ContinuousBatcher(device.run, limits(max_wait_s=0.2))
        started = time.monotonic()
        first = asyncio.ensure_future(batcher.submit("a", 1))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(batcher.submit("b", 1))
        await asyncio.gather(first, second)
        elapsed = time.monotonic() - started
        await batcher.close()
        return device, elapsed

    device, elapsed = asyncio.run(scenario())
    assert device.batches == [["a", "b"]]
    assert 0.18 <= elapsed < 1.0  # waited for the oldest's deadline, then ran


def test_a_full_batch_does_not_wait():
    async def scenario() -> float:
        device = Device(run_s=0.0)
        batcher = ContinuousBatcher(device.run, limits(max_wait_s=5.0, max_batch_requests=2))
        started = time.monotonic()
        await asyncio.gather(batcher.submit("a", 1), batcher.submit("b", 1))
        await batcher.close()
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 1.0


def test_queue_bounds_refuse_at_once_but_an_empty_queue_takes_anything():
    async def scenario() -> None:
        device = Device(run_s=0.0)
        device.gate = asyncio.Event()
        batcher = ContinuousBatcher(
            device.run, limits(max_queued_requests=2, max_queued_tokens=10, max_batch_requests=1)
        )
        running = asyncio.ensure_future(batcher.submit("run", 5))
        await asyncio.sleep(0.01)  # taken into a batch: no longer queued
        huge = asyncio.ensure_future(batcher.submit("huge", 500))  # over the token bound, alone
        await asyncio.sleep(0.01)
        assert batcher.queued_requests == 1 and batcher.queued_tokens == 500
        with pytest.raises(QueueFull):
            await batcher.submit("tokens", 1)  # the queue holds 500 > 10 tokens
        device.gate.set()
        await asyncio.gather(running, huge)
        device.gate.clear()
        blocker = asyncio.ensure_future(batcher.submit("blocker", 1))
        await asyncio.sleep(0.01)
        queued = [asyncio.ensure_future(batcher.submit(t, 1)) for t in ("q1", "q2")]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await batcher.submit("third", 1)  # 2 requests already wait
        device.gate.set()
        await asyncio.gather(blocker, *queued)
        assert batcher.queued_requests == 0 and batcher.queued_tokens == 0
        await batcher.close()

    asyncio.run(scenario())


def test_cancelled_waiters_are_never_computed_and_free_their_tokens():
    async def scenario() -> Device:
        device = Device(run_s=0.0)
        device.gate = asyncio.Event()
        batcher = ContinuousBatcher(device.run, limits())
        running = asyncio.ensure_future(batcher.submit("run", 1))
        await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(batcher.submit("gone", 7))
        kept = asyncio.ensure_future(batcher.submit("kept", 1))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.sleep(0.01)
        assert batcher.queued_tokens == 1
        device.gate.set()
        await asyncio.gather(running, kept)
        assert gone.cancelled()
        await batcher.close()
        return device

    assert asyncio.run(scenario()).batches == [["run"], ["kept"]]


def test_a_failing_batch_fails_its_requests_only():
    async def scenario() -> None:
        calls = 0

        async def run(items: list[str]) -> list[str]:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.05)
            if "bad" in items:
                raise RuntimeError("device fault")
            return items

        batcher = ContinuousBatcher(run, limits(max_batch_requests=1))
        bad = asyncio.ensure_future(batcher.submit("bad", 1))
        good = asyncio.ensure_future(batcher.submit("good", 1))
        with pytest.raises(RuntimeError, match="device fault"):
            await bad
        assert (await good)[0] == "good"  # the worker survived and served the next batch
        assert calls == 2
        await batcher.close()

    asyncio.run(scenario())


def test_limits_are_checked_where_they_enter_and_changed_at_run_time():
    # The queue trusts its limits: the configs they come from refuse bad values.
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchingConfig(max_batch_size=0)
    with pytest.raises(ValueError, match="batch_wait_ms"):
        BatchingConfig(batch_wait_ms=-1)
    for name in ("max_queued_tokens", "max_ongoing_requests", "max_batch_tokens"):
        with pytest.raises(ValueError, match=name):
            ModelConfig(model="m", **{name: 0})

    async def scenario() -> Device:
        device = Device(run_s=0.05)
        batcher = ContinuousBatcher(device.run, limits())
        first = asyncio.ensure_future(batcher.submit("a", 1))
        await asyncio.sleep(0.01)
        batcher.set_limits(limits(max_batch_requests=2))
        rest = [asyncio.ensure_future(batcher.submit(t, 1)) for t in "bcd"]
        await asyncio.gather(first, *rest)
        await batcher.close()
        return device

    assert asyncio.run(scenario()).batches == [["a"], ["b", "c"], ["d"]]


# ---------------------------------------------------------------------------- render
@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_render_is_the_documented_body(encoding_format):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((5, 9)).astype(np.float32)
    vectors[0, 0], vectors[1, 1] = 1e-8, -3.5e12  # exponents
    rendered = json.loads(render_embeddings("m", vectors, 11, encoding_format))
    reference = json.loads(json.dumps(embeddings_response("m", vectors, 11, encoding_format)))
    assert rendered == reference  # the same numbers (floats: the same float64 values)
    if encoding_format == "base64":
        rows = [np.frombuffer(base64.b64decode(r["embedding"]), "<f4") for r in rendered["data"]]
        np.testing.assert_array_equal(np.stack(rows), vectors)


def test_render_refuses_non_finite_values():
    vectors = np.ones((2, 3), dtype=np.float32)
    vectors[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        render_embeddings("m", vectors, 1, "float")


# ------------------------------------------------------------- one forward, mixed dims
def test_one_batch_with_mixed_dimensions_equals_the_core_per_dimension(tiny_text_embedder):
    """The replica's batch step (real core, no Ray): requests asking different `dimensions`
    share one embed_prepared call, and each gets exactly what the core gives it alone."""
    from types import SimpleNamespace

    from deployments.model_deployment import EmbeddingModel, _Pending

    requests = [
        (["hello world", "a longer second input here"], 64),
        (["what is ray"], 32),
        (["x", "y", "z"], 48),
        (["hello world"], 32),
    ]
    batch = [
        _Pending(tuple(tiny_text_embedder.prepare(texts)), dim, 0.0) for texts, dim in requests
    ]
    replica = SimpleNamespace(embedder=tiny_text_embedder)
    calls = []
    original = tiny_text_embedder.embed_prepared

    def counting(items, dim=None, errors="raise"):
        calls.append((len(items), dim))
        return original(items, dim, errors=errors)

    replica.embedder = SimpleNamespace(
        embed_prepared=counting, apply_dim=tiny_text_embedder.apply_dim
    )
    vectors = EmbeddingModel.func_or_class._embed_mixed(replica, batch)
    assert calls == [(7, None)]  # one call for the whole batch, at full size
    for (texts, dim), rows in zip(requests, vectors, strict=True):
        expected = tiny_text_embedder.embed(texts, dim=dim).embeddings.numpy()
        assert rows.shape == expected.shape and rows.dtype == np.float32
        np.testing.assert_allclose(rows, expected, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-6)
    # One dimension for all: the core slices it itself (no re-normalisation step).
    calls.clear()
    same = EmbeddingModel.func_or_class._embed_mixed(replica, batch[1:2] + batch[3:])
    assert calls == [(2, 32)]
    np.testing.assert_allclose(same[0], vectors[1], atol=1e-6)  # the two routes agree
