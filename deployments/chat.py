"""vLLM's chat form of an embeddings (or /tokenize) request: `messages` -> one core item.

vLLM takes a conversation as one input: `[{"role": "system", "content": ...}, {"role": "user",
"content": [{"type": "text", "text": ...}, {"type": "image_url", "image_url": {"url": ...}}]}]`
gives one vector. Here the conversation becomes the core item `{text, image, video,
instruction}`, which the model renders with its official prompt (Qwen3-VL-Embedding: system
turn = instruction, user turn = videos, images, texts), not with a generic chat template: the
vectors are the model's own, whatever order the parts came in. Media parts then go through the
same path as `input` items (data URIs, or URLs under the SSRF rules), so nothing here fetches or
decodes anything.

Errors about the item (raised later, by `inputs` or the core) name `input[0]...`; `ChatItem`
translates them back to where the client wrote it (`messages[1].content[2].image_url.url`).

This module also checks the vLLM fields that change how the prompt is built
(`add_special_tokens`, `add_generation_prompt`, `continue_final_message`): they are accepted when
they ask for what this server does anyway (the model's official prompt), refused otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ApiError

PART_TYPES = ("text", "image_url", "video_url")
_MEDIA_PARTS = {"image_url": "image", "video_url": "video"}


def _refuse(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, f"{param}: {message}", code=code, param=param)


@dataclass(frozen=True)
class ChatItem:
    """The core item a conversation becomes, and where each of its parts came from. /tokenize's
    `prompt` form is one too (its item is the prompt string, whose errors name `prompt`)."""

    item: dict[str, Any] | str
    # item parameter ("input[0].image[1]") -> request parameter ("messages[1].content[2]...")
    params: dict[str, str] = field(default_factory=dict)

    def request_param(self, param: str | None) -> str | None:
        if param is None:
            return None
        for key in sorted(self.params, key=len, reverse=True):
            if param == key or param.startswith((key + "[", key + ".")):
                return self.params[key] + param[len(key) :]
        if param.startswith("input[0]"):
            return "messages" + param[len("input[0]") :]
        return "messages" if param == "input" else param

    def translate(self, error: ApiError) -> ApiError:
        """`error` as the client should read it: parameters of the messages, not of the item."""
        old = error.param
        new = self.request_param(old)
        message = error.message
        if old and new and old.startswith("input[0]") and old in message:
            message = message.replace(old, new, 1)
        elif message.startswith("input[0]: ") and new:  # the core's own errors name the item
            message = f"{new}: {message[len('input[0]: ') :]}"
        elif message.startswith("input[0]"):
            message = "messages" + message[len("input[0]") :]
        return ApiError(error.status, message, code=error.code, param=new, headers=error.headers)


def messages_to_item(messages: list[Any]) -> ChatItem:
    """One conversation -> one item. At most one system message (first; its text is the
    instruction) and exactly one user message; other roles are refused rather than guessed at
    (the official prompt has no place for them)."""
    if not messages:
        raise _refuse("messages", "must not be empty; send a user message", "empty_input")
    instruction: str | None = None
    user: tuple[int, Any] | None = None
    params: dict[str, str] = {}
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise _refuse(where, "must be an object with 'role' and 'content'", "invalid_type")
        unknown = sorted(str(key) for key in message if key not in ("role", "content", "name"))
        if unknown:
            raise _refuse(where, f"unknown key(s) {unknown}", "unknown_parameter")
        role = message["role"]
        if role == "system":
            if index != 0:
                raise _refuse(f"{where}.role", "the system message must come first")
            instruction = _system_text(message["content"], f"{where}.content")
            params["input[0].instruction"] = f"{where}.content"
        elif role == "user":
            if user is not None:
                raise _refuse(
                    f"{where}.role",
                    "one user message per request (one conversation is one embedding); put "
                    "every part in it, or send one request per input",
                )
            user = (index, message["content"])
        else:
            raise _refuse(
                f"{where}.role",
                f"role {role!r} is not accepted; send a 'system' message (the instruction) and "
                "one 'user' message",
            )
    if user is None:
        raise _refuse("messages", "a user message is required", "missing_required_parameter")
    item = _user_item(user[0], user[1], params)
    if instruction is not None:
        item["instruction"] = instruction
    return ChatItem(item, params)


def _system_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else None
    if parts is not None and len(parts) == 1 and isinstance(parts[0], dict):
        part = parts[0]
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            return part["text"]
    raise _refuse(
        where, "the system message must be one text (a string or one text part)", "invalid_type"
    )


def _user_item(index: int, content: Any, params: dict[str, str]) -> dict[str, Any]:
    where = f"messages[{index}].content"
    if isinstance(content, str):
        params["input[0].text"] = where
        return {"text": content}
    if not isinstance(content, list):
        raise _refuse(where, "must be a string or a list of parts", "invalid_type")
    texts: list[tuple[str, str]] = []  # (text, param)
    media: dict[str, list[tuple[str, str]]] = {"image": [], "video": []}
    for position, part in enumerate(content):
        at = f"{where}[{position}]"
        if not isinstance(part, dict) or part.get("type") not in PART_TYPES:
            raise _refuse(
                at,
                f"a part must be an object with type one of {', '.join(PART_TYPES)}",
                "invalid_value",
            )
        kind = part["type"]
        if kind == "text":
            if not isinstance(part.get("text"), str) or set(part) - {"type", "text"}:
                raise _refuse(at, "a text part is {type: 'text', text: string}", "invalid_type")
            texts.append((part["text"], at))
            continue
        key = _MEDIA_PARTS[kind]
        media[key].append((_media_url(part, kind, at), f"{at}.{kind}.url"))
    item: dict[str, Any] = {}
    if len(texts) == 1:
        item["text"] = texts[0][0]
        params["input[0].text"] = texts[0][1]
    elif texts:
        item["text"] = [text for text, _ in texts]
        params["input[0].text"] = where  # all of them (a text model takes one text per item)
        params.update({f"input[0].text[{i}]": at for i, (_, at) in enumerate(texts)})
    for key, sources in media.items():
        if sources:
            # Always a list, so every medium has its own parameter ("input[0].image[1]").
            item[key] = [source for source, _ in sources]
            params[f"input[0].{key}"] = where
            params.update({f"input[0].{key}[{i}]": at for i, (_, at) in enumerate(sources)})
    return item


def _media_url(part: dict[str, Any], kind: str, at: str) -> Any:
    """The URL of an image_url / video_url part: `{"url": ...}` (OpenAI's shape; `detail` is
    accepted, it means nothing to an embedding) or a bare string, as vLLM also takes."""
    if set(part) - {"type", kind}:
        raise _refuse(
            at, f"unknown key(s) {sorted(set(part) - {'type', kind})}", "unknown_parameter"
        )
    value = part.get(kind)
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "url" in value and not set(value) - {"url", "detail"}:
        return value["url"]  # its type is checked with every other medium's (inputs._classify)
    raise _refuse(f"{at}.{kind}", "must be {url: string} or a string", "invalid_type")


def check_prompt_fields(
    chat: bool,
    add_special_tokens: bool | None,
    add_generation_prompt: bool | None,
    continue_final_message: bool | None,
) -> None:
    """vLLM's prompt-building fields: accepted when they ask for what this server does anyway
    (vLLM's defaults for the form, and the official prompt's generation turn), else 400. The
    prompt is always the model's official one; a value that asks for another would otherwise be
    silently ignored and give vectors the client did not ask for."""
    wanted = {
        # vLLM adds special tokens to a raw input, and lets the chat template add them in the
        # chat form; either way the sequence is the model's official one (EOS and all).
        "add_special_tokens": (add_special_tokens, not chat),
        "add_generation_prompt": (add_generation_prompt, True),
        "continue_final_message": (continue_final_message, False),
    }
    for name, (value, accepted) in wanted.items():
        if value is None or value == accepted:
            continue
        if name != "add_special_tokens" and not chat:
            raise _refuse(name, "applies to the chat form (messages) only", "invalid_value")
        raise _refuse(
            name,
            f"only {str(accepted).lower()} is accepted here: this server always builds the "
            "model's official prompt (special tokens, chat turns and the pooled last token "
            "included)",
        )


def chat_form(raw: Any, messages: list[Any] | None, input_name: str = "input") -> ChatItem | None:
    """The request's conversation when it uses the chat form; exactly one of `input_name` and
    `messages` must be given."""
    if messages is None:
        if raw is None:
            raise ApiError(
                400,
                f"{input_name} is required (or messages, the chat form)",
                code="missing_required_parameter",
                param=input_name,
            )
        return None
    if raw is not None:
        raise _refuse("messages", f"send either {input_name} or messages, not both")
    return messages_to_item(messages)


def request_chat_form(request: Any, raw: Any, input_name: str = "input") -> ChatItem | None:
    """`chat_form` of a parsed request (embeddings or tokenize) with the checks every route
    makes of it: one instruction only, and vLLM's prompt-building fields."""
    chat = chat_form(raw, request.messages, input_name)
    check_instructions(chat, request.instruction)
    check_prompt_fields(
        chat is not None,
        request.add_special_tokens,
        request.add_generation_prompt,
        request.continue_final_message,
    )
    if chat is None and input_name != "input":
        # /tokenize's `prompt`: its one item, whose errors (the core's `input[0]`) name `prompt`.
        return ChatItem(raw, {"input[0]": input_name, "input": input_name})
    return chat


def check_instructions(chat: ChatItem | None, instruction: str | None) -> None:
    """A system message and the `instruction` field are the same thing: one of them only."""
    if (
        chat is not None
        and instruction is not None
        and isinstance(chat.item, dict)
        and "instruction" in chat.item
    ):
        raise _refuse(
            "instruction",
            "the conversation has a system message, which is its instruction; send one of them",
        )


def resolve_truncation(
    truncate: bool, truncate_prompt_tokens: int | None, max_length: int
) -> tuple[bool, int | None]:
    """(truncate, per-input token limit) from the `truncate` extension and vLLM's
    `truncate_prompt_tokens`: N keeps each input's first N tokens (the core truncates at the
    end, so the query prompt's instruction and the pooled EOS survive), -1 the model's
    max_length; either implies truncation. Over max_length it is refused, as vLLM does."""
    if truncate_prompt_tokens is None:
        return truncate, None
    if truncate_prompt_tokens == -1:
        return True, None
    if not 1 <= truncate_prompt_tokens <= max_length:
        raise _refuse(
            "truncate_prompt_tokens",
            f"must be -1 (the model's max length) or in [1, {max_length}], got "
            f"{truncate_prompt_tokens}",
        )
    return True, truncate_prompt_tokens
