"""The text reranker's invariants and rules (CPU, fp32, tiny random checkpoints). Parity with the
official code is in test_reranker_parity.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qwen3_embed import (
    Embedder,
    InputError,
    InputTooLongError,
    LoadOptions,
    Reranker,
    RerankPreparer,
    UnsupportedModelError,
)
from qwen3_embed.rerank.formats import TEXT_PREFIX, TEXT_SUFFIX

PAIRS = [
    ("What is the capital of China?", "The capital of China is Beijing."),
    ("Explain gravity", "Gravity is a force that attracts two bodies towards each other. " * 3),
    ("a", "b"),
    ("dogs", "A dog on a beach."),
]


def test_scores_are_float32_probabilities_in_input_order(tiny_text_reranker):
    scores = tiny_text_reranker.score_pairs(PAIRS)
    assert scores.dtype == np.float32 and scores.shape == (len(PAIRS),)
    assert np.all((scores > 0) & (scores < 1))
    alone = [tiny_text_reranker.score_pairs([pair])[0] for pair in PAIRS]
    np.testing.assert_allclose(scores, alone, atol=1e-6)  # batched == alone


def test_score_is_score_pairs_with_one_query(tiny_text_reranker):
    documents = [document for _, document in PAIRS]
    ours = tiny_text_reranker.score("dogs", documents)
    np.testing.assert_array_equal(
        ours, tiny_text_reranker.score_pairs([("dogs", d) for d in documents])
    )
    assert tiny_text_reranker.score("dogs", []).shape == (0,)


def test_score_equals_softmax_of_full_logits(tiny_text_reranker, tiny_text_reranker_dir):
    """The two-row head gives what the full LM head's yes/no logits give."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_text_reranker_dir, dtype=torch.float32)
    prepared = tiny_text_reranker.prepare_pairs(PAIRS[:1])
    with torch.no_grad():
        logits = model(torch.tensor([prepared[0].input_ids])).logits[0, -1]
    preparer = tiny_text_reranker.preparer
    expected = torch.softmax(logits[[preparer.no_id, preparer.yes_id]], dim=0)[1].item()
    assert abs(tiny_text_reranker.score_prepared(prepared)[0] - expected) <= 1e-6


def test_prompt_layout(tiny_text_reranker):
    preparer = tiny_text_reranker.preparer
    tokenizer = preparer.impl.tokenizer
    [prepared] = tiny_text_reranker.prepare_pairs([("q", "d")], instruction="Find it")
    assert tokenizer.decode(prepared.input_ids) == (
        TEXT_PREFIX + "<Instruct>: Find it\n<Query>: q\n<Document>: d" + TEXT_SUFFIX
    )


def test_default_and_custom_instruction(tiny_text_reranker):
    default = tiny_text_reranker.score_pairs(PAIRS[:2])
    explicit = tiny_text_reranker.score_pairs(PAIRS[:2], tiny_text_reranker.default_instruction)
    np.testing.assert_array_equal(default, explicit)
    other = tiny_text_reranker.score_pairs(PAIRS[:2], "Find a passage about physics")
    assert not np.allclose(default, other)


def test_truncation_shares_max_length_with_the_prompt(tiny_text_reranker_dir):
    reranker = Reranker.from_pretrained(tiny_text_reranker_dir, device="cpu", max_length=64)
    long_pair = ("query", "word " * 500)
    [prepared] = reranker.prepare_pairs([long_pair])
    assert prepared.num_tokens == 64
    assert prepared.input_ids[-len(reranker.preparer.impl.suffix_ids) :] == (
        reranker.preparer.impl.suffix_ids
    )
    [error] = reranker.prepare_pairs([long_pair], truncate=False)
    assert isinstance(error, InputTooLongError) and error.index == 0
    with pytest.raises(InputTooLongError, match="input\\[0\\]"):
        reranker.score_pairs([long_pair], truncate=False)


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        (("q",), "two items"),
        ("just a string", "two items"),
        (("q", ""), "document is empty"),
        (("", "d"), "query is empty"),
        (("q", None), "document is None"),
        (("q", {"image": "x.png"}), "unknown key"),
        (("q", 3), "document must be a string"),
    ],
)
def test_a_bad_pair_fails_alone(tiny_text_reranker, pair, message):
    results = tiny_text_reranker.prepare_pairs([("ok", "fine"), pair, ("ok", "fine")])
    assert isinstance(results[1], InputError) and results[1].index == 1
    assert message in str(results[1])
    assert not isinstance(results[0], InputError) and not isinstance(results[2], InputError)
    with pytest.raises(InputError, match="input\\[1\\]"):
        tiny_text_reranker.score_pairs([("ok", "fine"), pair])


