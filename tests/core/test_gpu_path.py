"""Defects of the GPU path found by reading it against torch 2.10-2.14 and transformers 5.x,
each proven on CPU with a stand-in for what needs CUDA: a stub `flash_attn` package, a forward
that raises CUDA's out-of-memory error, the `meta` device (any host sync raises there), a spy on
`from_pretrained`, and the VL backend's staging."""

from __future__ import annotations

import sys
import types
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from qwen3_embed import Embedder
from qwen3_embed.contracts import Backend, PreparedInput
from qwen3_embed.oom import TokenBudget
from qwen3_embed.pooling import truncate_and_normalize
from qwen3_embed.runner import run_forwards
from qwen3_embed.text.backend import TextBackend
from qwen3_embed.text.packed_attention import KERNEL_FLASH_ATTN

ATOL = 1e-5
TEXTS = ["a", "short text", "x " * 30, "the quick brown fox jumps over the lazy dog", "b"]


@pytest.fixture(scope="module")
def padded(tiny_text_model_dir) -> Embedder:
    return Embedder.from_pretrained(tiny_text_model_dir, device="cpu", forward_mode="padded")


# ------------------------------------------------------------ 1. flash-attn models
def _flash_attn_stub() -> tuple[types.ModuleType, types.ModuleType, list[str]]:
    """The flash-attn package's three entry points (flash-attn's signatures), computed with SDPA
    on CPU; `calls` records which ran."""
    calls: list[str] = []

    def attend(q, k, v, causal, scale):  # (B, T, H, D) each
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            is_causal=causal,
            scale=scale,
            enable_gqa=True,
        )
        return out.transpose(1, 2)

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):  # fmt: skip
        calls.append("flash_attn_func")
        return attend(q, k, v, causal, softmax_scale)

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False, block_table=None):  # fmt: skip
        calls.append("flash_attn_varlen_func")
        out = torch.empty_like(q)
        bounds = cu_seqlens_q.tolist()
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            piece = (x[start:end].unsqueeze(0) for x in (q, k, v))
            out[start:end] = attend(*piece, causal, softmax_scale)[0]
        return out

    def flash_attn_with_kvcache(*args, **kwargs):
        raise AssertionError("an embedder never decodes")

    package = types.ModuleType("flash_attn")
    package.__version__ = "2.8.3"
    package.flash_attn_func = flash_attn_func
    package.flash_attn_varlen_func = flash_attn_varlen_func
    package.flash_attn_with_kvcache = flash_attn_with_kvcache
    padding = types.ModuleType("flash_attn.bert_padding")
    padding.pad_input = padding.unpad_input = flash_attn_with_kvcache
    package.bert_padding = padding
    return package, padding, calls


@pytest.fixture
def flash_attn_stub(monkeypatch):
    import transformers.modeling_flash_attention_utils as flash_utils

    package, padding, calls = _flash_attn_stub()
    monkeypatch.setitem(sys.modules, "flash_attn", package)
    monkeypatch.setitem(sys.modules, "flash_attn.bert_padding", padding)
    # transformers' probe wants the installed distribution and CUDA; the stub stands in for both.
    monkeypatch.setattr(flash_utils, "is_flash_attn_2_available", lambda *a, **k: True)
    for name in ("_loaded_implementation", "_flash_fn", "_flash_varlen_fn", "_process_flash_kwargs_fn"):  # fmt: skip
        monkeypatch.setattr(flash_utils, name, None)
    return calls


@pytest.mark.parametrize("mode", ["padded", "packed"])
def test_flash_attention_2_models_run_padded_and_packed(
    tiny_text_model_dir, padded, flash_attn_stub, mode
):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_text_model_dir, dtype=torch.float32)
    model.config._attn_implementation = "flash_attention_2"  # as loaded with flash-attn on a GPU
    backend = TextBackend.from_model(
        model, padded.info, padded.preparer.impl.pad_id, torch.device("cpu"), torch.float32, mode
    )
    embedder = Embedder(padded.preparer, backend)
    prepared = embedder.prepare(TEXTS)
    got = embedder.embed_prepared(prepared).embeddings
    assert (got - padded.embed_prepared(prepared).embeddings).abs().max().item() <= ATOL
    assert model.config._attn_implementation == "flash_attention_2"  # never renamed
    assert embedder.describe()["attention_kernel"] == (
        KERNEL_FLASH_ATTN if mode == "packed" else "flash_attention_2"
    )
    expected = "flash_attn_varlen_func" if mode == "packed" else "flash_attn_func"
    assert flash_attn_stub and set(flash_attn_stub) == {expected}
    # The padded forward of a packed backend (`forward`) still works too.
    hidden, _ = backend.forward(prepared[:2])
    assert hidden.shape[0] == 2


