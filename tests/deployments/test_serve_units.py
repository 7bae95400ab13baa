"""Unit tests of the serving layer without Ray: config, API keys, SSRF-safe fetching, input and
media checks, response encoding, timeouts, deployment options, the CLI parser, the YAML example."""

from __future__ import annotations

import argparse
import asyncio
import base64
import ipaddress
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError
from serve_support import MediaServer, png_bytes, slow_route

from deployments.config import AuthConfig, MediaPolicy, ModelConfig, RequestLimits, ServeAppConfig
from deployments.errors import ApiError, validation_error
from deployments.inputs import find_media, load_media, split_input
from deployments.media_fetch import FetchRefused, SafeMediaFetcher, forbidden_reason, host_allowed
from deployments.schemas import EmbeddingRequest, embeddings_response
from deployments.security import ApiKeyChecker, read_api_keys

REPO = Path(__file__).resolve().parents[2]


def run(coro):
    return asyncio.run(coro)


# ------------------------------------------------------------------------------------ config
def test_config_defaults_and_validation():
    config = ServeAppConfig.model_validate({"models": [{"model": "Qwen/Qwen3-Embedding-0.6B"}]})
    assert config.models[0].name == "Qwen/Qwen3-Embedding-0.6B"
    assert config.models[0].batching.max_batch_size == 32
    assert config.media.allow_url_fetch is False and not config.auth.enabled
    with pytest.raises(ValidationError, match="unique"):
        ServeAppConfig.model_validate(
            {"models": [{"model": "a"}, {"model": "b", "served_model_name": "a"}]}
        )
    with pytest.raises(ValidationError, match="url_allowed_hosts"):
        MediaPolicy(allow_url_fetch=True)
    with pytest.raises(ValidationError):
        MediaPolicy(url_allowed_networks=("not-a-cidr",))
    with pytest.raises(ValidationError, match="extra"):
        ServeAppConfig.model_validate({"models": [{"model": "a", "max_batch_sise": 3}]})
    with pytest.raises(ValidationError, match="autoscale"):
        ModelConfig(model="a", autoscale=(3, 1))
    with pytest.raises(ValidationError):
        ServeAppConfig.model_validate({"models": []})


# --------------------------------------------------------------------------------- API keys
def test_api_keys_from_env_and_file(tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text("# comment\nfile-key\n\n")
    auth = AuthConfig(api_key_env="MY_KEYS", api_key_file=str(key_file))
    assert read_api_keys(auth, {"MY_KEYS": "env-a, env-b"}) == ["env-a", "env-b", "file-key"]
    checker = ApiKeyChecker.from_config(auth, {"MY_KEYS": "env-a,env-b"})
    assert checker.enabled
    assert checker.is_authorized("Bearer env-b") and checker.is_authorized("bearer file-key")
    for header in (
        None,
        "",
        "Bearer",
        "Bearer wrong",
        "Basic env-a",
        "env-a",
        "Bearer env-a-suffix",
    ):
        assert not checker.is_authorized(header), header
    assert ApiKeyChecker.from_config(AuthConfig()).is_authorized(None)  # no keys configured: open


def test_api_key_sources_that_yield_nothing_are_errors_not_open_access(tmp_path):
    with pytest.raises(ValueError, match="MISSING_VAR") as info:
        read_api_keys(AuthConfig(api_key_env="MISSING_VAR"), {})
    with pytest.raises(ValueError, match="holds no key"):
        empty = tmp_path / "empty"
        empty.write_text("# nothing\n")
        read_api_keys(AuthConfig(api_key_file=str(empty)), {})
    with pytest.raises(ValueError, match="cannot be read"):
        read_api_keys(AuthConfig(api_key_file=str(tmp_path / "absent")), {})
    assert "secret" not in str(info.value)


# ------------------------------------------------------------------------------ SSRF checks
@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "127.9.9.9", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
        "100.100.100.200", "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "fe80::1",
        "fd00:ec2::254", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "2002:7f00:1::", "::",
    ],
)  # fmt: skip
def test_forbidden_addresses(address):
    assert forbidden_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111"])
def test_public_addresses_allowed(address):
    assert forbidden_reason(ipaddress.ip_address(address)) is None


