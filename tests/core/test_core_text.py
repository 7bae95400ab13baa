"""The text core against the official algorithm (model card code, sentence-transformers) and
its invariants. CPU, fp32, offline: tiny random Qwen3 checkpoints and the real MiniLM weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qwen3_embed import DimensionError, Embedder, InputError, InputTooLongError, Preparer

QUERIES = ["What is the capital of China?", "Explain gravity"]
DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other. It gives weight to physical objects.",
    "A dog on a beach",
]
TASK = "Given a web search query, retrieve relevant passages that answer the query"
ATOL = 1e-5


# --------------------------------------------------------------------------- reference code
def model_card_last_token_pool(
    last_hidden_states: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Verbatim from the Qwen3-Embedding model card."""
    left_padding = attention_mask[:, -1].sum() == attention_mask.shape[0]
    if left_padding:
        return last_hidden_states[:, -1]
    sequence_lengths = attention_mask.sum(dim=1) - 1
    batch_size = last_hidden_states.shape[0]
    return last_hidden_states[
        torch.arange(batch_size, device=last_hidden_states.device), sequence_lengths
    ]


def get_detailed_instruct(task_description: str, query: str) -> str:
    return f"Instruct: {task_description}\nQuery:{query}"


def model_card_embed(model_dir, texts: list[str], dim: int | None = None) -> torch.Tensor:
    """The model card's transformers usage, as published (plus the MRL slice before normalising)."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=8192, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**batch)
    embeddings = model_card_last_token_pool(outputs.last_hidden_state, batch["attention_mask"])
    if dim is not None:
        embeddings = embeddings[:, :dim]
    return F.normalize(embeddings, p=2, dim=1)


@pytest.fixture(scope="module")
def reference_inputs():
    return [get_detailed_instruct(TASK, q) for q in QUERIES] + DOCUMENTS


# --------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("dim", [None, 32, 48])
def test_parity_with_model_card_code(
    tiny_text_model_dir, tiny_text_embedder, reference_inputs, dim
):
    expected = model_card_embed(tiny_text_model_dir, reference_inputs, dim)
    queries = tiny_text_embedder.embed(QUERIES, instruction=TASK, dim=dim).embeddings
    documents = tiny_text_embedder.embed(DOCUMENTS, dim=dim).embeddings
    got = torch.cat([queries, documents])
    assert got.dtype == torch.float32
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= ATOL


@pytest.mark.parametrize("dim", [None, 32])
def test_parity_with_sentence_transformers(tiny_text_model_dir, tiny_text_embedder, dim):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    transformer = Transformer(str(tiny_text_model_dir), processor_kwargs={"padding_side": "left"})
    pooling = Pooling(tiny_text_embedder.hidden_size, pooling_mode="lasttoken")
    st_model = SentenceTransformer(modules=[transformer, pooling], device="cpu")
    query_prompt = f"Instruct: {TASK}\nQuery:"
    expected_queries = st_model.encode(
        QUERIES,
        prompt=query_prompt,
        convert_to_tensor=True,
        normalize_embeddings=True,
        truncate_dim=dim,
    )
    expected_docs = st_model.encode(
        DOCUMENTS, convert_to_tensor=True, normalize_embeddings=True, truncate_dim=dim
    )
    got_queries = tiny_text_embedder.embed(QUERIES, instruction=TASK, dim=dim).embeddings
    got_docs = tiny_text_embedder.embed(DOCUMENTS, dim=dim).embeddings
    assert (got_queries - expected_queries.cpu()).abs().max().item() <= ATOL
    assert (got_docs - expected_docs.cpu()).abs().max().item() <= ATOL


def test_query_prompt_has_no_space_after_query(tiny_text_embedder):
    prepared = tiny_text_embedder.prepare(["hello"], instruction="Find it")[0]
    text = tiny_text_embedder.preparer.impl.tokenizer.decode(prepared.input_ids)
    assert text == "Instruct: Find it\nQuery:hello<|endoftext|>"


# ---------------------------------------------------------------------------------- EOS rule
def _eos_id(preparer: Preparer) -> int:
    return preparer.impl.tokenizer.convert_tokens_to_ids("<|endoftext|>")


@pytest.mark.parametrize("fixture", ["tiny_text_model_dir", "tiny_text_model_noeos_dir"])
def test_every_sequence_ends_in_exactly_one_eos(request, fixture):
    preparer = Preparer.from_pretrained(request.getfixturevalue(fixture))
    eos = _eos_id(preparer)
    for item in preparer.prepare(DOCUMENTS + ["x"]):
        assert item.input_ids[-1] == eos
        assert item.input_ids.count(eos) == 1


@pytest.mark.parametrize("fixture", ["tiny_text_model_dir", "tiny_text_model_noeos_dir"])
def test_truncation_keeps_eos_last(request, fixture):
    preparer = Preparer.from_pretrained(request.getfixturevalue(fixture), max_length=7)
    eos = _eos_id(preparer)
    (item,) = preparer.prepare([" ".join(["word"] * 50)])
    assert item.num_tokens == 7
    assert item.input_ids[-1] == eos


def test_tokenizers_with_and_without_postprocessor_agree(
    tiny_text_model_dir, tiny_text_model_noeos_dir
):
    with_pp = Preparer.from_pretrained(tiny_text_model_dir)
    without_pp = Preparer.from_pretrained(tiny_text_model_noeos_dir)
    assert with_pp.impl.tokenizer_appends_eos and not without_pp.impl.tokenizer_appends_eos
    for a, b in zip(
        with_pp.prepare(DOCUMENTS, instruction=TASK),
        without_pp.prepare(DOCUMENTS, instruction=TASK),
        strict=True,
    ):
        assert a.input_ids == b.input_ids


def test_no_truncation_refuses_long_input(tiny_text_model_dir):
    embedder = Embedder.from_pretrained(tiny_text_model_dir, max_length=8)
    with pytest.raises(InputTooLongError, match=r"input\[1\].*max_length=8"):
        embedder.embed(["short", " ".join(["word"] * 40)], truncate=False)
    assert embedder.embed([" ".join(["word"] * 40)]).sequence_lengths == [8]


# -------------------------------------------------------------------------------- invariants
def test_batched_equals_alone(tiny_text_embedder):
    texts = DOCUMENTS + [
        "short",
        "a somewhat longer text that needs more tokens than the others do",
    ]
    batched = tiny_text_embedder.embed(texts).embeddings
    for index, text in enumerate(texts):
        alone = tiny_text_embedder.embed([text]).embeddings[0]
        assert (batched[index] - alone).abs().max().item() <= ATOL


def test_batch_budget_does_not_change_vectors(tiny_text_model_dir, tiny_text_embedder):
    texts = [("word " * n).strip() for n in (1, 3, 9, 27, 5, 2)]
    big_batches = tiny_text_embedder.embed(texts).embeddings
    one_per_batch = (
        Embedder.from_pretrained(tiny_text_model_dir, max_batch_tokens=1).embed(texts).embeddings
    )
    assert (big_batches - one_per_batch).abs().max().item() <= ATOL


def test_left_and_right_padding_agree(tiny_text_embedder):
    prepared = tiny_text_embedder.prepare(DOCUMENTS)
    backend = tiny_text_embedder.backend
    assert not backend.left_padding  # the default: right padding, causal attention, no mask
    right = tiny_text_embedder.forward_pooled(prepared)
    backend.left_padding = True  # the official layout: left padding with an attention mask
    try:
        left = tiny_text_embedder.forward_pooled(prepared)
    finally:
        backend.left_padding = False
    assert (left - right).abs().max().item() <= ATOL


def test_norms_are_one_and_results_in_input_order(tiny_text_embedder):
    texts = ["b " * 30, "a", "c " * 10]
    out = tiny_text_embedder.embed(texts)
    assert torch.allclose(out.embeddings.norm(dim=1), torch.ones(3), atol=1e-6)
    assert out.sequence_lengths == [p.num_tokens for p in tiny_text_embedder.prepare(texts)]
    assert out.batch_size == 3
    assert out.sequence_lengths[1] < out.sequence_lengths[2] < out.sequence_lengths[0]


@pytest.mark.parametrize("dim", [32, 40, 63])
def test_mrl_truncates_before_normalising(tiny_text_embedder, dim):
    prepared = tiny_text_embedder.prepare(DOCUMENTS)
    full_unnormalised = tiny_text_embedder.forward_pooled(prepared).float()
    expected = F.normalize(full_unnormalised[:, :dim], p=2, dim=1)
    got = tiny_text_embedder.embed(DOCUMENTS, dim=dim).embeddings
    assert got.shape == (len(DOCUMENTS), dim)
    assert (got - expected).abs().max().item() <= ATOL


def test_deterministic(tiny_text_embedder):
    first = tiny_text_embedder.embed(DOCUMENTS).embeddings
    second = tiny_text_embedder.embed(DOCUMENTS).embeddings
    assert torch.equal(first, second)


def test_per_item_instruction_matches_call_instruction(tiny_text_embedder):
    per_item = tiny_text_embedder.embed(
        [{"text": QUERIES[0], "instruction": TASK}, DOCUMENTS[0]]
    ).embeddings
    assert (
        per_item[0] - tiny_text_embedder.embed([QUERIES[0]], instruction=TASK).embeddings[0]
    ).abs().max() <= ATOL
    assert (
        per_item[1] - tiny_text_embedder.embed([DOCUMENTS[0]]).embeddings[0]
    ).abs().max() <= ATOL


# ------------------------------------------------------------------------------- bad input
def test_empty_list_gives_empty_result(tiny_text_embedder):
    out = tiny_text_embedder.embed([], dim=32)
    assert out.embeddings.shape == (0, 32)
    assert out.sequence_lengths == []


@pytest.mark.parametrize(
    ("bad", "rule"),
    [
        ("", "empty"),
        ("   ", "empty"),
        (None, "None"),
        (5, "must be a string"),
        ({"txt": "a"}, "unknown key"),
        ("x \ud800 y", "lone surrogate U\\+D800 at character 2"),
        ({"text": "ok", "instruction": "find \udfff"}, "instruction is not valid Unicode"),
    ],
)
def test_bad_items_name_their_index(tiny_text_embedder, bad, rule):
    with pytest.raises(InputError, match=rf"input\[1\]: .*{rule}"):
        tiny_text_embedder.embed(["fine", bad, "also fine"])


def test_bad_input_is_refused_before_device_work(tiny_text_embedder, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("device work started for a bad input")

    monkeypatch.setattr(tiny_text_embedder.backend, "forward", fail)
    with pytest.raises(InputError):
        tiny_text_embedder.embed(["fine", ""])
    with pytest.raises(DimensionError):
        tiny_text_embedder.embed(["fine"], dim=8)


def test_prepare_each_reports_bad_items_and_keeps_good_ones(tiny_text_embedder):
    results = tiny_text_embedder.prepare_each(["good", None, "also good", ""])
    assert [type(r).__name__ for r in results] == [
        "PreparedInput",
        "InputError",
        "PreparedInput",
        "InputError",
    ]
    assert results[1].index == 1 and results[3].index == 3


def test_single_string_is_refused(tiny_text_embedder):
    with pytest.raises(InputError, match="list"):
        tiny_text_embedder.embed("not a list")


@pytest.mark.parametrize("dim", [0, 31, 65, 10_000, -1, 32.5, True])
def test_dim_out_of_range_names_valid_range(tiny_text_embedder, dim):
    with pytest.raises(ValueError, match=r"\[32, 64\]"):
        tiny_text_embedder.embed(["a"], dim=dim)


def test_bad_instruction(tiny_text_embedder):
    with pytest.raises(InputError, match="instruction"):
        tiny_text_embedder.embed(["a"], instruction="  ")


def test_lone_surrogates_fail_alone(tiny_text_embedder):
    """Text that cannot be encoded as UTF-8 is one item's InputError, never the tokenizer's
    TypeError for the whole call; the other items are prepared."""
    results = tiny_text_embedder.prepare_each(["good", "x \ud800 y", "also good"])
    assert [type(r).__name__ for r in results] == ["PreparedInput", "InputError", "PreparedInput"]
    assert results[1].index == 1 and results[1].code == "invalid_input"
    assert "\ud800" not in str(results[1])  # the reason itself is valid text (an _errors row)
    for bad in ({"instruction": "x \ud800"}, {"prompt": "\ud800: "}):
        with pytest.raises(InputError, match="not valid Unicode"):
            tiny_text_embedder.embed(["a"], **bad)


# ------------------------------------------------------------------ a real model (MiniLM)
def test_minilm_parity_with_sentence_transformers(minilm_dir):
    from sentence_transformers import SentenceTransformer

    texts = DOCUMENTS + ["A man is eating food.", "A man is eating a piece of bread."]
    expected = SentenceTransformer(str(minilm_dir), device="cpu").encode(
        texts, convert_to_tensor=True
    )
    embedder = Embedder.from_pretrained(minilm_dir, device="cpu")
    assert (
        embedder.info.pooling_mode == "mean"
        and embedder.info.normalize
        and not embedder.info.is_qwen
    )
    assert embedder.max_length == 256
    got = embedder.embed(texts).embeddings
    assert (got - expected.cpu()).abs().max().item() <= ATOL


def test_minilm_paraphrases_are_closer_than_unrelated_texts(minilm_dir):
    embedder = Embedder.from_pretrained(minilm_dir, device="cpu")
    vectors = embedder.embed(
        [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The new movie is awesome.",
            "The new film is so great.",
        ]
    ).embeddings
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3
    assert similarity[2, 3] > similarity[1, 3] + 0.3