# ------------------------------------------------------------------- 2. OOM cleanup
class _FakeBackend(Backend):
    """Pooled vectors = a fixed function of the ids; `fail(indices, attempt)` decides OOMs."""

    def __init__(self, fail, device: str = "cpu"):
        self.info = None
        self.device = torch.device(device)
        self.dtype = torch.float32
        self.fail = fail
        self.attempts: list[tuple[int, ...]] = []

    def forward(self, batch):
        raise NotImplementedError

    def stage(self, batch):
        return list(batch)

    def forward_staged(self, staged, pooling_mode):
        ids = tuple(item.input_ids[0] for item in staged)
        self.attempts.append(ids)
        activations = torch.ones(1024)  # what a real forward would hold when it fails
        self.alive = weakref.ref(activations)
        if self.fail(ids, self.attempts.count(ids)):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return torch.tensor([[float(i), 1.0, 2.0] for i in ids], device=self.device)


def _inputs(count: int) -> list[PreparedInput]:
    return [PreparedInput(input_ids=[i] * (i + 1)) for i in range(count)]


def _run(backend, prepared):
    return run_forwards(
        backend,
        prepared,
        3,
        "lasttoken",
        lambda pooled: truncate_and_normalize(pooled, None, True),
        TokenBudget(10_000),
    )


def test_oom_cleanup_runs_after_the_failed_forward_is_released(monkeypatch):
    backend = _FakeBackend(lambda ids, attempt: len(ids) > 1)
    seen: list[tuple[bool, bool]] = []

    def release(device):
        # (still inside an `except` block?, the failed forward's tensors still alive?)
        seen.append((sys.exc_info()[0] is not None, backend.alive() is not None))

    monkeypatch.setattr("qwen3_embed.runner.release_device_memory", release)
    vectors, failures = _run(backend, _inputs(4))
    assert seen and not failures
    assert all(not handling and not alive for handling, alive in seen), seen
    assert vectors[:, 0].tolist() == pytest.approx(
        [i / (i * i + 5) ** 0.5 for i in range(4)], abs=1e-6
    )


def test_an_input_that_ooms_alone_gets_one_retry_after_cleanup(monkeypatch):
    cleanups: list[int] = []
    monkeypatch.setattr(
        "qwen3_embed.runner.release_device_memory", lambda device: cleanups.append(1)
    )
    # Input 2 fails alone once (a fragmented allocator), then fits; input 3 never fits.
    backend = _FakeBackend(lambda ids, attempt: len(ids) > 1 or ids == (3,) or attempt == 1)
    vectors, failures = _run(backend, _inputs(4))
    assert set(failures) == {3}
    for position in (0, 1, 2):
        attempts = [ids for ids in backend.attempts if ids == (position,)]
        assert len(attempts) == 2  # failed once alone, then the retry succeeded
        assert vectors[position].abs().sum().item() > 0
    assert backend.attempts.count((3,)) == 2  # one retry, then reported too large
    assert vectors[3].abs().sum().item() == 0
    # A cleanup before every retry: after each OOM (the batch's, and each lone one's).
    ooms = sum(1 for ids in backend.attempts if len(ids) > 1) + 4 + 1
    assert len(cleanups) == ooms


# --------------------------------------------------------------- 3. no host syncs
class _HostTensorsIntoDeviceOps(TorchDispatchMode):
    """Records device ops fed a host tensor, and blocking host -> device copies (an index built
    from a Python list is copied so: on a GPU that copy waits for the stream). Copies asked with
    `non_blocking=True` (from pinned memory on a GPU) are allowed."""

    def __init__(self):
        super().__init__()
        self.offenders: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = [a for a in args if isinstance(a, torch.Tensor)]
        for value in list(args) + list(kwargs.values()):
            if isinstance(value, (list, tuple)):
                flat += [v for v in value if isinstance(v, torch.Tensor)]
        devices = {t.device.type for t in flat}
        name = str(func.overloadpacket)
        if "meta" in devices and "cpu" in devices:
            copy = name in ("aten._to_copy", "aten.copy_")
            if not copy or not kwargs.get("non_blocking", False):
                self.offenders.append(name)
        return func(*args, **kwargs)


