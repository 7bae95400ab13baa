"""The chunking rule (`qwen3_embed.chunking`): bounds, offsets, coverage, overlap and parity with
`embed` of the slice, on documents from 1 to 20k tokens, Unicode and whitespace stretches."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwen3_embed import Embedder, InputError, Preparer
from qwen3_embed.chunking import chunk_prepared, chunk_text, prompt_overhead

INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
PIECES = [
    "The quick brown fox jumps over the lazy dog. ",
    "Numbers 12345 and 6.78 follow; ",
    "北京是中国的首都。",
    "東京は日本の首都です。",
    "emoji 😀👍🏽 and a family 👨\u200d👩\u200d👧 ",
    "cafe\u0301 nai\u0308ve ",  # combining marks
    "\n\n",
    "\n",
    "          ",
    "\t\t",
    "Zürich, Ελλάδα, Россия. ",
    "a" * 40,
    "?! ",
]


def _document(seed: int, pieces: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(PIECES) for _ in range(pieces))


def assert_chunk_rules(
    preparer: Preparer, text: str, chunk_tokens: int, overlap: int, instruction=None
) -> list:
    chunks = chunk_prepared(preparer, text, chunk_tokens, overlap, instruction)
    assert chunks, "a valid document has at least one chunk"
    covered = [False] * len(text)
    for position, item in enumerate(chunks):
        chunk = item.chunk
        assert chunk.index == position
        assert 0 <= chunk.char_start < chunk.char_end <= len(text)
        piece = text[chunk.char_start : chunk.char_end]
        # The slice, prepared as `embed` prepares it, is the chunk's own input, within the bound.
        (again,) = preparer.prepare([piece], instruction, truncate=False, max_length=1 << 30)
        assert again.input_ids == item.prepared.input_ids
        assert chunk.num_tokens == again.num_tokens <= chunk_tokens
        if len(chunks) > 1:
            assert not piece[0].isspace() and not piece[-1].isspace(), "edges are trimmed"
        for index in range(chunk.char_start, chunk.char_end):
            covered[index] = True
        if position:
            previous = chunks[position - 1].chunk
            assert previous.char_start < chunk.char_start, "chunks move forward"
    missed = [index for index, char in enumerate(text) if not covered[index] and not char.isspace()]
    assert not missed, f"non-space characters in no chunk: {missed[:10]}"
    return chunks


@pytest.fixture(scope="module")
def preparer(tiny_text_embedder) -> Preparer:
    return tiny_text_embedder.preparer


def test_short_document_is_one_chunk_the_document_itself(tiny_text_embedder):
    text = "  A short document, with spaces at its edges.  "
    (chunk,) = tiny_text_embedder.chunk(text, 64)
    assert (chunk.index, chunk.char_start, chunk.char_end) == (0, 0, len(text))
    assert chunk.num_tokens == tiny_text_embedder.prepare([text])[0].num_tokens


def test_one_token_document(preparer):
    (item,) = chunk_prepared(preparer, "a", 2)
    assert item.chunk.num_tokens == 2  # "a" + <|endoftext|>


@pytest.mark.parametrize("tokens", [1, 7, 300, 2500, 20000])
def test_documents_up_to_20k_tokens(preparer, tokens):
    tokenizer = preparer.impl.tokenizer
    text = _document(tokens, max(1, tokens // 3))
    while len(tokenizer(text, add_special_tokens=False)["input_ids"]) < tokens:
        text += _document(len(text), 50)
    chunks = assert_chunk_rules(preparer, text, 256, 32)
    if len(tokenizer(text)["input_ids"]) <= 256:
        assert len(chunks) == 1


@pytest.mark.parametrize("overlap", [0, 1, 16])
def test_neighbours_share_overlap_tokens(preparer, overlap):
    text = "word " * 2000
    chunks = assert_chunk_rules(preparer, text, 100, overlap)
    tokenizer = preparer.impl.tokenizer
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)[
        "offset_mapping"
    ]
    # Each token's non-space span (whitespace-only tokens are trimmed off chunks: not counted).
    spans = []
    for start, end in offsets:
        piece = text[start:end]
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            spans.append((start + lead, start + len(piece.rstrip())))
    assert len(spans) > 1000

    def inside(span, chunk):
        return chunk.char_start <= span[0] and span[1] <= chunk.char_end

    for left, right in zip(chunks, chunks[1:], strict=False):
        shared = [s for s in spans if inside(s, left.chunk) and inside(s, right.chunk)]
        # `overlap` tokens, extended back to the start of the first one's word ("word" is a few
        # tokens of this tokenizer), never fewer.
        assert overlap <= len(shared) <= (overlap + 3 if overlap else 0), (left.chunk, right.chunk)


def test_prefers_paragraph_then_sentence_then_whitespace(preparer):
    sentence = "This sentence is about nothing at all really. "
    paragraph = sentence * 2 + "\n\n"
    chunks = chunk_text(preparer, paragraph * 20, 160)
    text = paragraph * 20
    # Every cut lands right before a paragraph break or a sentence end: no word is split.
    for chunk in chunks[:-1]:
        assert text[chunk.char_end - 1] == "."
    paragraphs = sum(
        text[chunk.char_end : chunk.char_end + 3].count("\n") == 2 for chunk in chunks[:-1]
    )
    assert paragraphs >= len(chunks) // 2


def test_no_word_split_when_whitespace_exists(preparer):
    rng = random.Random(3)
    words = [
        "".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 9))) for _ in range(3000)
    ]
    text = " ".join(words)
    for chunk in chunk_text(preparer, text, 80, 5):
        assert chunk.char_start == 0 or text[chunk.char_start - 1] == " "
        assert chunk.char_end == len(text) or text[chunk.char_end] == " "


def test_whitespace_only_stretches_and_cjk_without_spaces(preparer):
    text = "start " + " " * 5000 + "\n" * 300 + "北京是中国的首都" * 400 + "\t" * 2000 + " end"
    chunks = assert_chunk_rules(preparer, text, 50, 4)
    assert all(text[c.chunk.char_start : c.chunk.char_end].strip() for c in chunks)


def test_emoji_and_combining_marks_never_cut_inside(preparer):
    text = ("e\u0301" * 50 + "👨\u200d👩\u200d👧" * 30 + "👍🏽" * 40) * 5
    for chunk in assert_chunk_rules(preparer, text, 24, 2):
        if chunk.chunk.char_end < len(text):
            following = text[chunk.chunk.char_end]
            assert following not in "\u0301\u200d", "a cut before a combining mark or joiner"


def test_instruction_counts_in_the_bound(preparer):
    text = _document(11, 400)
    overhead = prompt_overhead(preparer, INSTRUCTION)
    assert overhead > prompt_overhead(preparer) == 1  # the prompt, and <|endoftext|>
    assert_chunk_rules(preparer, text, overhead + 40, 5, INSTRUCTION)


def test_tokenizer_without_eos_post_processor(tiny_text_model_noeos_dir):
    preparer = Preparer.from_pretrained(tiny_text_model_noeos_dir)
    assert prompt_overhead(preparer) == 1  # the core appends <|endoftext|> itself
    assert_chunk_rules(preparer, _document(5, 300), 64, 8)


def test_wordpiece_tokenizer(minilm_dir):
    """A BERT tokenizer drops whitespace and lower-cases: offsets still tile the original text."""
    preparer = Preparer.from_pretrained(minilm_dir)
    assert_chunk_rules(preparer, _document(8, 300), 40, 4)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    text=st.text(
        alphabet=st.sampled_from(list("ab .,!?。\n\t 北京😀\u0301\u200d👍🏽Zé")) | st.characters(),
        min_size=1,
        max_size=600,
    ).filter(lambda value: value.strip()),
    chunk_tokens=st.integers(8, 80),
    overlap=st.integers(0, 3),
)
def test_rules_hold_for_any_text(preparer, text, chunk_tokens, overlap):
    assert_chunk_rules(preparer, text, chunk_tokens, overlap)


def test_slice_parity_with_embed(tiny_text_embedder):
    text = _document(21, 90)
    for instruction in (None, INSTRUCTION):
        chunks = tiny_text_embedder.chunk(text, 120, 10, instruction)
        assert len(chunks) > 3
        slices = [text[c.char_start : c.char_end] for c in chunks]
        together = tiny_text_embedder.embed(slices, instruction).embeddings
        for chunk, piece, vector in zip(chunks, slices, together, strict=True):
            alone = tiny_text_embedder.embed([piece], instruction).embeddings[0]
            assert torch.allclose(vector, alone, atol=1e-5), chunk


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chunk_tokens": 0}, "chunk_tokens must be an integer >= 1"),
        ({"chunk_tokens": 10, "overlap": -1}, "chunk_overlap must be an integer >= 0"),
        ({"chunk_tokens": 10**6}, "more than max_length"),
        ({"chunk_tokens": 5, "overlap": 4}, "not more than chunk_overlap=4"),
    ],
)
def test_settings_refused_with_the_rule(preparer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        chunk_text(preparer, "some text", **kwargs)


@pytest.mark.parametrize("text", [None, "", "   \n\t", 5])
def test_invalid_documents_are_input_errors(preparer, text):
    with pytest.raises(InputError):
        chunk_text(preparer, text, 16)


def test_vl_model_refused(tiny_vl_model_dir):
    pytest.importorskip("qwen_vl_utils")
    preparer = Preparer.from_pretrained(tiny_vl_model_dir)
    with pytest.raises(ValueError, match="chunking splits text documents"):
        chunk_text(preparer, "text", 16)


def test_embedder_is_accepted_as_model(tiny_text_embedder):
    assert isinstance(tiny_text_embedder, Embedder)
    assert chunk_text(tiny_text_embedder, "x y z " * 100, 20) == tiny_text_embedder.chunk(
        "x y z " * 100, 20
    )