def test_call_level_errors(tiny_text_reranker):
    with pytest.raises(InputError, match="not one pair"):
        tiny_text_reranker.score_pairs(("q", "d"))
    with pytest.raises(InputError, match="documents must be a list"):
        tiny_text_reranker.score("q", "a single document")
    with pytest.raises(InputError, match="instruction must not be empty"):
        tiny_text_reranker.score("q", ["d"], instruction="  ")


def test_documents_as_objects(tiny_text_reranker):
    np.testing.assert_array_equal(
        tiny_text_reranker.score("q", [{"text": "a dog"}]), tiny_text_reranker.score("q", ["a dog"])
    )


def test_untied_head_is_read_from_lm_head(tmp_path):
    """4B / 8B keep their own LM head: its rows, not the input embeddings', make the score."""
    from transformers import AutoModelForCausalLM

    from qwen3_embed.testing import make_tiny_model

    directory = make_tiny_model(
        tmp_path / "untied-reranker", task="rerank", tie_word_embeddings=False
    )
    reranker = Reranker.from_pretrained(directory, device="cpu")
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    [prepared] = reranker.prepare_pairs(PAIRS[:1])
    with torch.no_grad():
        logits = model(torch.tensor([prepared.input_ids])).logits[0, -1]
    preparer = reranker.preparer
    expected = torch.sigmoid(logits[preparer.yes_id] - logits[preparer.no_id]).item()
    assert abs(reranker.score_prepared([prepared])[0] - expected) <= 1e-6


def test_preparer_alone_matches_the_reranker(tiny_text_reranker, tiny_text_reranker_dir):
    preparer = RerankPreparer.from_options(LoadOptions(model=str(tiny_text_reranker_dir)))
    ours = preparer.prepare_pairs(PAIRS)
    theirs = tiny_text_reranker.prepare_pairs(PAIRS)
    assert [item.input_ids for item in ours] == [item.input_ids for item in theirs]
    np.testing.assert_array_equal(
        tiny_text_reranker.score_prepared(ours), tiny_text_reranker.score_pairs(PAIRS)
    )


def test_small_token_budget_splits_batches_without_changing_scores(tiny_text_reranker_dir):
    small = Reranker.from_pretrained(tiny_text_reranker_dir, device="cpu", max_batch_tokens=64)
    big = Reranker.from_pretrained(tiny_text_reranker_dir, device="cpu")
    np.testing.assert_allclose(small.score_pairs(PAIRS), big.score_pairs(PAIRS), atol=1e-6)


def test_packed_forward_gives_the_padded_scores(tiny_text_reranker_dir):
    packed = Reranker.from_pretrained(tiny_text_reranker_dir, device="cpu", forward_mode="packed")
    padded = Reranker.from_pretrained(tiny_text_reranker_dir, device="cpu", forward_mode="padded")
    assert packed.forward_mode == "packed"
    np.testing.assert_allclose(packed.score_pairs(PAIRS), padded.score_pairs(PAIRS), atol=1e-5)


