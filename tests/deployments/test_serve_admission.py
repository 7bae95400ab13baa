"""A model replica's work before the batch queue (`ModelServer` called directly, no cluster):
admission by a token upper bound before any tokenising (an over-budget burst gets 429 without
reaching the tokenizer), text requests tokenised in parallel, media requests on a pool of their
own (a slow video never holds up a text request), and a media request whose caller went away
stops between items. Speed is never asserted: only which request finishes first, and how many
times the tokenizer ran."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from deployments.config import MediaPolicy, ModelConfig, RequestLimits
from deployments.model_deployment import ModelServer
from deployments.protocol import EmbedFailure, EmbedJob, EmbedReply
from qwen3_embed.preparer import Preparer

TOL = 1e-5


def _server(model_dir, **config) -> ModelServer:
    return ModelServer(
        ModelConfig(model=str(model_dir), device="cpu", **config), RequestLimits(), MediaPolicy()
    )


class _CountingPrepare:
    """Replaces `Preparer.prepare_each` (which every copy of the preparer runs): counts the
    items it is called for, and holds each call `delay_s`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, delay_s: float = 0.0) -> None:
        self.items = 0
        self.calls = 0
        self._lock = threading.Lock()
        original = Preparer.prepare_each
        counter = self

        def prepare_each(preparer, inputs, *args, **kwargs):
            with counter._lock:
                counter.calls += 1
                counter.items += len(inputs)
            time.sleep(delay_s)
            return original(preparer, inputs, *args, **kwargs)

        monkeypatch.setattr(Preparer, "prepare_each", prepare_each)


def test_token_upper_bound_is_never_below_the_real_count(tiny_text_model_dir):
    server = _server(tiny_text_model_dir)
    texts = [
        "plain ascii text",
        "北京是中国的首都。" * 20,
        "emoji 🚀🔥 mixed with ünïcödé " * 10,
        "x",
        "<|endoftext|> special tokens inside the text",
    ]
    for instruction in (None, "Given a web search query, retrieve relevant passages"):
        for text in texts:
            job = EmbedJob((text,), instruction, None, False)
            (prepared,) = server.embedder.prepare([text], instruction, False, None)
            assert server._admission_token_bound(job) >= prepared.num_tokens, (text, instruction)
    # Truncated, or with a per-request token limit: never counted beyond what may enter.
    long = EmbedJob(("word " * 50_000,), None, None, True)
    assert server._admission_token_bound(long) == server.embedder.max_length
    assert server._admission_token_bound(EmbedJob(("word " * 500,), None, None, True, 16)) == 16


def test_over_budget_burst_gets_429_before_the_tokenizer_runs(
    tiny_text_model_dir, tiny_text_embedder, monkeypatch
):
    server = _server(tiny_text_model_dir, max_queued_tokens=64)
    counter = _CountingPrepare(monkeypatch, delay_s=0.5)  # admitted work stays in preparing
    texts = [f"request {index} " + "word " * 8 for index in range(20)]

    async def burst() -> list[tuple[int, EmbedReply | EmbedFailure]]:
        finished: list[tuple[int, EmbedReply | EmbedFailure]] = []

        async def one(index: int) -> None:
            reply = await server.embed(EmbedJob((texts[index],), None, None, False))
            finished.append((index, reply))

        await asyncio.gather(*(one(index) for index in range(len(texts))))
        return finished

    finished = asyncio.run(burst())
    refused = [index for index, reply in finished if isinstance(reply, EmbedFailure)]
    admitted = [index for index, reply in finished if isinstance(reply, EmbedReply)]
    # Each request's bound is ~60 tokens: the first fits the empty queue, the rest do not fit
    # beside it, and are refused with the queue's 429 + Retry-After.
    assert admitted and len(refused) >= 15, (admitted, refused)
    for index in refused:
        reply = dict(finished)[index]
        assert (reply.status, reply.code, reply.retry_after_s) == (429, "queue_full", 1.0)
        assert "being prepared" in reply.message
    # Refused before the expensive work: the tokenizer ran for the admitted requests only, and
    # every 429 came back while the admitted work was still being prepared.
    assert counter.items == len(admitted), (counter.items, admitted)
    order = [index for index, _ in finished]
    assert max(order.index(index) for index in refused) < min(
        order.index(index) for index in admitted
    )
    for index in admitted:
        expected = tiny_text_embedder.embed([texts[index]]).embeddings.numpy()
        assert float(np.max(np.abs(dict(finished)[index].embeddings - expected))) <= TOL
    assert server.stats()["reserved_token_bound"] == 0 and server.stats()["queued_tokens"] == 0