def test_allowed_networks_exempt_only_themselves():
    networks = (ipaddress.ip_network("127.0.0.2/32"),)
    assert forbidden_reason(ipaddress.ip_address("127.0.0.2"), networks) is None
    assert forbidden_reason(ipaddress.ip_address("127.0.0.1"), networks) is not None


def test_host_allow_list_patterns():
    patterns = ("media.example.com", "*.cdn.example.org", "10.0.0.5")
    assert host_allowed("media.example.com", patterns)
    assert host_allowed("a.b.cdn.example.org", patterns)
    assert not host_allowed("cdn.example.org", patterns)  # '*.' means subdomains only
    assert not host_allowed("evilcdn.example.org", patterns)
    assert not host_allowed("media.example.com.evil.net", patterns)
    assert host_allowed("10.0.0.5", patterns)
    assert host_allowed("anything.net", ("*",))


@pytest.fixture
def media_server(recorder):
    image = png_bytes()
    server = MediaServer(
        {
            "/img.png": (200, {"Content-Type": "image/png"}, image),
            "/to-img": (302, {"Location": "/img.png"}, b""),
            "/to-loopback": (302, {"Location": f"{recorder.url}/secret"}, b""),
            "/to-metadata": (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b""),
            "/to-file": (302, {"Location": "file:///etc/passwd"}, b""),
            "/loop": (302, {"Location": "/loop"}, b""),
            "/big": (200, {}, b"x" * 5000),
            "/big-undeclared": (200, {"X-No-Length": "1"}, b"x" * 5000),  # read until close
            "/slow": slow_route(3.0),
            "/missing": (404, {}, b""),
        },
        host="127.0.0.2",
    )
    server.image = image
    yield server
    server.close()


def _fetcher(resolver=None, **overrides) -> SafeMediaFetcher:
    policy = {
        "allow_url_fetch": True,
        "url_allowed_hosts": ("*",),
        "url_allowed_networks": ("127.0.0.2/32",),  # the test media server only
        "max_media_bytes": 4096,
        "url_fetch_timeout_s": 1.0,
        "url_max_redirects": 3,
    }
    policy.update(overrides)
    return SafeMediaFetcher(MediaPolicy(**policy), resolver=resolver)


def _fetch(fetcher: SafeMediaFetcher, url: str) -> bytes:
    async def go():
        try:
            return await fetcher.fetch(url)
        finally:
            await fetcher.aclose()

    return run(go())


def test_fetch_allowed_url_and_redirect(media_server):
    assert _fetch(_fetcher(), media_server.url("/img.png")) == media_server.image
    assert _fetch(_fetcher(), media_server.url("/to-img")) == media_server.image


@pytest.mark.parametrize(
    "make_url",
    [
        lambda rec, srv: f"{rec.url}/direct",  # loopback literal
        lambda rec, srv: f"http://localhost:{rec.port}/by-name",  # a name resolving to loopback
        lambda rec, srv: f"http://2130706433:{rec.port}/decimal",  # 127.0.0.1 spelt as an integer
        lambda rec, srv: f"http://[::ffff:127.0.0.1]:{rec.port}/mapped",
        lambda rec, srv: srv.url("/to-loopback"),  # allowed host redirecting to loopback
    ],
    ids=["literal", "localhost", "decimal", "v4-mapped", "redirect"],
)
def test_ssrf_to_loopback_refused_without_connecting(media_server, recorder, make_url):
    with pytest.raises(FetchRefused) as info:
        _fetch(_fetcher(), make_url(recorder, media_server))
    assert info.value.code == "media_url_forbidden"
    assert recorder.connections == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/x.png",
        "http://192.168.0.10/x.png",
        "http://[fd00:ec2::254]/latest",
        "file:///etc/passwd",
        "ftp://example.com/x.png",
        "http://user:pw@example.com/x.png",
        "http:///no-host",
    ],
)
def test_forbidden_urls_refused_before_any_connection(url):
    resolved: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        resolved.append(host)
        return [host.strip("[]")]

    with pytest.raises(FetchRefused) as info:
        _fetch(_fetcher(resolver=resolver), url)
    assert info.value.code == "media_url_forbidden"


