"""Chunking long documents: the one rule the batch job, `embed_dataset` and notebooks share.

`chunk_text(model, text, chunk_tokens, overlap)` splits a document into `Chunk`s (index,
`char_start`, `char_end`, `num_tokens`) such that:

- `text[char_start:char_end]` is the chunk, and embedding that slice as a document
  (`embed([text[char_start:char_end]], instruction)`) is exactly what the chunk's vector is;
- **`num_tokens <= chunk_tokens`, where `num_tokens` counts the sequence the model sees for the
  slice**: the instruction's prompt (when one is given), the slice's own tokens and the special
  tokens the tokenizer adds (Qwen3's `<|endoftext|>`), i.e. `len(prepare([slice])[0].input_ids)`.
  Each chunk is re-tokenised that way before it is accepted, so the bound holds exactly, not
  approximately;
- every non-space character of the document lies in at least one chunk (chunks tile the text;
  only whitespace at a chunk's edges is trimmed off);
- neighbouring chunks share `overlap` tokens of the document's own tokenisation: the last
  `overlap` tokens of one chunk start the next (tokens that are only whitespace do not count, as
  they are trimmed off a chunk's edges), extended back to the start of the word the first of
  them lies in (at most `_WORD_TOKENS` more tokens), so that no chunk opens mid-word;
- a document whose whole sequence fits in `chunk_tokens` is one chunk: the document itself,
  untrimmed (so its vector is the document's vector);
- a cut falls on a token boundary of the document's tokenisation (never inside a character, nor
  before a combining mark or a joiner), preferring, in the last quarter of the budget, a
  paragraph break, then a sentence end or line break, then any whitespace, then the last
  possible token.

Text models only: a VL model's chunks would be chat prompts with media, which this rule does not
describe.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import InputError
from .prompts import check_text

if TYPE_CHECKING:
    from .contracts import PreparedInput
    from .preparer import Preparer

# Ends of sentences, Latin and CJK; a CJK one needs no following space to count.
SENTENCE_ENDS = frozenset(".!?;…。！？；")
CJK_SENTENCE_ENDS = frozenset("。！？；…")
# A cut before one of these would separate it from the character it modifies.
JOINERS = frozenset("\u200c\u200d\ufe0e\ufe0f")
# Counting a slice never truncates it: the real count decides whether it fits.
_UNBOUNDED = 1 << 40
_WHITESPACE = re.compile(r"\s+")
_MERGE_SLACK = 8
_WORD_TOKENS = 8  # how far an overlap may extend back to reach a word's start
_OVERHEADS: weakref.WeakKeyDictionary[Any, dict[str | None, int]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Chunk:
    """One chunk of a document: `text[char_start:char_end]`, `num_tokens` as embedded."""

    index: int
    char_start: int
    char_end: int
    num_tokens: int


@dataclass(frozen=True)
class PreparedChunk:
    """A chunk and its prepared input (the token ids `embed` would use for its slice)."""

    chunk: Chunk
    prepared: PreparedInput


def chunk_text(
    model: Any,
    text: str,
    chunk_tokens: int,
    overlap: int = 0,
    instruction: str | None = None,
) -> list[Chunk]:
    """The chunks of `text` (see the module's rules). `model` is an `Embedder` or a `Preparer`
    (the tokenizer alone is enough). Raises `InputError` for a text the model would refuse
    (None, empty, blank) and ValueError for settings that cannot work (see `check_settings`)."""
    return [
        item.chunk
        for item in chunk_prepared(_preparer(model), text, chunk_tokens, overlap, instruction)
    ]


def prompt_overhead(preparer: Preparer, instruction: str | None = None) -> int:
    """Tokens a sequence holds besides its text's own: the instruction's prompt and the special
    tokens (1 for a Qwen3 document: `<|endoftext|>`). Counted once per preparer and instruction
    (a batch job chunks millions of documents with the same two)."""
    known = _OVERHEADS.setdefault(preparer, {})
    if instruction not in known:
        tokenizer = _tokenizer(preparer)
        prepared = _prepare(preparer, "a", instruction)
        known[instruction] = prepared.num_tokens - len(
            tokenizer("a", add_special_tokens=False)["input_ids"]
        )
    return known[instruction]


def check_settings(
    preparer: Preparer, chunk_tokens: int, overlap: int, instruction: str | None = None
) -> None:
    """ValueError naming the rule when chunks of `chunk_tokens` with `overlap` cannot be made for
    this model: not a text model, a bound above `max_length`, or no room left for text once the
    prompt and the overlap are counted."""
    if preparer.info.family != "text":
        raise ValueError(
            f"chunking splits text documents; {preparer.source} is a {preparer.info.family} model"
        )
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be an integer >= 1, got {chunk_tokens!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
        raise ValueError(f"chunk_overlap must be an integer >= 0, got {overlap!r}")
    if chunk_tokens > preparer.max_length:
        raise ValueError(
            f"chunk_tokens={chunk_tokens} is more than max_length={preparer.max_length}: a chunk "
            "would be truncated; lower chunk_tokens or raise max_length"
        )
    overhead = prompt_overhead(preparer, instruction)
    room = chunk_tokens - overhead
    if room <= overlap:
        raise ValueError(
            f"chunk_tokens={chunk_tokens} leaves {room} token(s) of text once the "
            f"{overhead} token(s) of prompt and special tokens are counted, not more than "
            f"chunk_overlap={overlap}: raise chunk_tokens or lower chunk_overlap"
        )


def chunk_prepared(
    preparer: Preparer,
    text: str,
    chunk_tokens: int,
    overlap: int = 0,
    instruction: str | None = None,
) -> list[PreparedChunk]:
    """`chunk_text`, each chunk with its prepared input (the batch job embeds those directly, so
    a chunk is tokenised once for its check and its vector alike)."""
    check_text(text)
    check_settings(preparer, chunk_tokens, overlap, instruction)
    encoded = _tokenizer(preparer)(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = [tuple(pair) for pair in encoded["offset_mapping"]]
    overhead = prompt_overhead(preparer, instruction)
    # Merges where the prompt meets the text move a count by a token or two, never more: a
    # document far over the bound is not worth tokenising whole once more.
    if len(offsets) + overhead <= chunk_tokens + _MERGE_SLACK:
        whole = _prepare(preparer, text, instruction)
        if whole.num_tokens <= chunk_tokens:
            return [PreparedChunk(Chunk(0, 0, len(text), whole.num_tokens), whole)]
    return _Splitter(preparer, text, offsets, chunk_tokens, overlap, instruction).run()


class _Splitter:
    """The greedy cut of one document over its token offsets (see the module's rules)."""

    def __init__(
        self,
        preparer: Preparer,
        text: str,
        offsets: list[tuple[int, int]],
        chunk_tokens: int,
        overlap: int,
        instruction: str | None,
    ):
        self.preparer, self.text, self.offsets = preparer, text, offsets
        self.limit, self.overlap, self.instruction = chunk_tokens, overlap, instruction
        self.budget = chunk_tokens - prompt_overhead(preparer, instruction)  # text tokens
        # Whitespace runs (start, end, line breaks), found once: a cut's score looks them up.
        self.runs = [
            (match.start(), match.end(), match.group().count("\n"))
            for match in _WHITESPACE.finditer(text)
        ]
        self.run_starts = [run[0] for run in self.runs]

    def cut_position(self, token: int) -> int:
        """Where a cut before `token` falls in the text (the end of the text past the last)."""
        return len(self.text) if token >= len(self.offsets) else self.offsets[token][0]

    def score(self, token: int) -> int:
        """How good a cut before `token` is: 3 paragraph, 2 sentence end or line break,
        1 whitespace, 0 any other clean boundary, -1 not a boundary at all."""
        if token >= len(self.offsets):
            return 3
        start = self.offsets[token][0]
        if token > 0 and start < self.offsets[token - 1][1]:
            return -1  # inside a character (byte-level pieces of one code point)
        if start >= len(self.text) or start == 0:
            return -1
        following = self.text[start]
        if unicodedata.combining(following) or following in JOINERS:
            return -1
        run = self._run_around(start)
        if run is not None:
            a, _, newlines = run
            if newlines >= 2:
                return 3
            if newlines == 1 or (a > 0 and self.text[a - 1] in SENTENCE_ENDS):
                return 2
            return 1
        return 2 if self.text[start - 1] in CJK_SENTENCE_ENDS else 0

    def _run_around(self, position: int) -> tuple[int, int, int] | None:
        """The whitespace run that touches `position` (ends at it or holds it), if any."""
        at = bisect.bisect_right(self.run_starts, position) - 1
        if at >= 0 and self.runs[at][0] <= position <= self.runs[at][1]:
            return self.runs[at]
        return None

    def best_cut(self, first: int, last: int) -> int:
        """The best token to cut before, in [first, last]: the highest score in the last quarter
        of the budget, latest on ties; else the latest clean boundary at all; else `last`."""
        window = max(first, last - max(1, self.budget // 4))
        best, best_score = None, -1
        for token in range(last, window - 1, -1):
            value = self.score(token)
            if value > best_score:
                best, best_score = token, value
                if value == 3:
                    break
        if best is not None and best_score >= 0:
            return best
        for token in range(window - 1, first - 1, -1):
            if self.score(token) >= 0:
                return token
        return last

    def trimmed(self, start: int, end: int) -> tuple[int, int]:
        while start < end and self.text[start].isspace():
            start += 1
        while end > start and self.text[end - 1].isspace():
            end -= 1
        return start, end

    def run(self) -> list[PreparedChunk]:
        count = len(self.offsets)
        chunks: list[PreparedChunk] = []
        token, start_char = 0, 0  # the chunk's first token, and where its text starts
        while True:
            # Whitespace-only tokens at the start are trimmed off: the budget goes to the text.
            while token < count - 1 and not self.token_text(token).strip():
                token += 1
            last = min(count, token + self.budget)  # cut before this token at the latest
            earliest = min(last, token + self.overlap + 1)  # so that the next chunk moves on
            while True:
                cut = last if last >= count else self.best_cut(earliest, last)
                char_start, char_end = self.trimmed(start_char, self.cut_position(cut))
                if char_start == char_end:  # whitespace only: nothing to cover
                    prepared = None
                    break
                prepared = _prepare(self.preparer, self.text[char_start:char_end], self.instruction)
                excess = prepared.num_tokens - self.limit
                if excess <= 0 or cut <= token + 1:
                    break
                # Re-tokenised, the slice came out longer than counted (merges at its edges):
                # cut earlier and check again.
                last = max(token + 1, cut - excess)
                earliest = min(earliest, last)
            # A chunk inside the previous one covers nothing new (pieces of one character share
            # its offsets, so a step of one token can stay on the same characters).
            if prepared is not None and (not chunks or char_end > chunks[-1].chunk.char_end):
                chunk = Chunk(len(chunks), char_start, char_end, prepared.num_tokens)
                chunks.append(PreparedChunk(chunk, prepared))
            if cut >= count:
                return chunks
            token = max(token + 1, self.word_start(token + 1, self.overlap_start(cut)))
            # The next chunk starts at a later character than this one did.
            while token < cut and self.cut_position(token) <= char_start:
                token += 1
            start_char = self.cut_position(token)

    def token_text(self, token: int) -> str:
        start, end = self.offsets[token]
        return self.text[start:end]

    def word_start(self, first: int, token: int) -> int:
        """`token`, or an earlier one (not before `first`) where the word `token` lies in begins,
        so an overlap does not open a chunk mid-word; `token` itself when no whitespace is near."""
        if not self.overlap:
            return token
        for candidate in range(token, max(first, token - _WORD_TOKENS) - 1, -1):
            if self.score(candidate) >= 1:
                return candidate
        return token

    def overlap_start(self, cut: int) -> int:
        """The token `overlap` tokens before `cut`, counting only tokens with a non-space
        character (a whitespace-only token is trimmed off a chunk's edge, so it cannot be
        shared)."""
        token, shared = cut, 0
        while shared < self.overlap and token > 0:
            token -= 1
            if self.token_text(token).strip():
                shared += 1
        return token


def _preparer(model: Any) -> Preparer:
    return getattr(model, "preparer", model)


def _tokenizer(preparer: Preparer) -> Any:
    tokenizer = getattr(preparer.impl, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(f"chunking needs a text model's tokenizer; {preparer.source} has none")
    return tokenizer


def _prepare(preparer: Preparer, text: str, instruction: str | None) -> PreparedInput:
    """The slice as the core embeds it (prompt and special tokens included), never truncated."""
    (result,) = preparer.prepare_each([text], instruction, False, _UNBOUNDED)
    if isinstance(result, InputError):
        raise result
    return result
