"""Parity of `Reranker` with the two official reference implementations, run from checkouts
outside this repo (see tests/official_code.py): max |Δscore| <= 1e-5 in fp32, on tiny random
checkpoints of both architectures.

- text: the model card's "Reranker Model / Transformers usage" block (QwenLM/Qwen3-Embedding
  README.md), executed as written on the tiny checkpoint: its `format_instruction`,
  `process_inputs` (one left-padded batch, `longest_first` truncation) and `compute_logits`;
- VL: `Qwen3VLReranker.process` of QwenLM/Qwen3-VL-Embedding `src/models/qwen3_vl_reranker.py`
  (one pair per forward). Under transformers 5.x its `tokenize()` hands the processor's
  `mm_token_type_ids` on as Python lists, which `Qwen3VLModel.get_rope_index` cannot index with a
  tensor once media are present, and it truncates `input_ids` without them (a truncated pair
  with media then fails on a shape mismatch; transformers 4.x had no such output). The fixture
  wraps that method to derive the token types from the ids it receives, as the processor does
  (image pad 1, video pad 2, else 0) — a compatibility shim, not part of the algorithm.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from official_code import official_vl_reranker_module, run_text_reranker_block

from qwen3_embed import Reranker

ATOL = 1e-5

QUERIES = ["What is the capital of China?", "Explain gravity", "dogs", "a"]
DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other. It gives weight to "
    "physical objects and is responsible for the movement of planets around the sun.",
    "A dog on a beach.",
    "Les embeddings multilingues: 中文 日本語 한국어",
]


# ------------------------------------------------------------------------------------------ text
@pytest.fixture(scope="module")
def official_text(tiny_text_reranker_dir):
    return run_text_reranker_block(tiny_text_reranker_dir)


def official_text_scores(official, pairs, instruction=None, max_length=None) -> np.ndarray:
    """The block's own pipeline for one batch of pairs (its `max_length` global swapped for the
    over-long case, as a user of the block would edit it)."""
    saved = official["max_length"]
    if max_length is not None:
        official["max_length"] = max_length
    try:
        texts = [official["format_instruction"](instruction, q, d) for q, d in pairs]
        return np.asarray(official["compute_logits"](official["process_inputs"](texts)))
    finally:
        official["max_length"] = saved


def test_text_single_pairs(tiny_text_reranker, official_text):
    for query, document in zip(QUERIES, DOCUMENTS, strict=True):
        ours = tiny_text_reranker.score_pairs([(query, document)])
        theirs = official_text_scores(official_text, [(query, document)])
        assert np.abs(ours - theirs).max() <= ATOL


def test_text_batch_of_mixed_lengths(tiny_text_reranker, official_text):
    pairs = [(q, d) for q in QUERIES for d in DOCUMENTS] + [("long " * 40, "x"), ("y", "z " * 90)]
    ours = tiny_text_reranker.score_pairs(pairs)
    theirs = official_text_scores(official_text, pairs)  # one left-padded batch
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= ATOL


def test_text_block_example_scores(tiny_text_reranker, official_text):
    """The block's own example, as it printed it when it ran."""
    pairs = list(zip(official_text["queries"], official_text["documents"], strict=True))
    ours = tiny_text_reranker.score_pairs(pairs, official_text["task"])
    assert np.abs(ours - np.asarray(official_text["scores"])).max() <= ATOL


def test_text_custom_instructions(tiny_text_reranker, official_text):
    pairs = list(zip(QUERIES, DOCUMENTS, strict=True))
    for instruction in ("Retrieve semantically similar text", "Find the passage in French: ça?"):
        ours = tiny_text_reranker.score_pairs(pairs, instruction)
        theirs = official_text_scores(official_text, pairs, instruction)
        assert np.abs(ours - theirs).max() <= ATOL


def test_text_over_long_pairs_are_truncated_like_the_official(
    tiny_text_reranker_dir, official_text
):
    max_length = 80
    reranker = Reranker.from_pretrained(tiny_text_reranker_dir, device="cpu", max_length=max_length)
    pairs = [
        ("short query", "a very long document " * 60),
        ("a very long query " * 60, "short document"),
        ("fits", "fine"),
        ("medium " * 12, "medium document " * 10),
    ]
    ours = reranker.score_pairs(pairs)
    theirs = official_text_scores(official_text, pairs, max_length=max_length)
    assert np.abs(ours - theirs).max() <= ATOL
    lengths = [item.num_tokens for item in reranker.prepare_pairs(pairs)]
    assert max(lengths) == max_length  # the limit holds prompt and pair together


def test_text_untied_head(tmp_path):
    """A checkpoint with its own LM head (4B / 8B) against the block run on it."""
    from qwen3_embed.testing import make_tiny_model

    directory = make_tiny_model(
        tmp_path / "untied-reranker", task="rerank", tie_word_embeddings=False, seed=3
    )
    official = run_text_reranker_block(directory)
    pairs = list(zip(QUERIES, DOCUMENTS, strict=True))
    ours = Reranker.from_pretrained(directory, device="cpu").score_pairs(pairs)
    assert np.abs(ours - official_text_scores(official, pairs)).max() <= ATOL


