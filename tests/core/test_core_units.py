"""Small pieces of the core on their own: batch planning and pooling."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qwen3_embed.batching import padding_ratio, plan_batches
from qwen3_embed.pooling import last_token_pool, mean_pool, pool, truncate_and_normalize


@given(st.lists(st.integers(1, 300), max_size=60), st.integers(1, 2000))
def test_plan_covers_every_index_once_within_budget(lengths, budget):
    batches = plan_batches(lengths, budget)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        padded = max(lengths[i] for i in batch) * len(batch)
        assert padded <= budget or len(batch) == 1


def test_plan_respects_max_batch_size():
    assert [len(b) for b in plan_batches([5] * 10, 10_000, max_batch_size=4)] == [4, 4, 2]


def test_sorted_plans_waste_little_padding():
    generator = torch.Generator().manual_seed(0)
    lengths = [
        int(x) for x in torch.empty(2000).log_normal_(4.0, 1.0, generator=generator).clamp(4, 2048)
    ]
    assert padding_ratio(lengths, plan_batches(lengths, 16384)) < 1.1


def test_last_token_pool_either_padding_side():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert torch.equal(last_token_pool(hidden, left), hidden[[0, 1], [3, 3]])
    assert torch.equal(last_token_pool(hidden, right), hidden[[0, 1], [1, 3]])


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert mean_pool(hidden, torch.tensor([[1, 1, 0]])).item() == 2.0


def test_unknown_pooling_mode_lists_valid_ones():
    with pytest.raises(ValueError, match="valid values are: lasttoken, mean, cls"):
        pool(torch.zeros(1, 1, 1), torch.ones(1, 1), "max")


def test_truncate_then_normalise():
    vectors = torch.tensor([[3.0, 4.0, 100.0]])
    assert torch.allclose(truncate_and_normalize(vectors, 2), torch.tensor([[0.6, 0.8]]))


# ---------------------------------------------------------------------- data URIs
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 299, 300, 301])
def test_data_uri_at_the_byte_limit_is_accepted_and_one_over_refused(size):
    """Both the core's media loading and the server use this one decoder; the core used to
    count base64 padding as payload and refuse data up to 2 bytes under its limit."""
    import base64

    from qwen3_embed.data_uri import DataUriTooLargeError, decode_data_uri, decoded_size

    data = bytes(range(256)) * 2
    data = data[:size]
    payload = base64.b64encode(data).decode()
    assert decoded_size(payload) == size
    assert decode_data_uri(f"data:image/png;base64,{payload}", max_bytes=size) == data
    with pytest.raises(DataUriTooLargeError):
        decode_data_uri(f"data:image/png;base64,{payload}", max_bytes=size - 1)


def test_data_uri_base64_marker_is_case_insensitive_and_malformed_uris_are_input_errors():
    from qwen3_embed.data_uri import decode_data_uri
    from qwen3_embed.errors import InputError

    assert decode_data_uri("DATA:image/png;BASE64,aGk=", max_bytes=10) == b"hi"
    for bad in ("data:image/png,aGk=", "data:image/png;base64", "data:;base64,a$k="):
        with pytest.raises(InputError):
            decode_data_uri(bad, max_bytes=10)