def test_oom_alone_is_collected_per_pair(tiny_text_reranker, monkeypatch):
    prepared = tiny_text_reranker.prepare_pairs(PAIRS)
    longest = max(item.num_tokens for item in prepared)
    original = tiny_text_reranker.backend.forward_staged

    def forward_staged(staged, pooling_mode):
        if int(staged.attention_mask.shape[1]) >= longest:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(staged, pooling_mode)

    monkeypatch.setattr(tiny_text_reranker.backend, "forward_staged", forward_staged)
    output = tiny_text_reranker.rerank_prepared(prepared, errors="collect")
    failed = [i for i, item in enumerate(prepared) if item.num_tokens == longest]
    assert sorted(output.failures) == failed
    assert np.isnan(output.scores[failed]).all()
    monkeypatch.undo()
    good = [i for i in range(len(PAIRS)) if i not in failed]
    np.testing.assert_allclose(
        output.scores[good],
        tiny_text_reranker.score_prepared([prepared[i] for i in good]),
        atol=1e-6,
    )


# --------------------------------------------------------------------------- task detection
def test_reranker_checkpoint_given_to_embedder_is_refused(tiny_text_reranker_dir):
    with pytest.raises(UnsupportedModelError, match="load it with qwen3_embed.Reranker"):
        Embedder.from_pretrained(tiny_text_reranker_dir, device="cpu")


def test_reranker_checkpoint_given_to_the_embedding_preparer_is_refused(tiny_text_reranker_dir):
    """The batch job's CPU workers load a `Preparer` alone: it refuses a reranker too."""
    from qwen3_embed import Preparer

    with pytest.raises(UnsupportedModelError, match="load it with qwen3_embed.Reranker"):
        Preparer.from_pretrained(tiny_text_reranker_dir)


def test_checkpoint_without_safetensors_is_refused(tmp_path):
    from safetensors.torch import load_file

    from qwen3_embed.testing import make_tiny_model

    directory = make_tiny_model(tmp_path / "bin-reranker", task="rerank")
    state = load_file(directory / "model.safetensors")
    torch.save(state, directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()
    with pytest.raises(UnsupportedModelError, match="safetensors"):
        Reranker.from_pretrained(directory, device="cpu")


def test_embedding_checkpoint_given_to_reranker_is_refused(tmp_path):
    from qwen3_embed.testing import make_tiny_model

    directory = make_tiny_model(tmp_path / "plain-checkpoint", task="rerank")
    # The embedding releases' sentence-transformers file, which rerankers do not ship.
    (directory / "modules.json").write_text(
        '[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]'
    )
    with pytest.raises(UnsupportedModelError, match="load it with qwen3_embed.Embedder"):
        Reranker.from_pretrained(directory, device="cpu")
    # task= says what the files cannot: accepted
    Reranker.from_pretrained(directory, device="cpu", task="rerank")
    with pytest.raises(UnsupportedModelError, match="task='embed' is for qwen3_embed.Embedder"):
        Reranker.from_pretrained(directory, device="cpu", task="embed")


def test_undecided_checkpoint_is_what_the_class_says(tmp_path):
    from qwen3_embed.testing import make_tiny_model

    directory = make_tiny_model(tmp_path / "plain", task="rerank")
    assert Reranker.from_pretrained(directory, device="cpu").family == "text"


def test_embedding_tokenizer_without_yes_no_is_refused(tiny_text_model_dir):
    with pytest.raises(UnsupportedModelError, match="no 'yes' token|task="):
        Reranker.from_pretrained(tiny_text_model_dir, device="cpu", task="rerank")


def test_task_from_hub_ids():
    from qwen3_embed.registry import lookup_task

    assert lookup_task("Qwen/Qwen3-Reranker-0.6B") == "rerank"
    assert lookup_task("qwen/qwen3-vl-reranker-2b") == "rerank"
    assert lookup_task("Qwen/Qwen3-Embedding-8B") == "embed"
    assert lookup_task("someone/else") is None


def test_invalid_task_value(tiny_text_reranker_dir):
    with pytest.raises(ValueError, match="valid values are: embed, rerank"):
        Reranker.from_pretrained(tiny_text_reranker_dir, device="cpu", task="classify")


def test_properties(tiny_text_reranker):
    assert tiny_text_reranker.family == "text"
    assert tiny_text_reranker.max_length == 8192
    assert tiny_text_reranker.default_instruction == (
        "Given a web search query, retrieve relevant passages that answer the query"
    )
    assert tiny_text_reranker.info.hidden_size == 64
    assert "Reranker(" in repr(tiny_text_reranker)
