"""The core on a real CUDA device: marked `gpu`, so CPU CI skips them (saying why) and a GPU
machine runs them with `python -m pytest -m gpu`. The tiny random checkpoints keep them to
seconds. (tests/core/test_gpu_path.py covers the GPU code paths on a CPU with a stand-in
varlen kernel; these run the real kernels.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qwen3_embed import Embedder

pytestmark = pytest.mark.gpu

TEXTS = [
    "a short one",
    "A somewhat longer sentence, so that the batch needs padding or packing.",
    "x " * 40,
    "日本語のテキストも一つ",
]


def test_cuda_float32_equals_the_cpu(tiny_text_model_dir, tiny_text_embedder):
    """fp32 on the GPU gives the CPU's vectors (the same weights, the padded path on both)."""
    gpu = Embedder.from_pretrained(
        tiny_text_model_dir, device="cuda", dtype="float32", forward_mode="padded"
    )
    ours = gpu.embed(TEXTS).embeddings
    expected = tiny_text_embedder.embed(TEXTS).embeddings
    assert ours.device.type == "cpu" and ours.dtype == torch.float32  # the documented output
    assert (ours - expected).abs().max() <= 1e-4
    assert torch.allclose(ours.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5)
    assert gpu.embed(TEXTS).sequence_lengths == tiny_text_embedder.embed(TEXTS).sequence_lengths


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_packed_equals_padded_and_batched_equals_alone(tiny_text_model_dir, dtype):
    """In half precision the packed (varlen) forward and the padded one give the same vectors up
    to the dtype's rounding, and so does each text embedded alone."""
    packed = Embedder.from_pretrained(
        tiny_text_model_dir, device="cuda", dtype=dtype, forward_mode="packed"
    )
    padded = Embedder.from_pretrained(
        tiny_text_model_dir, device="cuda", dtype=dtype, forward_mode="padded"
    )
    together = packed.embed(TEXTS).embeddings
    alone = torch.cat([packed.embed([text]).embeddings for text in TEXTS])
    reference = padded.embed(TEXTS).embeddings
    for other in (alone, reference):
        cosine = F.cosine_similarity(together, other, dim=1)
        assert (cosine >= 0.999).all(), cosine
