"""How the HTTP API answers the core's errors: one table from a core error's `code` to the
response's status and OpenAI-style `error.code`.

The core keeps the codes (`qwen3_embed.errors`, `qwen3_embed.vocabulary.InputErrorCode`); what
they mean in HTTP is this layer's business, so the table lives here, and neither the ingress nor
the model deployments compare code strings or spell statuses of their own for them. Imports
nothing heavy (no FastAPI, no torch): the model replicas and the ingress both use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from qwen3_embed.errors import Qwen3EmbedError


@dataclass(frozen=True)
class ApiAnswer:
    """How the HTTP API answers an error: its status and the `error.code` of the body."""

    status: int
    code: str


# Core error code -> the API's answer. Over-long inputs get OpenAI's own code (clients built on
# its SDK raise BadRequestError for a 400); an input that does not fit the device even alone is
# a 413, as a too-large body is. A code not listed is a 400 under its own name.
API_ANSWERS: dict[str, ApiAnswer] = {
    "invalid_input": ApiAnswer(400, "invalid_input"),
    "input_too_long": ApiAnswer(400, "context_length_exceeded"),
    "input_too_large_for_device": ApiAnswer(413, "input_too_large_for_device"),
    "decode_limit_exceeded": ApiAnswer(413, "decode_limit_exceeded"),
    "invalid_dimensions": ApiAnswer(400, "invalid_dimensions"),
}


def api_answer(error: Qwen3EmbedError) -> ApiAnswer:
    return API_ANSWERS.get(error.code, ApiAnswer(400, error.code))