def test_redirect_targets_are_rechecked(media_server, recorder):
    for path in ("/to-metadata", "/to-file"):
        with pytest.raises(FetchRefused) as info:
            _fetch(_fetcher(), media_server.url(path))
        assert info.value.code == "media_url_forbidden"
    with pytest.raises(FetchRefused, match="redirects"):
        _fetch(_fetcher(), media_server.url("/loop"))


def test_host_not_on_allow_list_is_not_even_resolved(media_server):
    resolved: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        resolved.append(host)
        return ["127.0.0.2"]

    with pytest.raises(FetchRefused, match="allow-list"):
        _fetch(
            _fetcher(url_allowed_hosts=("media.example.com",), resolver=resolver),
            "http://other.example.com/x",
        )
    assert resolved == []


def test_any_private_answer_refuses_the_host():
    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.0.0.7"]  # one public, one private (rebinding-style answer)

    with pytest.raises(FetchRefused, match="10.0.0.7"):
        _fetch(_fetcher(resolver=resolver), "http://mixed.example.com/x.png")


def test_connects_to_the_checked_address_with_the_original_host_header(media_server):
    async def resolver(host: str, port: int) -> list[str]:
        assert host == "media.test"
        return ["127.0.0.2"]

    fetcher = _fetcher(url_allowed_hosts=("media.test",), resolver=resolver)
    assert _fetch(fetcher, f"http://media.test:{media_server.port}/img.png") == media_server.image
    assert media_server.requests[-1] == ("/img.png", f"media.test:{media_server.port}")


def test_fetch_limits_size_time_and_status(media_server):
    with pytest.raises(FetchRefused) as info:
        _fetch(_fetcher(), media_server.url("/big"))
    assert (info.value.code, info.value.status) == ("media_too_large", 413)
    with pytest.raises(FetchRefused) as info:
        _fetch(
            _fetcher(), media_server.url("/big-undeclared")
        )  # no Content-Length: counted while read
    assert (info.value.code, info.value.status) == ("media_too_large", 413)
    with pytest.raises(FetchRefused) as info:
        _fetch(_fetcher(url_fetch_timeout_s=0.5), media_server.url("/slow"))
    assert info.value.code == "media_fetch_timeout"
    with pytest.raises(FetchRefused, match="HTTP 404"):
        _fetch(_fetcher(), media_server.url("/missing"))


# -------------------------------------------------------------------------- inputs / media
LIMITS = RequestLimits(max_inputs_per_request=3, max_chars_per_request=20)


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        ([], 400, "empty_input"),
        (["a", "b", "c", "d"], 400, "too_many_inputs"),
        (["x" * 21], 413, "request_too_large"),
        ([1, 2, 3], 400, "token_ids_not_supported"),
        ([[1, 2]], 400, "token_ids_not_supported"),
        ([None], 400, "invalid_input"),
        ([True], 400, "invalid_input"),
        ([{"text": "a", "audio": "x"}], 400, "invalid_input"),
        ([{"text": 5}], 400, "invalid_input"),
    ],
)
def test_split_input_refusals(raw, status, code):
    with pytest.raises(ApiError) as info:
        split_input(raw, None, LIMITS)
    assert (info.value.status, info.value.code) == (status, code)


def test_split_input_counts_instruction_characters():
    assert split_input("hello", None, LIMITS) == ["hello"]
    with pytest.raises(ApiError, match="characters"):
        split_input(["hello"], "x" * 16, LIMITS)


def _data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@pytest.mark.parametrize(
    ("source", "code"),
    [
        ("/etc/passwd", "media_source_forbidden"),
        ("file:///etc/passwd", "media_source_forbidden"),
        ("FILE:///etc/passwd", "media_source_forbidden"),
        ("relative/image.png", "media_source_forbidden"),
        ("s3://bucket/key.png", "media_source_forbidden"),
        ("http://example.com/a.png", "media_url_disabled"),
        (5, "invalid_media"),
    ],
)
def test_find_media_refuses_paths_and_disabled_urls(source, code):
    with pytest.raises(ApiError) as info:
        find_media([{"image": source}], "vl", "m", MediaPolicy())
    assert (info.value.status, info.value.code, info.value.param) == (400, code, "input[0].image")


