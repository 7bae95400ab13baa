"""The chat form of /v1/embeddings (deployments/chat.py): `messages` become one item, errors
point into the messages, vLLM's prompt fields and truncation."""

from __future__ import annotations

import pytest

from deployments.errors import ApiError


def test_messages_become_one_item_and_errors_point_into_them():
    from deployments.chat import (
        chat_form,
        check_prompt_fields,
        messages_to_item,
        resolve_truncation,
    )

    chat = messages_to_item(
        [
            {"role": "system", "content": "Find the photo"},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                    {"type": "text", "text": "red box"},
                    {"type": "video_url", "video_url": "https://example.com/v.mp4"},
                    {"type": "image_url", "image_url": {"url": "https://x/p.png", "detail": "low"}},
                    {"type": "text", "text": "page 2"},
                ],
            },
        ]
    )
    assert chat.item == {
        "instruction": "Find the photo",
        "text": ["red box", "page 2"],
        "image": ["data:image/png;base64,AA", "https://x/p.png"],
        "video": ["https://example.com/v.mp4"],
    }
    assert chat.request_param("input[0].image[1]") == "messages[1].content[3].image_url.url"
    assert chat.request_param("input[0].video[0][2]") == "messages[1].content[2].video_url.url[2]"
    assert chat.request_param("input[0].text[1]") == "messages[1].content[4]"
    assert chat.request_param("input") == "messages"
    translated = chat.translate(
        ApiError(400, "input[0].image[1]: not allowed", code="c", param="input[0].image[1]")
    )
    assert translated.message == "messages[1].content[3].image_url.url: not allowed"
    core = chat.translate(ApiError(400, "input[0]: text is empty", code="c", param="input"))
    assert (core.param, core.message) == ("messages", "messages: text is empty")

    refused = [
        ([], "empty_input"),
        ([{"role": "assistant", "content": "x"}], "invalid_value"),
        (
            [{"role": "user", "content": "a"}, {"role": "system", "content": "late"}],
            "invalid_value",
        ),
        ([{"role": "user", "content": [{"type": "audio_url", "audio_url": "x"}]}], "invalid_value"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": 5}]}], "invalid_type"),
        ([{"role": "system", "content": "only an instruction"}], "missing_required_parameter"),
        ([{"role": "user", "content": "x", "tool_calls": []}], "unknown_parameter"),
    ]
    for messages, code in refused:
        with pytest.raises(ApiError) as info:
            messages_to_item(messages)
        assert (info.value.status, info.value.code) == (400, code), messages
    with pytest.raises(ApiError) as info:
        chat_form("x", [{"role": "user", "content": "x"}])
    assert info.value.param == "messages"
    assert chat_form("x", None) is None
    check_prompt_fields(True, False, True, False)  # what vLLM clients send: accepted
    check_prompt_fields(False, True, None, None)
    for args in ((False, False, None, None), (True, True, None, None), (True, None, False, None)):
        with pytest.raises(ApiError):
            check_prompt_fields(*args)
    assert resolve_truncation(False, None, 48) == (False, None)
    assert resolve_truncation(False, -1, 48) == (True, None)
    assert resolve_truncation(False, 48, 48) == (True, 48)
    for bad in (0, -2, 49):
        with pytest.raises(ApiError):
            resolve_truncation(False, bad, 48)
