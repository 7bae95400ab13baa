"""The Serve application with the tiny Qwen3-VL checkpoint: text + image items (data URIs and an
allowed URL) equal the core on the same bytes, and media URLs that point inside the network are
refused without any connection to them."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_support import (
    MediaServer,
    api_client,
    assert_openai_error,
    deployed_app,
    png_bytes,
)

from deployments.config import ServeAppConfig

pytestmark = pytest.mark.requires_vl

APP = "serve-vl-test"
PREFIX = "/vl"
TOL = 1e-5


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@pytest.fixture(scope="module")
def media(recorder):
    image = png_bytes(48, 40, (20, 160, 90))
    server = MediaServer(
        {
            "/photo.png": (200, {"Content-Type": "image/png"}, image),
            "/to-loopback": (302, {"Location": f"{recorder.url}/admin"}, b""),
        },
        host="127.0.0.2",
    )
    server.image = image
    yield server
    server.close()


@pytest.fixture(scope="module")
def served(ray_cluster, tiny_vl_model_dir: Path):
    config = ServeAppConfig.model_validate(
        {
            "models": [
                {
                    "model": str(tiny_vl_model_dir),
                    "served_model_name": "tiny-vl",
                    "cpus_per_replica": 0.5,
                }
            ],
            "media": {
                "allow_url_fetch": True,
                "url_allowed_hosts": ["*"],
                # Only the test media server is exempt from the private-address ban; 127.0.0.1 is not.
                "url_allowed_networks": ["127.0.0.2/32"],
                "max_media_bytes": 200_000,
                "max_media_per_request": 128,  # the 70-frame list
                "url_fetch_timeout_s": 5,
            },
            "ingress": {"cpus_per_replica": 0.1},
        }
    )
    with deployed_app(config, APP, PREFIX) as base, api_client(base, timeout=120) as client:
        yield client


def _embed(client: httpx.Client, items, **extra) -> httpx.Response:
    return client.post("/v1/embeddings", json={"model": "tiny-vl", "input": items, **extra})


def test_text_and_image_items_match_the_core(served, media, tiny_vl_embedder):
    image = png_bytes(64, 48)
    items = [
        {"text": "a red box", "image": data_uri(image)},
        "plain text",
        {"image": data_uri(image), "instruction": "Find the matching product photo"},
        {"text": "fetched", "image": media.url("/photo.png")},
    ]
    response = _embed(served, items, dimensions=64)
    assert response.status_code == 200, response.text
    body = response.json()
    reference_items = [
        {"text": "a red box", "image": image},
        "plain text",
        {"image": image, "instruction": "Find the matching product photo"},
        {"text": "fetched", "image": media.image},
    ]
    reference = tiny_vl_embedder.embed(reference_items, dim=64)
    rows = np.asarray([row["embedding"] for row in body["data"]], dtype=np.float32)
    assert rows.shape == (4, 64)
    assert float(np.max(np.abs(rows - reference.embeddings.numpy()))) <= TOL
    assert body["usage"]["prompt_tokens"] == sum(reference.sequence_lengths)
    assert media.requests and media.requests[-1][0] == "/photo.png"


def test_multi_media_items_match_the_core(served, media, tiny_vl_embedder, tmp_path):
    """Lists of images, texts, frames and videos, and per-item fps / max_frames, through HTTP:
    the same vectors as the core on the same bytes (a batch mixing them with single items)."""
    from media_support import write_mp4

    rng = np.random.default_rng(1)
    ramp = np.linspace(0, 255, 64, dtype=np.float32)
    clip = np.stack(
        [np.stack([np.add.outer(ramp[:48] * 0.5, ramp + 8 * t) % 256] * 3, -1) for t in range(12)]
    ).astype(np.uint8)
    write_mp4(tmp_path / "clip.mp4", clip, fps=4)
    clip_bytes = (tmp_path / "clip.mp4").read_bytes()
    pages = [png_bytes(64, 90, tuple(int(v) for v in rng.integers(0, 256, 3))) for _ in range(3)]
    frames = [png_bytes(32, 24, tuple(int(v) for v in rng.integers(0, 256, 3))) for _ in range(70)]
    video = data_uri(clip_bytes, "video/mp4")
    uris = [data_uri(frame) for frame in frames]
    items = [
        {"image": [data_uri(page) for page in pages], "text": "Q3 report, pages 1-3"},
        {"image": data_uri(pages[0]), "text": ["page one", "page two"]},
        {"video": uris[:4]},
        {"video": uris},  # 70 frames: sampled down to 64
        {"video": [video, uris[:4]], "fps": 4, "max_frames": 6},
        {"video": video, "fps": 2},
        "a single text",
        {"image": media.url("/photo.png")},  # fetched: the SSRF rules apply per medium
    ]
    response = _embed(served, items)
    assert response.status_code == 200, response.text
    reference_items = [
        {"image": pages, "text": "Q3 report, pages 1-3"},
        {"image": pages[0], "text": ["page one", "page two"]},
        {"video": frames[:4]},
        {"video": frames},
        {"video": [clip_bytes, frames[:4]], "fps": 4, "max_frames": 6},
        {"video": clip_bytes, "fps": 2},
        "a single text",
        {"image": media.image},
    ]
    reference = tiny_vl_embedder.embed(reference_items)
    rows = np.asarray([row["embedding"] for row in response.json()["data"]], dtype=np.float32)
    assert float(np.max(np.abs(rows - reference.embeddings.numpy()))) <= TOL
    assert response.json()["usage"]["prompt_tokens"] == sum(reference.sequence_lengths)

    errors = [
        ([{"image": [data_uri(pages[0]), "file:///etc/passwd"]}], 400, "media_source_forbidden"),
        ([{"video": [video, [uris[0], "http://10.0.0.1/x.png"]]}], 400, "media_url_forbidden"),
        ([{"video": [video, video], "fps": 0}], 400, "invalid_input"),  # the core's rule
        ([{"video": uris[:2], "max_frames": 4}], 400, "invalid_input"),  # frames ignore it
        ([{"image": []}], 400, "invalid_input"),
    ]
    for bad, status, code in errors:
        error = assert_openai_error(_embed(served, bad), status, code)
        if code.startswith("media_"):
            assert error["param"] in ("input[0].image[1]", "input[0].video[1][1]")


def test_vl_input_errors(served):
    image = data_uri(png_bytes())
    cases = [
        ([{"text": "x", "image": "file:///etc/passwd"}], 400, "media_source_forbidden"),
        ([{"text": "x", "image": "/etc/passwd"}], 400, "media_source_forbidden"),
        ([{"video": ["file:///tmp/frame.png", image]}], 400, "media_source_forbidden"),
        ([{"text": "x", "image": "data:image/png;base64,%%%"}], 400, "invalid_media"),
        ([{"text": "x", "image": data_uri(b"plain bytes, not an image")}], 400, "invalid_media"),
        # A video that does not decode: the same 400 as an image that does not (the image is
        # refused by the ingress's header check, `invalid_media`; a video only by the replica's
        # decoder, the core's `invalid_input`).
        ([{"video": data_uri(b"\0\0\0\x18ftypmp42 no video", "video/mp4")}], 400, "invalid_input"),
        ([{"text": "x", "image": data_uri(b"\0" * 300_000)}], 413, "media_too_large"),
        ([{"text": "x", "audio": image}], 400, "invalid_input"),
        ([{}], 400, "invalid_input"),  # the core: an item needs text, image or video
        ([{"text": "x", "image": image}], None, None),  # control: the same shape is fine
    ]
    for items, status, code in cases:
        response = _embed(served, items)
        if status is None:
            assert response.status_code == 200, response.text
        else:
            assert_openai_error(response, status, code)


@pytest.mark.parametrize(
    "make_url",
    [
        lambda rec, srv: f"{rec.url}/x.png",
        lambda rec, srv: f"http://localhost:{rec.port}/x.png",
        lambda rec, srv: srv.url("/to-loopback"),  # an allowed host redirecting to loopback
        lambda rec, srv: "http://169.254.169.254/latest/meta-data/iam",
        lambda rec, srv: "http://10.0.0.1/x.png",
    ],
    ids=["loopback", "localhost", "redirect-to-loopback", "metadata", "private-10"],
)
def test_ssrf_attempts_refused_without_connecting(served, media, recorder, make_url):
    url = make_url(recorder, media)
    response = _embed(served, [{"text": "x", "image": url}])
    error = assert_openai_error(response, 400, "media_url_forbidden")
    assert error["param"] == "input[0].image"
    assert (
        "/admin" not in error["message"] and "meta-data" not in error["message"]
    )  # no paths echoed
    assert recorder.connections == 0


def test_chat_form_messages_match_the_same_item(served, media, recorder, tiny_vl_embedder):
    """vLLM's chat-embedding request (as MTEB's HTTP wrapper sends images): a system message
    (the instruction) and a user message of text and image_url parts, a data URI and an
    allowed URL, gives the core's vector of the same item on the same bytes, wherever the text
    parts sit (images keep their order); /tokenize counts what it embeds; URLs inside the network are refused without
    a connection, the error naming the part."""
    image = png_bytes(64, 48)
    instruction = "Find the matching product photo"
    messages = [
        {"role": "system", "content": instruction},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "a red box"},
                {"type": "image_url", "image_url": {"url": data_uri(image)}},
                {"type": "image_url", "image_url": {"url": media.url("/photo.png")}},
            ],
        },
    ]
    response = served.post("/v1/embeddings", json={"model": "tiny-vl", "messages": messages})
    assert response.status_code == 200, response.text
    item = {"text": "a red box", "image": [image, media.image], "instruction": instruction}
    reference = tiny_vl_embedder.embed([item])
    rows = np.asarray([row["embedding"] for row in response.json()["data"]], dtype=np.float32)
    assert rows.shape == (1, reference.embeddings.shape[1])
    assert float(np.max(np.abs(rows - reference.embeddings.numpy()))) <= TOL
    assert response.json()["usage"]["prompt_tokens"] == reference.sequence_lengths[0]
    # The text moved, the images swapped: the official prompt puts images before texts,
    # in their own order.
    text, data_part, url_part = messages[1]["content"]
    reordered = [messages[0], {"role": "user", "content": [url_part, text, data_part]}]
    again = served.post("/v1/embeddings", json={"model": "tiny-vl", "messages": reordered})
    swapped = tiny_vl_embedder.embed(
        [{"text": "a red box", "image": [media.image, image], "instruction": instruction}]
    )
    rows = np.asarray([row["embedding"] for row in again.json()["data"]], dtype=np.float32)
    assert float(np.max(np.abs(rows - swapped.embeddings.numpy()))) <= TOL

    tokenized = served.post("/tokenize", json={"model": "tiny-vl", "messages": messages})
    assert tokenized.status_code == 200, tokenized.text
    assert tokenized.json()["count"] == reference.sequence_lengths[0]

    bad = [messages[0], {"role": "user", "content": [
        {"type": "text", "text": "x"},
        {"type": "image_url", "image_url": {"url": f"{recorder.url}/x.png"}},
    ]}]  # fmt: skip
    error = assert_openai_error(
        served.post("/v1/embeddings", json={"model": "tiny-vl", "messages": bad}),
        400,
        "media_url_forbidden",
    )
    assert error["param"] == "messages[1].content[1].image_url.url", error
    assert error["message"].startswith("messages[1].content[1].image_url.url: ")
    assert recorder.connections == 0