def test_find_media_refuses_media_for_text_models_and_counts_frames():
    with pytest.raises(ApiError) as info:
        find_media(["a", {"text": "b", "image": _data_uri(b"x")}], "text", "m", MediaPolicy())
    assert (info.value.code, info.value.param) == ("unsupported_input", "input[1].image")
    frames = [_data_uri(png_bytes())] * 3
    slots = find_media([{"video": frames, "image": frames[0]}], "vl", "m", MediaPolicy())
    assert [slot.param for slot in slots] == [
        "input[0].image", "input[0].video[0]", "input[0].video[1]", "input[0].video[2]",
    ]  # fmt: skip
    with pytest.raises(ApiError) as info:
        find_media([{"video": frames}], "vl", "m", MediaPolicy(max_media_per_request=2))
    assert (info.value.status, info.value.code) == (413, "too_many_media")


def test_find_media_reads_lists_like_the_core():
    """image lists; a video list whose first element is an image (by content, once loaded, as the
    model replica reads it) is one video's frames, any other list is several videos (files or
    nested frame lists), each medium named by its place in the item."""
    frame = _data_uri(png_bytes())
    clip_bytes = b"\x00\x00\x00\x18ftypmp42"
    clip = _data_uri(clip_bytes, "video/mp4")
    items = [
        {"image": [frame, frame], "text": ["p1", "p2"]},
        {"video": [frame, frame]},
        {"video": [clip, [frame, frame]], "fps": 2, "max_frames": 8},
    ]
    slots = find_media(items, "vl", "m", MediaPolicy())
    assert [(slot.param, slot.is_image) for slot in slots] == [
        ("input[0].image[0]", True), ("input[0].image[1]", True),
        ("input[1].video[0]", None), ("input[1].video[1]", None),  # decided once loaded
        ("input[2].video[0]", None), ("input[2].video[1][0]", True), ("input[2].video[1][1]", True),
    ]  # fmt: skip
    with pytest.raises(ApiError) as info:
        find_media([{"video": [clip, ["/etc/passwd"]]}], "vl", "m", MediaPolicy())
    assert (info.value.code, info.value.param) == ("media_source_forbidden", "input[0].video[1][0]")
    loaded = run(load_media(items, slots, MediaPolicy(), None))
    assert loaded[1]["video"] == [png_bytes(), png_bytes()]
    assert loaded[2]["video"] == [clip_bytes, [png_bytes(), png_bytes()]]
    assert items[2]["video"][1][0] == frame  # the request itself is left as sent
    assert split_input(items, None, LIMITS) == items  # text lists count their characters
    with pytest.raises(ApiError) as info:
        split_input([{"text": ["ok", 3]}], None, LIMITS)
    assert (info.value.code, info.value.param) == ("invalid_input", "input[0].text[1]")


def test_load_media_checks_each_medium_and_the_items_total():
    image = png_bytes(8, 8)
    policy = MediaPolicy(max_media_bytes=len(image), max_item_media_bytes=2 * len(image))
    fine = [{"image": [_data_uri(image)] * 2}, {"image": [_data_uri(image)] * 2}]
    assert len(run(load_media(fine, find_media(fine, "vl", "m", policy), policy, None))) == 2
    heavy = [{"image": [_data_uri(image)] * 2, "video": [_data_uri(image)]}]
    with pytest.raises(ApiError) as info:
        run(load_media(heavy, find_media(heavy, "vl", "m", policy), policy, None))
    assert (info.value.status, info.value.code, info.value.param) == (
        413, "media_too_large", "input[0]",
    )  # fmt: skip
    # Frames are told by content, whatever the MIME type: a frame list labelled as videos is
    # still checked frame by frame (here: one over the pixel limit).
    small = MediaPolicy(max_image_pixels=100)
    labelled = [
        {"video": [_data_uri(image, "video/mp4"), _data_uri(png_bytes(20, 20), "video/mp4")]}
    ]
    with pytest.raises(ApiError) as info:
        run(load_media(labelled, find_media(labelled, "vl", "m", small), small, None))
    assert (info.value.status, info.value.param) == (413, "input[0].video[1]")


