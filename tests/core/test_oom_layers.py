"""An input that runs out of device memory alone is an error for that input only, in the batch
job (an error row) and in Serve (its own request fails; the batch's other requests succeed).
The OOM is injected through the backend, on CPU, with the tiny checkpoint."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from qwen3_embed import Embedder
from qwen3_embed.text.packing import PackedBatch

TEXTS = ["a short document", "x " * 30, "another one, a little longer than the first"]


def _poison_longest(monkeypatch, embedder: Embedder, poisoned_length: int) -> None:
    """Any forward holding a sequence of `poisoned_length` tokens raises CUDA's OOM error."""
    original = embedder.backend.forward_staged

    def forward_staged(staged, pooling_mode):
        if isinstance(staged, PackedBatch):
            lengths = (staged.cu_seq_lens[1:] - staged.cu_seq_lens[:-1]).tolist()
        else:
            lengths = staged.attention_mask.sum(dim=1).tolist()
        if poisoned_length in lengths:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original(staged, pooling_mode)

    monkeypatch.setattr(embedder.backend, "forward_staged", forward_staged)


@pytest.fixture
def oom_embedder(tiny_text_model_dir, monkeypatch):
    embedder = Embedder.from_pretrained(tiny_text_model_dir, device="cpu", forward_mode="packed")
    lengths = [item.num_tokens for item in embedder.prepare(TEXTS)]
    assert lengths[1] == max(lengths) and lengths.count(lengths[1]) == 1
    _poison_longest(monkeypatch, embedder, lengths[1])
    return embedder, lengths


def test_batch_job_writes_an_error_row_for_the_lone_oom_input(oom_embedder, tiny_text_embedder):
    from pipelines.rows import PREPARED_SCHEMA
    from pipelines.stages import EmbedWorker

    embedder, lengths = oom_embedder
    prepared = embedder.prepare(TEXTS)
    worker = EmbedWorker.__new__(EmbedWorker)  # the real worker, with the OOM-injected embedder
    worker.embedder, worker.dim = embedder, 32
    table = pa.table(
        {
            "id": ["a", "b", "c"],
            "status": ["ok"] * 3,
            "error": [None] * 3,
            "code": [None] * 3,
            "num_tokens": pa.array(lengths, pa.int32()),
            "input_ids": [item.input_ids for item in prepared],
            "media": [None] * 3,
        },
        schema=PREPARED_SCHEMA,
    )
    rows = worker(table).to_pylist()
    assert [row["status"] for row in rows] == ["ok", "error", "ok"]
    assert rows[1]["code"] == "input_too_large_for_device"
    assert f"{lengths[1]} tokens" in rows[1]["error"] and rows[1]["embedding"] is None
    reference = tiny_text_embedder.embed([TEXTS[0], TEXTS[2]], dim=32).embeddings.numpy()
    got = np.array([rows[0]["embedding"], rows[2]["embedding"]], dtype=np.float32)
    assert np.abs(got - reference).max() <= 1e-5
    # A block whose every row is too large alone is per-row verdicts, not a broken replica.
    alone = worker(table.take([1, 1])).to_pylist()
    assert [row["code"] for row in alone] == ["input_too_large_for_device"] * 2


def test_serve_fails_only_the_request_holding_the_lone_oom_input(oom_embedder, tiny_text_embedder):
    pytest.importorskip("ray")
    from deployments.model_deployment import EmbeddingModel, _Pending
    from deployments.protocol import EmbedFailure

    embedder, _ = oom_embedder
    replica = EmbeddingModel.func_or_class.__new__(EmbeddingModel.func_or_class)
    replica.embedder = embedder
    requests = [
        _Pending(tuple(embedder.prepare([TEXTS[0]])), 32, 0.0),
        _Pending(tuple(embedder.prepare([TEXTS[2], TEXTS[1]])), 32, 0.0),  # its input 1 is poisoned
        _Pending(tuple(embedder.prepare([TEXTS[2]])), 32, 0.0),
    ]
    first, failed, third = replica._embed_mixed(requests)
    assert isinstance(failed, EmbedFailure)
    assert failed.status == 413 and failed.code == "input_too_large_for_device"
    assert "input[1]" in failed.message and "tokens" in failed.message
    reference = tiny_text_embedder.embed([TEXTS[0], TEXTS[2]], dim=32).embeddings.numpy()
    assert np.abs(first[0] - reference[0]).max() <= 1e-5
    assert np.abs(third[0] - reference[1]).max() <= 1e-5
