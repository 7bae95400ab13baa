"""The VL preparer (qwen3_embed/vl/preparer.py): `prepare_each` keeps the good items.
The test media (`media`) are a session fixture of tests/core/conftest.py."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("qwen_vl_utils")
av = pytest.importorskip("av")
from qwen3_embed import (  # noqa: E402
    InputError,
    PreparedInput,
)


def test_prepare_each_keeps_the_good_items(tiny_vl_embedder, media):
    items = [
        "good text",
        {"image": media.photo},
        {"image": b"corrupt"},
        {"text": "good", "image": media.photo},
    ]
    results = tiny_vl_embedder.prepare_each(items)
    assert [type(result) for result in results] == [
        PreparedInput,
        PreparedInput,
        InputError,
        PreparedInput,
    ]
    assert results[2].index == 2 and results[2].reason.startswith("image: could not decode")
    good = [result for result in results if isinstance(result, PreparedInput)]
    expected = tiny_vl_embedder.embed([items[0], items[1], items[3]]).embeddings
    assert torch.equal(tiny_vl_embedder.embed_prepared(good).embeddings, expected)