def test_a_long_text_request_does_not_hold_up_a_short_one(tiny_text_model_dir):
    """Tokenising runs on several threads (each with its own tokenizer): a short request sent
    while a very long one is being tokenised is answered first."""
    server = _server(tiny_text_model_dir)
    long_text = "a long document sentence. " * 40_000  # ~1M characters, truncated

    async def scenario() -> list[str]:
        finished: list[str] = []

        async def one(name: str, text: str, delay_s: float) -> None:
            await asyncio.sleep(delay_s)
            reply = await server.embed(EmbedJob((text,), None, None, True))
            assert isinstance(reply, EmbedReply), reply
            finished.append(name)

        await asyncio.gather(one("long", long_text, 0.0), one("short", "a short query", 0.05))
        return finished

    assert asyncio.run(scenario()) == ["short", "long"]


@pytest.fixture(scope="module")
def slow_video(tmp_path_factory) -> bytes:
    """An mp4 whose decoding takes a while however it is sampled: 4,000 noisy frames (160 s at
    25 fps) behind a single keyframe, so even a decoder that seeks decodes most of them."""
    av = pytest.importorskip("av")

    rng = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("video") / "slow.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.height, stream.width = 48, 64
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = 100_000
        for _ in range(4000):
            array = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())
    return path.read_bytes()


@pytest.mark.requires_vl
def test_a_video_request_does_not_delay_a_text_request(tiny_vl_model_dir, slow_video, monkeypatch):
    server = _server(tiny_vl_model_dir)
    counter = _CountingPrepare(monkeypatch)

    async def scenario() -> list[str]:
        finished: list[str] = []

        async def video() -> None:
            reply = await server.embed(EmbedJob(({"video": slow_video},), None, None, True))
            # Embedded, or refused by a decode budget of the core: either way after the text.
            assert isinstance(reply, EmbedReply) or reply.status == 413, reply
            finished.append("video")

        async def text() -> None:
            while counter.items == 0:  # sent while the video is being decoded
                await asyncio.sleep(0.001)
            reply = await server.embed(EmbedJob(("a text query",), None, None, True))
            assert isinstance(reply, EmbedReply), reply
            finished.append("text")

        await asyncio.gather(video(), text())
        return finished

    # The text request did not wait for the decode: it was prepared on the text pool.
    assert asyncio.run(scenario()) == ["text", "video"]


@pytest.mark.requires_vl
def test_a_media_request_whose_caller_went_away_stops_between_items(
    tiny_vl_model_dir, slow_video, monkeypatch
):
    server = _server(tiny_vl_model_dir)
    counter = _CountingPrepare(monkeypatch)

    async def scenario() -> None:
        items = tuple({"video": slow_video} for _ in range(4))
        task = asyncio.ensure_future(server.embed(EmbedJob(items, None, None, True)))
        while counter.items == 0:  # the first video is being decoded
            await asyncio.sleep(0.01)
        task.cancel()  # as the ingress does at its timeout (504) or when the client goes away
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)
        # The item being decoded finishes; the next ones are never started.
        await asyncio.get_running_loop().run_in_executor(server._media_pool._executor, lambda: None)
        # Room for the next request: its reservation was given back.
        assert server.stats()["reserved_token_bound"] == 0

    asyncio.run(scenario())
    assert counter.items == 1, counter.items
