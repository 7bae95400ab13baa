"""The packed (padding-free) forward, the compiled forward and OOM resilience, proven on CPU in
fp32 against the padded path and against each input embedded alone."""

from __future__ import annotations

import pytest
import torch
import varlen_standin

from qwen3_embed import Embedder, InputTooLargeForDeviceError
from qwen3_embed.batching import plan_packed_batches
from qwen3_embed.embedder import resolve_forward_mode
from qwen3_embed.oom import RECOVERY_AFTER, TokenBudget, is_out_of_memory
from qwen3_embed.text.packed_attention import KERNEL_PER_SEQUENCE, KERNEL_VARLEN, packed_kernel
from qwen3_embed.text.packing import PackedBatch, pack_batch

ATOL = 1e-5
TEXTS = [
    "a",
    "short text",
    "a somewhat longer text about embeddings and packed sequences",
    "x " * 40,
    "the quick brown fox jumps over the lazy dog " * 3,
    "b",
    "medium length sentence for the middle of the batch",
]


@pytest.fixture(scope="module")
def padded(tiny_text_model_dir) -> Embedder:
    return Embedder.from_pretrained(tiny_text_model_dir, device="cpu", forward_mode="padded")


@pytest.fixture(scope="module")
def packed(tiny_text_model_dir) -> Embedder:
    return Embedder.from_pretrained(tiny_text_model_dir, device="cpu", forward_mode="packed")


def test_modes_are_visible(padded, packed):
    assert padded.forward_mode == "padded"
    assert packed.forward_mode == "packed"
    assert packed.backend.packed_kernel == KERNEL_PER_SEQUENCE  # CPU, fp32


def test_packed_equals_padded_equals_alone(padded, packed):
    prepared = packed.prepare(TEXTS)
    assert len({item.num_tokens for item in prepared}) > 3  # really ragged
    via_packed = packed.embed_prepared(prepared).embeddings
    via_padded = padded.embed_prepared(prepared).embeddings
    alone = torch.cat([padded.embed_prepared([item]).embeddings for item in prepared])
    assert (via_packed - via_padded).abs().max().item() <= ATOL
    assert (via_packed - alone).abs().max().item() <= ATOL
    norms = via_packed.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=ATOL)


def test_packed_mrl_truncates_before_normalising(padded, packed):
    prepared = packed.prepare(TEXTS)
    full = padded.forward_pooled(prepared).float()
    vectors = packed.embed_prepared(prepared, dim=32).embeddings
    expected = torch.nn.functional.normalize(full[:, :32], dim=1)
    assert (vectors - expected).abs().max().item() <= ATOL


def test_packed_budget_does_not_change_vectors(tiny_text_model_dir, packed):
    prepared = packed.prepare(TEXTS)
    reference = packed.embed_prepared(prepared).embeddings
    small = Embedder.from_pretrained(
        tiny_text_model_dir, device="cpu", forward_mode="packed", max_batch_tokens=20
    )
    assert len(plan_packed_batches([i.num_tokens for i in prepared], 20)) > 2
    assert (small.embed_prepared(prepared).embeddings - reference).abs().max().item() <= ATOL


def test_pack_batch_positions_restart_per_sequence(packed):
    prepared = packed.prepare(["a", "short text", "b"])
    batch = pack_batch(prepared)
    assert isinstance(batch, PackedBatch)
    lengths = [item.num_tokens for item in prepared]
    assert batch.cu_seq_lens.tolist() == [0, lengths[0], lengths[0] + lengths[1], sum(lengths)]
    expected = [p for length in lengths for p in range(length)]
    assert batch.position_ids[0].tolist() == expected
    assert batch.input_ids[0].tolist() == [t for item in prepared for t in item.input_ids]
    assert batch.last_token_index().tolist() == [
        lengths[0] - 1,
        lengths[0] + lengths[1] - 1,
        sum(lengths) - 1,
    ]
    assert batch.max_length == max(lengths)


def test_every_forward_runs_without_kv_cache(padded, packed):
    calls: list[dict] = []
    for embedder in (padded, packed):
        backend = embedder.backend
        original = backend._run

        def spy(*args, _original=original, **kwargs):
            calls.append(kwargs)
            return _original(*args, **kwargs)

        backend._run = spy
        try:
            embedder.embed(TEXTS[:3])
            backend.left_padding = True
            if embedder is padded:
                embedder.embed(TEXTS[:3])
        finally:
            backend._run = original
            backend.left_padding = False
    assert len(calls) >= 3
    assert all(kwargs.get("use_cache") is False for kwargs in calls)


def test_packed_is_refused_for_models_that_cannot_pack(minilm_dir):
    with pytest.raises(ValueError, match="forward_mode='packed' is for Qwen3 text models"):
        Embedder.from_pretrained(minilm_dir, device="cpu", forward_mode="packed")