def test_load_media_decodes_data_uris_to_bytes_and_checks_images():
    image = png_bytes(8, 8)
    policy = MediaPolicy(max_media_bytes=10_000, max_image_pixels=10_000)
    items = [{"text": "t", "image": _data_uri(image)}, "plain", {"video": [_data_uri(image)] * 2}]
    slots = find_media(items, "vl", "m", policy)
    loaded = run(load_media(items, slots, policy, None))
    assert loaded[0] == {"text": "t", "image": image}
    assert loaded[1] == "plain" and loaded[2] == {"video": [image, image]}
    assert items[0]["image"].startswith("data:")  # the request itself is left as sent

    def refused(source: str, policy: MediaPolicy = policy) -> ApiError:
        bad = [{"image": source}]
        with pytest.raises(ApiError) as info:
            run(load_media(bad, find_media(bad, "vl", "m", policy), policy, None))
        return info.value

    assert refused("data:image/png;base64,@@@").code == "invalid_media"
    assert refused("data:image/png,rawtext").code == "invalid_media"
    assert refused(_data_uri(b"not an image")).code == "invalid_media"
    big = refused(_data_uri(png_bytes(200, 100)))  # 20,000 pixels > 10,000
    assert (big.status, big.code) == (413, "media_too_large")
    heavy = refused(_data_uri(b"x" * 20_000))
    assert (heavy.status, heavy.code) == (413, "media_too_large")


# ------------------------------------------------------------------------ schemas / errors
def test_request_schema_is_strict():
    assert EmbeddingRequest.model_validate({"input": "a"}).truncate is False
    for body in (
        {"input": 5},
        {"input": "a", "dimensions": "64"},
        {"input": "a", "dimensions": 64.5},
        {"input": "a", "encoding_format": "int8"},
        {"input": "a", "truncate": "yes"},
        {"input": "a", "instrucion": "typo"},
        {"input": "a", "truncation_side": "left"},
        {"input": "a", "truncate_prompt_tokens": "5"},
    ):
        with pytest.raises(ValidationError):
            EmbeddingRequest.model_validate(body)
    # `input` may be missing in the schema (the chat form sends `messages`); chat_form decides.
    assert EmbeddingRequest.model_validate({}).input is None


