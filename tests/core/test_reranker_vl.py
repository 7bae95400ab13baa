"""The VL reranker's invariants and rules (CPU, fp32, a tiny random Qwen3-VL checkpoint).
Parity with the official `qwen3_vl_reranker.py` is in test_reranker_parity.py."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from qwen3_embed import Embedder, InputError, InputTooLongError, Reranker, UnsupportedModelError
from qwen3_embed.rerank.vl import truncate_keeping_special

pytestmark = pytest.mark.requires_vl


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(2)
    return [
        Image.fromarray(rng.integers(0, 256, (64 + 8 * i, 96, 3), dtype=np.uint8)) for i in range(3)
    ]


def test_batched_equals_alone(tiny_vl_reranker, images):
    pairs = [
        ("a red car", {"image": images[0]}),
        ({"image": images[1]}, "a text document that is a little longer than the others"),
        ("pages", {"image": images[:2], "text": "two pages"}),
        ("short", "doc"),
    ]
    batched = tiny_vl_reranker.score_pairs(pairs)
    alone = np.array([tiny_vl_reranker.score_pairs([pair])[0] for pair in pairs])
    assert batched.dtype == np.float32 and np.all((batched > 0) & (batched < 1))
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_prompt_layout(tiny_vl_reranker, images):
    [prepared] = tiny_vl_reranker.prepare_pairs(
        [({"text": "q"}, {"image": images[0], "text": "d"})], instruction="Find it."
    )
    text = tiny_vl_reranker.preparer.impl.processor.tokenizer.decode(prepared.input_ids)
    assert text.startswith("<|im_start|>system\nJudge whether the Document meets")
    assert "<|im_start|>user\n<Instruct>: Find it.<Query>:q\n<Document>:<|vision_start|>" in text
    assert text.endswith("<|vision_end|>d<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        (("q", {}), "document: the item is empty"),
        (({"text": "q", "instruction": "x"}, "d"), "one instruction per call"),
        (("q", {"image": "/no/such/file.png"}), "document: image"),
        (("q", {"audio": "x"}), "unknown key"),
        (("q",), "two items"),
    ],
)
def test_a_bad_pair_fails_alone(tiny_vl_reranker, pair, message):
    results = tiny_vl_reranker.prepare_pairs([("ok", "fine"), pair])
    assert isinstance(results[1], InputError) and results[1].index == 1
    assert message in str(results[1])
    assert not isinstance(results[0], InputError)


def test_truncate_false_refuses_over_long_pairs(tiny_vl_reranker_dir):
    reranker = Reranker.from_pretrained(tiny_vl_reranker_dir, device="cpu", max_length=40)
    [error] = reranker.prepare_pairs([("word " * 50, "d")], truncate=False)
    assert isinstance(error, InputTooLongError)
    [prepared] = reranker.prepare_pairs([("word " * 50, "d")])
    assert prepared.num_tokens == 45


def test_truncation_rule_keeps_every_special_token():
    special = frozenset({1, 2})
    ids = [1, 5, 6, 2, 7, 8, 9, 1]
    assert truncate_keeping_special(ids, 8, special) == ids
    assert truncate_keeping_special(ids, 6, special) == [1, 5, 6, 2, 7, 1]
    assert truncate_keeping_special(ids, 4, special) == [1, 5, 2, 1]


def test_vl_reranker_given_to_embedder_is_refused(tiny_vl_reranker_dir):
    with pytest.raises(UnsupportedModelError, match="qwen3_embed.Reranker"):
        Embedder.from_pretrained(tiny_vl_reranker_dir, device="cpu")


def test_properties(tiny_vl_reranker):
    assert tiny_vl_reranker.family == "vl"
    assert tiny_vl_reranker.max_length == 10240
    assert tiny_vl_reranker.default_instruction == (
        "Given a search query, retrieve relevant candidates that answer the query."
    )