def test_auto_mode_is_packed_only_where_a_varlen_kernel_runs(packed, monkeypatch):
    info, cuda, cpu = packed.info, torch.device("cuda"), torch.device("cpu")
    assert resolve_forward_mode("auto", info, cpu) == "padded"
    assert resolve_forward_mode("auto", info, cuda, torch.bfloat16) == "packed"
    assert resolve_forward_mode("auto", info, cuda, torch.float16, "eager") == "packed"
    # fp32 on a GPU has no varlen kernel: packed would be one SDPA per sequence per layer.
    assert resolve_forward_mode("auto", info, cuda, torch.float32) == "padded"
    # flash-attn's own varlen kernel runs packed forwards in any case.
    assert resolve_forward_mode("auto", info, cuda, torch.float32, "flash_attention_2") == "packed"
    # torch < 2.10 (no torch.nn.attention.varlen): padded.
    from qwen3_embed.text import packed_attention

    monkeypatch.setattr(packed_attention, "_varlen", lambda: None)
    assert resolve_forward_mode("auto", info, cuda, torch.bfloat16) == "padded"
    # An explicit choice is kept.
    assert resolve_forward_mode("packed", info, cuda, torch.float32) == "packed"
    with pytest.raises(ValueError, match="valid values are"):
        resolve_forward_mode("ragged", info, cpu)


def test_cpu_and_fp32_use_the_exact_per_sequence_kernel():
    assert packed_kernel(torch.device("cpu"), torch.bfloat16) == KERNEL_PER_SEQUENCE
    assert packed_kernel(torch.device("cuda"), torch.float32) == KERNEL_PER_SEQUENCE


def test_packed_planner_fills_the_budget_with_real_tokens():
    lengths = [300, 5, 120, 7, 64, 64, 1000, 3, 40]
    batches = plan_packed_batches(lengths, 400)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or sum(lengths[i] for i in batch) <= 400
    assert [lengths[i] for i in batches[0]] == [1000]  # longer than the budget: alone, first
    # No padding cut: the 300-token input shares its forward with short ones.
    assert len(next(b for b in batches if 0 in b)) > 1


@pytest.mark.parametrize("mode", ["padded", "packed"])
def test_compiled_forward_equals_eager(tiny_text_model_dir, padded, monkeypatch, mode):
    # Graph capture with the "eager" compile backend proves the wiring (dynamic shapes, packed
    # kwargs through dynamo) in seconds; inductor's code generation is exercised by benchmarks.
    monkeypatch.setattr("qwen3_embed.text.backend.COMPILE_BACKEND", "eager")
    compiled = Embedder.from_pretrained(
        tiny_text_model_dir, device="cpu", forward_mode=mode, compile=True
    )
    assert compiled.compiled and compiled.forward_mode == mode
    prepared = compiled.prepare(TEXTS)
    reference = padded.embed_prepared(prepared).embeddings
    assert (compiled.embed_prepared(prepared).embeddings - reference).abs().max().item() <= ATOL


# ------------------------------------------------------------------------- OOM
def _inject_oom(monkeypatch, embedder: Embedder, too_many: int, poisoned: set[int] = frozenset()):
    """Make the backend raise torch.OutOfMemoryError for a forward above `too_many` tokens, or
    containing a sequence of a length in `poisoned`. Returns the token counts of the forwards."""
    backend = embedder.backend
    original = backend.forward_staged
    seen: list[int] = []

    def forward_staged(staged, pooling_mode):
        if isinstance(staged, PackedBatch):
            lengths = (staged.cu_seq_lens[1:] - staged.cu_seq_lens[:-1]).tolist()
        else:
            lengths = staged.attention_mask.sum(dim=1).tolist()
        tokens = sum(lengths) if isinstance(staged, PackedBatch) else staged.input_ids.numel()
        seen.append(tokens)
        if tokens > too_many or poisoned & set(lengths):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(staged, pooling_mode)

    monkeypatch.setattr(backend, "forward_staged", forward_staged)
    return seen


@pytest.mark.parametrize("mode", ["padded", "packed"])
def test_oom_splits_the_batch_and_lowers_the_budget(tiny_text_model_dir, padded, monkeypatch, mode):
    embedder = Embedder.from_pretrained(tiny_text_model_dir, device="cpu", forward_mode=mode)
    prepared = embedder.prepare(TEXTS * 3)
    reference = padded.embed_prepared(prepared).embeddings
    limit = 2 * max(item.num_tokens for item in prepared)  # every input fits alone
    seen = _inject_oom(monkeypatch, embedder, too_many=limit)
    output = embedder.embed_prepared(prepared)
    assert (output.embeddings - reference).abs().max().item() <= ATOL  # no row lost or moved
    assert not output.failures
    assert embedder.budget.current < embedder.max_batch_tokens  # lowered for what follows
    assert max(seen) > limit  # an OOM did happen (the test cannot pass vacuously)
    seen.clear()
    embedder.embed_prepared(prepared)
    assert seen and max(seen) <= limit  # the next call starts under the lowered budget