def test_a_call_scatters_its_vectors_without_a_host_index(monkeypatch):
    # On the meta device every device -> host sync raises (`.item()`, `.tolist()`, `.cpu()`),
    # and the dispatch mode catches host tensors fed to device ops. A Python list as an index
    # is turned into a tensor below the dispatcher (on a GPU: built on the host and copied with
    # a blocking copy), so indexing with one is caught where it is written.
    list_indexed: list[str] = []
    setitem = torch.Tensor.__setitem__

    def spy(self, key, value):
        if isinstance(key, list):
            list_indexed.append(self.device.type)
        return setitem(self, key, value)

    monkeypatch.setattr(torch.Tensor, "__setitem__", spy)
    backend = _FakeBackend(lambda ids, attempt: False, device="meta")
    prepared = _inputs(40)
    budget = TokenBudget(60)  # several batches
    with _HostTensorsIntoDeviceOps() as mode:
        vectors, failures = run_forwards(
            backend, prepared, 3, "lasttoken", lambda pooled: pooled, budget
        )
    assert len(backend.attempts) > 3 and not failures
    assert vectors.device.type == "meta" and vectors.shape == (40, 3)
    assert mode.offenders == [] and list_indexed == []


def test_a_packed_call_runs_on_meta_through_the_varlen_kernel(tiny_text_model_dir, monkeypatch):
    # The whole packed forward (planner, staging, model, varlen attention, pooling, scatter) with
    # the weights on the meta device: it only completes if nothing syncs with the host.
    import varlen_standin

    varlen_standin.install(monkeypatch, "2.12+")
    embedder = Embedder.from_pretrained(tiny_text_model_dir, device="cpu", forward_mode="packed")
    backend = embedder.backend
    backend.model.to("meta")
    backend.device = torch.device("meta")
    prepared = embedder.prepare(TEXTS * 4)
    with _HostTensorsIntoDeviceOps() as mode:
        vectors, failures = run_forwards(
            backend,
            prepared,
            embedder.hidden_size,
            "lasttoken",
            lambda pooled: truncate_and_normalize(pooled, None, True),
            TokenBudget(40),
        )
    assert vectors.device.type == "meta" and not failures
    assert varlen_standin.CALLS  # the varlen kernel ran (the per-sequence one syncs per layer)
    assert mode.offenders == []


# ------------------------------------------------------ 6. straight to the device
def test_weights_load_straight_to_the_device_in_the_target_dtype(tiny_text_model_dir, monkeypatch):
    from transformers import AutoModel

    original = AutoModel.from_pretrained.__func__
    seen: list[dict] = []

    def spy(cls, *args, **kwargs):
        seen.append(kwargs)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModel, "from_pretrained", classmethod(spy))
    moved: list[torch.nn.Module] = []
    module_to = torch.nn.Module.to
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append(self) or module_to(self, *a, **k))  # fmt: skip
    embedder = Embedder.from_pretrained(tiny_text_model_dir, device="cpu", dtype="bfloat16")
    (kwargs,) = seen
    assert kwargs["device_map"] == torch.device("cpu") and kwargs["dtype"] == torch.bfloat16
    parameters = list(embedder.backend.model.parameters())
    assert {p.dtype for p in parameters} == {torch.bfloat16}
    assert {p.device.type for p in parameters} == {"cpu"}
    assert embedder.describe()["dtype"] == "bfloat16"


# ------------------------------------------------------------------- 7. VL staging
@pytest.mark.requires_vl
def test_vl_stage_does_the_host_work_before_the_forward(tiny_vl_embedder, monkeypatch):
    from PIL import Image

    from qwen3_embed.vl import pixels
    from qwen3_embed.vl.backend import StagedVLBatch

    embedder = tiny_vl_embedder
    image = Image.new("RGB", (64, 48), (200, 30, 90))
    prepared = embedder.prepare([{"text": "a photo", "image": image}, {"text": "words only"}])
    backend = embedder.backend
    reference = embedder.forward_pooled(prepared)
    staged = backend.stage(prepared)
    assert isinstance(staged, StagedVLBatch) and len(staged.media.images) == 1

    def no_host_work(*args, **kwargs):
        raise AssertionError("host work left for the forward")

    monkeypatch.setattr(pixels, "_split", no_host_work)
    monkeypatch.setattr(backend, "_collate_text", no_host_work)
    got = backend.forward_staged(staged, embedder.info.pooling_mode)
    assert (got - reference).abs().max().item() <= ATOL