def test_validation_error_names_fields():
    with pytest.raises(ValidationError) as info:
        EmbeddingRequest.model_validate({"input": "a", "dimensions": "x", "extra": 1})
    error = validation_error(info.value.errors())
    # 400 (as OpenAI), not FastAPI's 422; the code is OpenAI's for the first error
    assert (error.status, error.param, error.code) == (400, "dimensions", "invalid_type")
    assert error.type == "invalid_request_error"
    assert "dimensions" in error.message and "extra" in error.message
    assert set(error.body()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(ValidationError) as info:
        EmbeddingRequest.model_validate({"input": "a", "extra": 1})
    assert validation_error(info.value.errors()).code == "unknown_parameter"
    with pytest.raises(ValidationError) as info:
        EmbeddingRequest.model_validate_json(b'{"input": ')
    assert validation_error(info.value.errors()).code == "invalid_json"


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


def test_base64_encoding_is_little_endian_float32():
    vectors = np.array([[1.5, -2.0, 3.25], [0.0, 1e-8, -7.0]], dtype=np.float32)
    body = embeddings_response("m", vectors, 7, "base64")
    decoded = np.stack(
        [np.frombuffer(base64.b64decode(row["embedding"]), dtype="<f4") for row in body["data"]]
    )
    np.testing.assert_array_equal(decoded, vectors)
    floats = embeddings_response("m", vectors, 7, "float")
    assert floats["data"][1]["embedding"] == vectors[1].tolist()
    assert floats["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert [row["index"] for row in floats["data"]] == [0, 1]


# ---------------------------------------------------------------- timeouts / backpressure
class _NeverAnswers:
    """Stands in for a DeploymentResponse whose replica never answers."""

    def __init__(self):
        self.cancelled = False

    def __await__(self):
        return asyncio.get_event_loop().create_future().__await__()

    def cancel(self):
        self.cancelled = True


class _Raises:
    def __init__(self, error: Exception):
        self.error = error

    def __await__(self):
        raise self.error
        yield  # pragma: no cover - makes this a generator

    def cancel(self):
        pass


def test_model_call_timeout_cancels_and_answers_504():
    from deployments.ingress import call_with_timeout

    response = _NeverAnswers()
    with pytest.raises(ApiError) as info:
        run(call_with_timeout(response, 0.2, "model 'm'"))
    assert (info.value.status, info.value.code) == (504, "timeout") and response.cancelled


def test_backpressure_becomes_429_with_retry_after():
    from ray.serve.exceptions import BackPressureError

    from deployments.ingress import call_with_timeout

    error = BackPressureError(
        num_queued_requests=4, max_queued_requests=4, status_code=429, retry_after_s=2.5
    )
    with pytest.raises(ApiError) as info:
        run(call_with_timeout(_Raises(error), 5, "model 'm'"))
    assert (info.value.status, info.value.code) == (429, "queue_full")
    assert info.value.headers == {"Retry-After": "3"}


def test_readiness_is_false_until_every_model_answers():
    from deployments.ingress import probe_ready

    async def loaded():
        return "description"

    async def loading():
        await asyncio.sleep(60)

    async def failed():
        raise RuntimeError("replica crashed")

    states = run(probe_ready({"a": loaded, "b": loading, "c": failed}, 0.2))
    assert states == {"a": True, "b": False, "c": False}


# ----------------------------------------------------------------- app builder / options
def test_deployment_options():
    from deployments.app import (
        build_application,
        deployment_names,
        ingress_options,
        model_deployment_options,
    )

    model = ModelConfig(
        model="m", batching={"max_batch_size": 8, "batch_wait_ms": 3}, max_queued_requests=5
    )
    options = model_deployment_options(model, "EmbeddingModel-m", cluster_gpus=2)
    assert options["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert options["user_config"] == {"max_batch_size": 8, "batch_wait_ms": 3.0}
    assert options["num_replicas"] == 1 and options["max_queued_requests"] == 5
    assert options["backpressure_config"]["status_code"] == 429
    assert (
        model_deployment_options(model, "x", cluster_gpus=0)["ray_actor_options"]["num_gpus"] == 0
    )
    scaled = model_deployment_options(
        ModelConfig(model="m", autoscale=(1, 4), gpus_per_replica=0.5), "x", cluster_gpus=0
    )
    assert (
        scaled["autoscaling_config"]["min_replicas"] == 1
        and scaled["autoscaling_config"]["max_replicas"] == 4
    )
    # Serve's own delays unless set, and Serve's schema accepts what is passed.
    from ray.serve.config import AutoscalingConfig

    assert AutoscalingConfig(**scaled["autoscaling_config"]).downscale_delay_s == 600
    assert scaled["autoscaling_config"]["upscale_delay_s"] == 30
    quick = model_deployment_options(
        ModelConfig(model="m", autoscale=(1, 3), upscale_delay_s=1, downscale_delay_s=2.5), "x", 0
    )["autoscaling_config"]
    assert (quick["upscale_delay_s"], quick["downscale_delay_s"]) == (1, 2.5)
    with pytest.raises(ValidationError, match="downscale_delay_s"):
        ModelConfig(model="m", downscale_delay_s=-1)
    assert "num_replicas" not in scaled and scaled["ray_actor_options"]["num_gpus"] == 0.5
    models = (ModelConfig(model="Qwen/A"), ModelConfig(model="x", served_model_name="Qwen A"))
    names = deployment_names(models)
    assert len(set(names.values())) == 2 and all("#" not in name for name in names.values())
    config = ServeAppConfig(models=models)
    assert ingress_options(config)["backpressure_config"]["status_code"] == 429
    app = build_application(config, cluster_gpus=0)  # binding needs no cluster
    assert type(app).__name__ == "Application"


def test_deployment_names_stay_unique_when_a_suffix_is_another_models_name():
    from deployments.app import deployment_names

    # "a" and "a/" share a slug; the old suffix (the model's index) made "a/" EmbeddingModel-a-2,
    # which is already "a-2"'s own name.
    models = tuple(ModelConfig(model="m", served_model_name=name) for name in ("a-2", "a", "a/"))
    names = deployment_names(models)
    assert len(set(names.values())) == 3, names


def test_serve_config_yaml_is_valid():
    from ray.serve.schema import ServeDeploySchema

    document = yaml.safe_load((REPO / "deployments" / "serve_config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(document)  # Serve's own schema for serve run/deploy
    app = schema.applications[0]
    assert app.import_path == "deployments.app:build_app"
    config = ServeAppConfig.model_validate(app.args)
    assert config.models and config.auth.api_key_env
    # What `serve run` / `serve deploy` do with import_path + args (binding needs no cluster).
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    built = call_user_app_builder_with_args_if_necessary(import_attr(app.import_path), app.args)
    assert type(built).__name__ == "Application"


# -------------------------------------------------------------------------------------- CLI
def _parse(*argv: str) -> argparse.Namespace:
    from qwen3_embed.cli import build_parser

    argv = ("serve", *argv)
    return build_parser(list(argv)).parse_args(list(argv))


def test_cli_flags_build_the_config():
    from deployments.cli import config_from_args, run

    args = _parse(
        "--model", "a", "--model", "b", "--served-model-name", "A", "--served-model-name", "B",
        "--autoscale", "1:3", "--gpus-per-replica", "0.5", "--max-batch-size", "7", "--batch-wait-ms", "4",
        "--api-key-env", "KEYS", "--allow-url-fetch", "--url-allowed-host", "*.example.com",
    )  # fmt: skip
    assert args.handler is run
    config = config_from_args(args)
    assert [model.name for model in config.models] == ["A", "B"]
    assert config.models[1].autoscale == (1, 3) and config.models[0].gpus_per_replica == 0.5
    assert (config.models[1].upscale_delay_s, config.models[1].downscale_delay_s) == (30, 600)
    delays = ("--upscale-delay-s", "1", "--downscale-delay-s", "4")
    quick = config_from_args(_parse("--model", "a", "--autoscale", "1:3", *delays))
    assert (quick.models[0].upscale_delay_s, quick.models[0].downscale_delay_s) == (1, 4)
    assert (
        config.models[0].batching.max_batch_size == 7
        and config.models[0].batching.batch_wait_ms == 4
    )
    assert config.auth.api_key_env == "KEYS" and config.media.url_allowed_hosts == (
        "*.example.com",
    )
    # The layout: one model is colocated unless --split-ingress; several are routed by an
    # ingress of their own, and --colocate-ingress with several is refused.
    assert not config.ingress.colocate
    assert config_from_args(_parse("--model", "a")).ingress.colocate
    assert config_from_args(_parse("--model", "a", "--colocate-ingress")).ingress.colocate
    assert not config_from_args(_parse("--model", "a", "--split-ingress")).ingress.colocate
    with pytest.raises(ValueError, match="colocate serves one model"):
        config_from_args(_parse("--model", "a", "--model", "b", "--colocate-ingress"))
    with pytest.raises(SystemExit):
        _parse("--model", "a", "--split-ingress", "--colocate-ingress")
    with pytest.raises(ValueError, match="one per model"):
        config_from_args(_parse("--model", "a", "--model", "b", "--served-model-name", "A"))
    with pytest.raises(SystemExit):
        _parse("--model", "a", "--replicas", "2", "--autoscale", "1:2")
    with pytest.raises(SystemExit):
        _parse("--model", "a", "--autoscale", "3")
    with pytest.raises(ValueError, match="url_allowed_hosts"):
        config_from_args(_parse("--model", "a", "--allow-url-fetch"))


def test_cli_app_config_file(tmp_path):
    from deployments.cli import config_from_args

    path = tmp_path / "app.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "models": [{"model": "m", "served_model_name": "n"}],
                "limits": {"max_inputs_per_request": 9},
            }
        )
    )
    config = config_from_args(_parse("--app-config", str(path)))
    assert config.models[0].name == "n" and config.limits.max_inputs_per_request == 9
    with pytest.raises(ValueError, match="exclusive"):
        config_from_args(_parse("--app-config", str(path), "--model", "m"))
    # App flags beside the file would be silently ignored: refused, each named.
    with pytest.raises(ValueError, match="--colocate-ingress, --max-batch-size would be ignored"):
        config_from_args(
            _parse("--app-config", str(path), "--colocate-ingress", "--max-batch-size", "4")
        )
    # Server flags hold with a file.
    served = _parse("--app-config", str(path), "--port", "9", "--http-proxy", "haproxy")
    assert config_from_args(served).models[0].name == "n"
    path.write_text(yaml.safe_dump({"models": [{"model": "m", "max_batch_sise": 1}]}))
    with pytest.raises(ValidationError):
        config_from_args(_parse("--app-config", str(path)))


def test_cli_refuses_missing_key_source_before_starting_ray(capsys, monkeypatch):
    from deployments.cli import run

    monkeypatch.delenv("QWEN3_EMBED_TEST_NO_SUCH_VAR", raising=False)
    assert run(_parse("--model", "a", "--api-key-env", "QWEN3_EMBED_TEST_NO_SUCH_VAR")) == 2
    assert "QWEN3_EMBED_TEST_NO_SUCH_VAR" in capsys.readouterr().err


def test_cli_module_does_not_import_ray_or_torch():
    code = "import sys, deployments.cli; print('ray' in sys.modules, 'torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert result.stdout.split() == ["False", "False"]


def test_cli_refuses_haproxy_on_a_cluster_before_starting_ray(capsys, monkeypatch):
    from deployments.cli import run

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert run(_parse("--model", "a", "--http-proxy", "haproxy", "--address", "auto")) == 2
    assert "RAY_SERVE_ENABLE_HA_PROXY=1" in capsys.readouterr().err
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert run(_parse("--model", "a", "--http-proxy", "haproxy")) == 2
    with pytest.raises(SystemExit):
        _parse("--model", "a", "--http-proxy", "nginx")


# ------------------------------------------------------------- the private Ray's environment
def test_serve_environment_per_http_proxy():
    from deployments.ray_env import (
        HAPROXY,
        HAPROXY_PORT_VARIABLES,
        LATENCY_SWITCHES,
        LOOPBACK_NODE,
        serve_environment,
    )

    # Served on loopback (the default host): Ray's single-machine mode binds all its ports there.
    assert serve_environment("ray") == {**LATENCY_SWITCHES, **LOOPBACK_NODE}
    assert serve_environment("ray", "::1") == serve_environment("ray", "localhost")
    assert serve_environment("ray", "127.0.0.2") == {**LATENCY_SWITCHES, **LOOPBACK_NODE}
    # Served beyond this machine: Ray's own addresses (a cluster of one node may grow).
    assert serve_environment("ray", "0.0.0.0") == LATENCY_SWITCHES
    assert serve_environment("ray", "192.0.2.7") == LATENCY_SWITCHES
    ports = iter((41001, 41002, 41003))
    haproxy = serve_environment("haproxy", pick_port=lambda: next(ports))
    assert haproxy == {
        **LATENCY_SWITCHES,
        **LOOPBACK_NODE,
        **HAPROXY,
        **dict(zip(HAPROXY_PORT_VARIABLES, ("41001", "41002", "41003"), strict=True)),
    }
    # Real free ports: distinct, none of Ray's fixed defaults.
    chosen = [serve_environment("haproxy")[name] for name in HAPROXY_PORT_VARIABLES]
    assert all(port.isdigit() and port not in {"8500", "8404", "9101"} for port in chosen)
    with pytest.raises(ValueError, match="http proxy must be one of ray, haproxy"):
        serve_environment("nginx")  # type: ignore[arg-type]


def test_apply_environment_lets_the_users_values_win():
    from deployments.ray_env import apply_environment, serve_environment

    environ = {"RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1"}
    applied = apply_environment(serve_environment("ray"), environ)
    assert applied["RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"] == "1"  # the user's
    assert environ["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"  # ours, where unset
    with pytest.raises(ValueError, match="needs RAY_SERVE_ENABLE_HA_PROXY=1"):
        apply_environment(serve_environment("haproxy"), {"RAY_SERVE_ENABLE_HA_PROXY": "0"})


def test_ingress_shutdown_hook_after_a_failed_start():
    """Serve awaits `__del__` also when `__init__` raised (a missing model directory): the hook
    must not add a second, misleading error to the start-up one."""
    import types

    from deployments.ingress import EmbeddingsIngress

    # Our class's own hook (Serve's wrapper subclasses it), called on an object with none of the
    # attributes `__init__` sets; a plain object, so no un-awaited `__del__` runs at collection.
    (user_class,) = [
        klass
        for klass in EmbeddingsIngress.func_or_class.__mro__
        if "Serve's shutdown hook" in (getattr(klass.__dict__.get("__del__"), "__doc__", "") or "")
    ]
    asyncio.run(user_class.__dict__["__del__"](types.SimpleNamespace()))