@pytest.mark.parametrize("errors", ["collect", "raise"])
def test_an_input_that_fails_alone_is_an_error_for_that_input_only(
    tiny_text_model_dir, padded, monkeypatch, errors
):
    embedder = Embedder.from_pretrained(tiny_text_model_dir, device="cpu", forward_mode="packed")
    prepared = embedder.prepare(TEXTS)
    lengths = [item.num_tokens for item in prepared]
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    assert lengths.count(lengths[longest]) == 1
    _inject_oom(monkeypatch, embedder, too_many=10_000, poisoned={lengths[longest]})
    if errors == "raise":
        with pytest.raises(
            InputTooLargeForDeviceError,
            match=f"input\\[{longest}\\]: input has {lengths[longest]} tokens",
        ):
            embedder.embed_prepared(prepared, errors="raise")
        return
    output = embedder.embed_prepared(prepared, errors="collect")
    assert set(output.failures) == {longest}
    failure = output.failures[longest]
    assert failure.code == "input_too_large_for_device" and failure.index == longest
    assert f"{lengths[longest]} tokens" in str(failure)
    reference = padded.embed_prepared(prepared).embeddings
    others = [i for i in range(len(prepared)) if i != longest]
    assert (output.embeddings[others] - reference[others]).abs().max().item() <= ATOL


def test_errors_other_than_oom_propagate(tiny_text_model_dir, monkeypatch):
    embedder = Embedder.from_pretrained(tiny_text_model_dir, device="cpu")

    def broken(staged, pooling_mode):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(embedder.backend, "forward_staged", broken)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        embedder.embed(["a", "b"])


def test_budget_halves_on_oom_and_recovers_slowly():
    budget = TokenBudget(1000)
    budget.lower(800)
    assert budget.current == 400
    for _ in range(RECOVERY_AFTER - 1):
        budget.record_success()
    assert budget.current == 400  # not yet
    budget.record_success()
    assert 400 < budget.current < 1000
    for _ in range(RECOVERY_AFTER * 100):
        budget.record_success()
    assert budget.current == 1000  # never above the configured maximum


def test_is_out_of_memory():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(
        RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory")
    )
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


@pytest.mark.parametrize("release", sorted(varlen_standin.RELEASES))
def test_varlen_call_fits_each_torch_release_without_repeating_kv(monkeypatch, release):
    # torch's varlen_attn is CUDA-only: a CPU custom op with each release's signature stands in.
    from qwen3_embed.text import packed_attention

    varlen_standin.install(monkeypatch, release)
    torch.manual_seed(0)
    query, key, value = torch.randn(12, 4, 8), torch.randn(12, 2, 8), torch.randn(12, 2, 8)
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    got = packed_attention._varlen_attention(query, key, value, cu, 7, 8**-0.5)
    expected = packed_attention._per_sequence_attention(query, key, value, cu, 8**-0.5)
    assert (got - expected).abs().max().item() <= 1e-5
    (call,) = varlen_standin.CALLS
    assert (call["heads"], call["kv_heads"]) == (4, 2)  # grouped-query K/V never repeated
    assert (
        call
        == {
            "2.10": {"heads": 4, "kv_heads": 2, "is_causal": True},
            "2.11": {"heads": 4, "kv_heads": 2, "scale": 8**-0.5, "window_size": (-1, 0)},
            "2.12+": {
                "heads": 4,
                "kv_heads": 2,
                "scale": 8**-0.5,
                "window_size": (-1, 0),
                "enable_gqa": True,
            },
        }[release]
    )
    # And the per-sequence kernel equals one causal SDPA per sequence computed by hand.
    first = torch.nn.functional.scaled_dot_product_attention(
        query[:5].transpose(0, 1),
        key[:5].repeat_interleave(2, 1).transpose(0, 1),
        value[:5].repeat_interleave(2, 1).transpose(0, 1),
        is_causal=True,
    ).transpose(0, 1)
    assert (expected[:5] - first).abs().max().item() <= 1e-6


@pytest.mark.parametrize("release", ["2.10", "2.12+"])
def test_packed_model_through_the_varlen_kernel_equals_padded(
    tiny_text_model_dir, padded, monkeypatch, release
):
    # The whole packed forward of the model through the varlen call path (stand-in kernel).
    varlen_standin.install(monkeypatch, release)
    embedder = Embedder.from_pretrained(tiny_text_model_dir, device="cpu", forward_mode="packed")
    assert embedder.describe()["attention_kernel"] == KERNEL_VARLEN
    prepared = embedder.prepare(TEXTS)
    got = embedder.embed_prepared(prepared).embeddings
    assert (got - padded.embed_prepared(prepared).embeddings).abs().max().item() <= ATOL
    layers = embedder.backend.model.config.num_hidden_layers
    assert len(varlen_standin.CALLS) >= layers  # every layer ran the varlen kernel
    assert all(call["kv_heads"] < call["heads"] for call in varlen_standin.CALLS)
