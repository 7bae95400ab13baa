"""Media sources and the media policy of the VL core (qwen3_embed/vl/media.py): every source
form of an image or a video gives the same pixels; local paths and URLs refused where the
policy says; byte and pixel limits.
The test media (`media`) are a session fixture of tests/core/conftest.py."""

from __future__ import annotations

import base64
import functools
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torchvision")
pytest.importorskip("qwen_vl_utils")
av = pytest.importorskip("av")
from qwen3_embed import (  # noqa: E402
    Embedder,
    InputError,
    Preparer,
)
from qwen3_embed.vl.media import MediaOptions  # noqa: E402


def pixel_arrays(embedder: Embedder, item) -> dict[str, np.ndarray]:
    return embedder.prepare([item])[0].media


@pytest.fixture(scope="module")
def http_media(media):
    """The media directory served over loopback HTTP."""

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(media.dir))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# --------------------------------------------------------------------------- media sources
def test_image_sources_are_equivalent(tiny_vl_embedder, media, http_media):
    import fsspec

    with fsspec.open("memory://vl-test/photo.png", "wb") as handle:
        handle.write(media.photo_bytes)
    expected = pixel_arrays(tiny_vl_embedder, {"image": media.photo})
    sources = {
        "path": media.photo_path,
        "pathlib": Path(media.photo_path),
        "file URL": "file://" + media.photo_path,
        "bytes": media.photo_bytes,
        "data URI": "data:image/png;base64," + base64.b64encode(media.photo_bytes).decode(),
        "fsspec URL": "memory://vl-test/photo.png",
        "http URL": f"{http_media}/photo.png",
        "numpy": np.asarray(media.photo),
    }
    for name, source in sources.items():
        arrays = pixel_arrays(tiny_vl_embedder, {"image": source})
        assert arrays.keys() == expected.keys(), name
        for key in expected:
            assert np.array_equal(arrays[key], expected[key]), name


def test_video_sources_are_equivalent(tiny_vl_embedder, media, http_media):
    clip_bytes = Path(media.clip_path).read_bytes()
    expected = tiny_vl_embedder.prepare([{"video": media.clip_path}])[0]
    for source in (
        clip_bytes,
        f"{http_media}/clip.mp4",
        "data:video/mp4;base64," + base64.b64encode(clip_bytes).decode(),
    ):
        prepared = tiny_vl_embedder.prepare([{"video": source}])[0]
        assert prepared.input_ids == expected.input_ids
        assert np.array_equal(prepared.media["video_pixels"], expected.media["video_pixels"])
    # 12 frames at 4 fps = 3 s -> fps=1 gives 3, raised to min_frames 4: grid_t = 4 / temporal patch 2
    assert expected.media["video_grid_thw"][0, 0] == 2
    # frame paths work like frame images
    for index, frame in enumerate(media.frames):
        frame.save(media.dir / f"frame{index}.png")
    from_paths = pixel_arrays(
        tiny_vl_embedder, {"video": [str(media.dir / f"frame{i}.png") for i in range(5)]}
    )
    from_images = pixel_arrays(tiny_vl_embedder, {"video": media.frames})
    assert np.array_equal(from_paths["video_pixels"], from_images["video_pixels"])


def test_media_policy(tiny_vl_embedder, media, http_media, monkeypatch):
    impl = tiny_vl_embedder.preparer.impl
    monkeypatch.setattr(
        impl, "media_options", MediaOptions(allow_local_paths=False, allow_urls=False)
    )
    with pytest.raises(InputError, match=r"input\[0\]: image: local file paths are not allowed"):
        tiny_vl_embedder.prepare([{"image": media.photo_path}])
    with pytest.raises(InputError, match=r"input\[0\]: video: local file paths are not allowed"):
        tiny_vl_embedder.prepare([{"video": media.clip_path}])
    with pytest.raises(InputError, match=r"input\[0\]: image: URLs are not allowed"):
        tiny_vl_embedder.prepare([{"image": f"{http_media}/photo.png"}])
    with pytest.raises(InputError, match=r"input\[0\]: image: URLs are not allowed"):
        tiny_vl_embedder.prepare([{"image": "s3://bucket/photo.png"}])
    assert tiny_vl_embedder.prepare([{"image": media.photo_bytes}])  # inline data stays allowed

    # URLs allowed, local files not: no URL form may reach the local disk.
    monkeypatch.setattr(impl, "media_options", MediaOptions(allow_local_paths=False))
    for sneaky in (
        "file://" + media.photo_path,
        "local://" + media.photo_path,
        "zip://photo.png::file:///tmp/a.zip",
    ):
        with pytest.raises(
            InputError,
            match=r"input\[0\]: image: .*(local file paths are not allowed|may read local files)",
        ):
            tiny_vl_embedder.prepare([{"image": sneaky}])
    assert tiny_vl_embedder.prepare([{"image": f"{http_media}/photo.png"}])


def test_size_limits(tiny_vl_embedder, media, monkeypatch):
    impl = tiny_vl_embedder.preparer.impl
    monkeypatch.setattr(impl, "media_options", MediaOptions(max_bytes=1000))
    encoded = base64.b64encode(media.photo_bytes).decode()
    for source in (media.photo_path, media.photo_bytes, "data:image/png;base64," + encoded):
        with pytest.raises(InputError, match=r"image: .*larger than the limit of 1000 bytes"):
            tiny_vl_embedder.prepare([{"image": source}])
    with pytest.raises(InputError, match=r"video: .*larger than the limit of 1000 bytes"):
        tiny_vl_embedder.prepare([{"video": media.clip_path}])
    monkeypatch.setattr(impl, "media_options", MediaOptions(max_pixels=1000))
    with pytest.raises(
        InputError,
        match=r"video: a video frame is 64x48 = 3072 pixels, more than the limit of 1000",
    ):
        tiny_vl_embedder.prepare([{"video": media.clip_path}])
    with pytest.raises(InputError, match=r"video: video frame 0: image is 60x40 = 2400 pixels"):
        tiny_vl_embedder.prepare([{"video": media.frames}])
    with pytest.raises(ValueError, match="max_bytes"):
        MediaOptions(max_bytes=0)


def test_media_options_through_from_pretrained(tiny_vl_model_dir, media):
    locked = Preparer.from_pretrained(
        tiny_vl_model_dir, media_options=MediaOptions(allow_local_paths=False)
    )
    (result,) = locked.prepare_each([{"image": str(media.photo_path)}])
    assert isinstance(result, InputError) and "local" in result.reason
    assert locked.prepare([{"image": media.photo_bytes}])[0].num_tokens > 0
