"""The rerank and score routes' work, between the HTTP request and the reranker deployment.

    body -> RerankRequest / ScoreRequest -> (query, document) pairs of core items
         -> the same limits, media and SSRF rules as /v1/embeddings (`inputs`)
         -> RerankJob -> the reranker's replica (continuous batching across requests)
         -> results sorted by relevance_score (rerank) / data in input order (score)

Items go through `inputs.split_input` / `find_media` / `load_media` as one list (query first),
whose errors name `input[k]`; `PairForm.translate` names them as the client wrote them
(`query`, `documents[2].image`, `text_1[0]`). `EmbeddingsIngress` (deployments/ingress.py)
holds the routes and calls `handle` here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ApiError
from .inputs import find_media, load_media, split_input
from .rerank_protocol import RerankJob
from .rerank_schemas import RerankRequest, ScoreRequest

if TYPE_CHECKING:
    from .config import MediaPolicy, RequestLimits
    from .media_fetch import SafeMediaFetcher

RERANK_ITEM_KEYS = ("text", "image", "video", "fps", "max_frames")
_PARTS = {"text": "text", "image_url": "image", "video_url": "video"}
_INPUT_PARAM = re.compile(r"input\[(\d+)\]")


def _bad(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, f"{param}: {message}", code=code, param=param)


@dataclass(frozen=True)
class PairForm:
    """A request's items (each distinct query or document once), the pairs as indices into
    them, and how the API names each item."""

    items: tuple[Any, ...]
    params: tuple[str, ...]  # API name of items[k]
    pairs: tuple[tuple[int, int], ...]  # (query item, document item)
    documents: tuple[Any, ...]  # the documents as sent (echoed by return_documents)
    document_params: tuple[str, ...]  # API name of pair i (its document, or its pair)

    def translate(self, error: ApiError) -> ApiError:
        """An error about `input[k]...` as one about `params[k]...`."""

        def rename(text: str) -> str:
            return _INPUT_PARAM.sub(
                lambda match: (
                    self.params[int(match.group(1))]
                    if int(match.group(1)) < len(self.params)
                    else match.group(0)
                ),
                text,
            )

        param = rename(error.param) if error.param else error.param
        if param == "input":
            param = self.params[1] if len(self.params) > 1 else self.params[0]
        return ApiError(
            error.status, rename(error.message), code=error.code, param=param, headers=error.headers
        )

    def job(
        self,
        loaded: Sequence[Any],
        instruction: str | None,
        truncate: bool,
        max_length: int | None = None,
    ) -> RerankJob:
        return RerankJob(
            tuple((loaded[q], loaded[d]) for q, d in self.pairs),
            instruction,
            truncate,
            self.document_params,
            max_length,
        )


def content_parts(value: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """vLLM's `{"content": [parts]}` -> one item per part."""
    if set(value) != {"content"} or not isinstance(value["content"], list):
        raise _bad(where, 'an object here must be {"content": [parts]}', "invalid_type")
    items = []
    for index, part in enumerate(value["content"]):
        at = f"{where}.content[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _PARTS:
            raise _bad(at, f"a part must have type one of {', '.join(_PARTS)}", "invalid_type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad(f"{at}.text", "must be a string", "invalid_type")
            items.append({"text": text})
            continue
        source = part.get(kind)
        url = source.get("url") if isinstance(source, dict) else source
        if not isinstance(url, str):
            raise _bad(f"{at}.{kind}.url", "must be a string (data URI or URL)", "invalid_type")
        items.append({_PARTS[kind]: url})
    return items


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Several parts as one item (a query given as content parts)."""
    merged: dict[str, list[Any]] = {}
    for part in parts:
        for key, value in part.items():
            merged.setdefault(key, []).append(value)
    return {key: values[0] if len(values) == 1 else values for key, values in merged.items()}


def _check_item(item: Any, where: str) -> Any:
    if isinstance(item, dict):
        unknown = sorted(str(key) for key in item if key not in RERANK_ITEM_KEYS)
        if unknown:
            hint = (
                "; give the instruction once, as the request's `instruction`"
                if "instruction" in unknown
                else ""
            )
            raise _bad(
                where,
                f"unknown key(s) {unknown}; valid keys are: {', '.join(RERANK_ITEM_KEYS)}{hint}",
                "invalid_input",
            )
    elif not isinstance(item, str):
        raise _bad(where, "must be a string or an object with keys "
                   f"{', '.join(RERANK_ITEM_KEYS)}", "invalid_input")  # fmt: skip
    return item


def _as_list(value: Any, where: str) -> tuple[list[Any], list[str]]:
    """A side of the request as items and their API names."""
    if isinstance(value, str):
        return [value], [where]
    if isinstance(value, dict):
        if "content" in value:
            parts = content_parts(value, where)
            return parts, [f"{where}.content[{i}]" for i in range(len(parts))]
        return [_check_item(value, where)], [where]
    items = [_check_item(item, f"{where}[{i}]") for i, item in enumerate(value)]
    return items, [f"{where}[{i}]" for i in range(len(items))]


def rerank_form(request: RerankRequest) -> PairForm:
    query: Any = request.query
    if isinstance(query, dict) and "content" in query:
        query = _merge(content_parts(query, "query"))
    else:
        query = _check_item(query, "query")
    documents, names = _as_list(request.documents, "documents")
    if not documents:
        raise _bad("documents", "must not be empty", "empty_input")
    return PairForm(
        (query, *documents),
        ("query", *names),
        tuple((0, 1 + i) for i in range(len(documents))),
        tuple(documents),
        tuple(names),
    )


def score_form(request: ScoreRequest) -> PairForm:
    """vLLM's rule: one query against N documents, or N queries against N documents (pair i =
    (text_1[i], text_2[i]))."""
    first_name, first = _one_of(request, "text_1", "queries")
    second_name, second = _one_of(request, "text_2", "documents")
    queries, query_names = _as_list(first, first_name)
    documents, document_names = _as_list(second, second_name)
    for values, name in ((queries, first_name), (documents, second_name)):
        if not values:
            raise _bad(name, "must not be empty", "empty_input")
    if len(queries) == 1:
        pairs = tuple((0, 1 + i) for i in range(len(documents)))
        params = tuple(document_names)
    elif len(queries) == len(documents):
        pairs = tuple((i, len(queries) + i) for i in range(len(documents)))
        params = tuple(f"({q}, {d})" for q, d in zip(query_names, document_names, strict=True))
    else:
        raise _bad(
            first_name,
            f"has {len(queries)} items and {second_name} {len(documents)}: give one {first_name} "
            f"for all of {second_name}, or as many as {second_name}",
        )
    return PairForm(
        (*queries, *documents),
        (*query_names, *document_names),
        pairs,
        tuple(documents),
        params,
    )


def _one_of(request: ScoreRequest, old: str, new: str) -> tuple[str, Any]:
    given = [name for name in (old, new) if getattr(request, name) is not None]
    if len(given) != 1:
        raise ApiError(
            400,
            f"give exactly one of {old} and {new} (vLLM's older and newer names of the same field)",
            code="missing_required_parameter" if not given else "invalid_value",
            param=old,
        )
    return given[0], getattr(request, given[0])


def check_truncation(request: RerankRequest | ScoreRequest) -> tuple[bool, int | None]:
    """(truncate, max tokens per pair or None for the model's max_length). vLLM's
    `truncate_prompt_tokens` N caps each pair at N tokens, its prompt's prefix and suffix
    included (the official rule then truncates the pair, longest first); -1: max_length."""
    limit = request.truncate_prompt_tokens
    if limit is None or limit == -1:
        return request.truncate, None
    if limit < 1:
        raise _bad("truncate_prompt_tokens", f"must be -1 or a positive count, got {limit}")
    return True, limit


async def load_pairs(
    form: PairForm,
    instruction: str | None,
    truncate: tuple[bool, int | None],
    family: str,
    model: str,
    limits: RequestLimits,
    media: MediaPolicy,
    fetcher: SafeMediaFetcher | None,
) -> RerankJob:
    """The form's items checked against the request limits and media rules (as
    /v1/embeddings' inputs are), media loaded, as the job for the reranker."""
    if len(form.pairs) > limits.max_inputs_per_request:
        raise ApiError(
            400,
            f"the request has {len(form.pairs)} pairs, more than the limit of "
            f"{limits.max_inputs_per_request} per request",
            code="too_many_inputs",
            param=form.params[-1].split("[")[0],
        )
    try:
        # Every item counts once, however many pairs it is in (a query against N documents).
        items = split_input(
            list(form.items),
            instruction,
            limits.model_copy(update={"max_inputs_per_request": len(form.items)}),
        )
        slots = find_media(items, family, model, media)
        loaded = await load_media(items, slots, media, fetcher)
    except ApiError as error:
        raise form.translate(error) from None
    return form.job(loaded, instruction, *truncate)