# -------------------------------------------------------------------------------------------- VL
@pytest.fixture(scope="module")
def official_vl(tiny_vl_reranker_dir):
    pytest.importorskip("qwen_vl_utils")
    pytest.importorskip("av")
    from transformers import Qwen3VLModel

    module = official_vl_reranker_module()
    original = Qwen3VLModel.get_rope_index

    def get_rope_index(self, input_ids, mm_token_type_ids=None, *args, **kwargs):
        # The transformers 5.x shim (module docstring): the token types the processor gives
        # (image pad -> 1, video pad -> 2, else 0), as a tensor, for the ids the model received.
        types = torch.zeros_like(input_ids, dtype=torch.int)
        types[input_ids == self.config.image_token_id] = 1
        types[input_ids == self.config.video_token_id] = 2
        return original(self, input_ids, types, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Qwen3VLModel, "get_rope_index", get_rope_index)
        yield module.Qwen3VLReranker(
            model_name_or_path=str(tiny_vl_reranker_dir), dtype=torch.float32
        )


@pytest.fixture(scope="module")
def vl_media(tmp_path_factory):
    from media_support import smooth_clip, write_mp4
    from PIL import Image

    directory = tmp_path_factory.mktemp("rerank-media")
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 256, (100, 150, 3), dtype=np.uint8))
    photo.save(directory / "photo.png")
    write_mp4(directory / "clip.mp4", smooth_clip(), fps=4)
    pages = [Image.fromarray(rng.integers(0, 256, (90, 64, 3), dtype=np.uint8)) for _ in range(3)]
    frames = [Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)) for _ in range(5)]
    return {
        "photo": photo,
        "photo_path": str(directory / "photo.png"),
        "clip_path": str(directory / "clip.mp4"),
        "pages": pages,
        "frames": frames,
    }


def official_vl_scores(official, query: dict, documents: list[dict], **call) -> np.ndarray:
    from media_support import official_video_reader

    with official_video_reader():
        return np.asarray(official.process({"query": query, "documents": documents, **call}))


def test_vl_text_pairs(tiny_vl_reranker, official_vl):
    query = {"text": QUERIES[0]}
    documents = [{"text": document} for document in DOCUMENTS]
    ours = tiny_vl_reranker.score(query, documents)
    assert np.abs(ours - official_vl_scores(official_vl, query, documents)).max() <= ATOL
    assert (
        np.abs(tiny_vl_reranker.score(QUERIES[0], DOCUMENTS) - ours).max() == 0
    )  # str == {"text"}


def test_vl_image_multi_image_video_and_mixed_pairs(tiny_vl_reranker, official_vl, vl_media):
    query = {"text": "a photo of a red car"}
    documents = [
        {"image": vl_media["photo"]},  # image
        {"image": vl_media["photo_path"]},  # the same image, from a path
        {"image": vl_media["pages"], "text": "three pages"},  # multi-image + text
        {"video": vl_media["clip_path"]},  # video file
        {"video": vl_media["frames"]},  # video as frames
        {"text": "plain text"},
        {"image": vl_media["photo"], "video": vl_media["frames"], "text": "all at once"},
    ]
    ours = tiny_vl_reranker.score(query, documents)  # one batched call
    theirs = official_vl_scores(official_vl, query, documents)  # one pair per forward
    assert np.abs(ours - theirs).max() <= ATOL


def test_vl_media_queries(tiny_vl_reranker, official_vl, vl_media):
    for query in ({"image": vl_media["photo"]}, {"video": vl_media["clip_path"], "text": "clip"}):
        documents = [{"text": "a car"}, {"image": vl_media["pages"][0]}]
        ours = tiny_vl_reranker.score(query, documents)
        assert np.abs(ours - official_vl_scores(official_vl, query, documents)).max() <= ATOL


def test_vl_custom_instruction(tiny_vl_reranker, official_vl, vl_media):
    instruction = "Retrieve images that match the query"
    query = {"text": "dogs"}
    documents = [{"image": vl_media["photo"]}, {"text": "A dog on a beach."}]
    ours = tiny_vl_reranker.score(query, documents, instruction=instruction)
    theirs = official_vl_scores(official_vl, query, documents, instruction=instruction)
    assert np.abs(ours - theirs).max() <= ATOL


def test_vl_truncation_keeps_special_and_vision_tokens(tiny_vl_reranker_dir, official_vl, vl_media):
    max_length = 60
    reranker = Reranker.from_pretrained(tiny_vl_reranker_dir, device="cpu", max_length=max_length)
    query = {"text": "query words " * 30}
    documents = [{"image": vl_media["photo"], "text": "document words " * 40}, {"text": "short"}]
    ours = reranker.score(query, documents)
    official_vl.max_length = max_length
    try:
        theirs = official_vl_scores(official_vl, query, documents)
    finally:
        official_vl.max_length = 10240
    assert np.abs(ours - theirs).max() <= ATOL
    prepared = reranker.prepare_pairs([(query, documents[0])])[0]
    assert prepared.num_tokens == max_length + 5  # the official bound: max_length + the last 5
