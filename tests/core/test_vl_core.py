"""The multimodal core (Qwen3-VL-Embedding) against the official algorithm and its invariants.

CPU, fp32, offline: a tiny random Qwen3-VL checkpoint. The reference below is written from the
official `Qwen3VLEmbedder` (QwenLM/Qwen3-VL-Embedding `src/models/qwen3_vl_embedding.py`):
`format_model_input`, `process_vision_info`, one right-padded processor call with truncation,
`Qwen3VLModel.last_hidden_state`, last-token pooling, L2 normalisation. It shares no code with
`qwen3_embed.vl`.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import struct
import subprocess
import sys
import textwrap
import threading
import unicodedata
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from media_support import decord_like_reader, write_mp4
from PIL import Image

pytest.importorskip("torchvision")
pytest.importorskip("qwen_vl_utils")
av = pytest.importorskip("av")

from qwen3_embed import (  # noqa: E402
    DecodeLimitError,
    DimensionError,
    Embedder,
    InputError,
    InputTooLongError,
    MissingExtraError,
    PreparedInput,
    Preparer,
)
from qwen3_embed.vl.items import conversation  # noqa: E402
from qwen3_embed.vl.limits import ItemBudget  # noqa: E402
from qwen3_embed.vl.media import MediaOptions  # noqa: E402

ATOL = 1e-5

# The official constants, restated from the official file (not imported from qwen3_embed).
OFFICIAL_MIN_PIXELS = 4 * 32 * 32
OFFICIAL_MAX_PIXELS = 1800 * 32 * 32
OFFICIAL_FPS = 1
OFFICIAL_MAX_FRAMES = 64
OFFICIAL_TOTAL_PIXELS = 10 * 768 * 32 * 32
OFFICIAL_DEFAULT_INSTRUCTION = "Represent the user's input."


# --------------------------------------------------------------------------- reference code
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tiff", ".svg")


def official_sample_frames(frames: list, max_segments: int) -> list:
    """The official `sample_frames` (January 2026): short lists as they are, long ones spread."""
    if len(frames) <= max_segments:
        return frames
    return [frames[i] for i in np.linspace(0, len(frames) - 1, max_segments, dtype=int).tolist()]


def official_is_video_input(video) -> bool:
    """The official `is_video_input`: a string, or a list starting with a frame (PIL image or a
    path with an image suffix), is ONE video."""
    if isinstance(video, str):
        return True
    if isinstance(video, list) and video:
        first = video[0]
        if isinstance(first, Image.Image):
            return True
        if isinstance(first, str):
            return Path(first.lower()).suffix in IMAGE_SUFFIXES
    return False


def official_format_model_input(
    text=None, image=None, video=None, instruction=None, fps=None, max_frames=None
) -> list[dict]:
    """The official `format_model_input` (January 2026), minus its "NULL" substitute for empty
    items: every value may be a list; content = videos, images, texts."""
    if instruction:
        instruction = instruction.strip()
        if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
            instruction = instruction + "."
    texts = [] if text is None else [text] if isinstance(text, str) else list(text)
    images = [] if image is None else image if isinstance(image, list) else [image]
    videos = [] if video is None else [video] if official_is_video_input(video) else video
    content: list[dict] = []
    for one in videos:
        if isinstance(
            one, list
        ):  # frames: sampled with the embedder's max_frames, never the item's
            frames = official_sample_frames(one, OFFICIAL_MAX_FRAMES)
            frames = ["file://" + frame if isinstance(frame, str) else frame for frame in frames]
            content.append(
                {"type": "video", "video": frames, "total_pixels": OFFICIAL_TOTAL_PIXELS}
            )
        else:  # a file: the item's fps / max_frames, else the embedder's; no total_pixels
            content.append(
                {
                    "type": "video",
                    "video": "file://" + one,
                    "fps": fps or OFFICIAL_FPS,
                    "max_frames": max_frames or OFFICIAL_MAX_FRAMES,
                }
            )
    for one in images:
        content.append(
            {
                "type": "image",
                "image": one if isinstance(one, Image.Image) else "file://" + one,
                "min_pixels": OFFICIAL_MIN_PIXELS,
                "max_pixels": OFFICIAL_MAX_PIXELS,
            }
        )
    content += [{"type": "text", "text": one} for one in texts]
    system = {"type": "text", "text": instruction or OFFICIAL_DEFAULT_INSTRUCTION}
    return [{"role": "system", "content": [system]}, {"role": "user", "content": content}]


def official_embed(
    reference, conversations: list[list[dict]], max_length: int = 8192
) -> torch.Tensor:
    """The official `_preprocess_inputs` + forward + `_pooling_last` + normalize, for one batch."""
    from qwen_vl_utils import vision_process
    from qwen_vl_utils.vision_process import process_vision_info

    processor, model = reference
    text = processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vision_process, "get_video_reader_backend", lambda: "test_av")
        patch.setitem(vision_process.VIDEO_READER_BACKENDS, "test_av", decord_like_reader)
        images, video_inputs, video_kwargs = process_vision_info(
            conversations, image_patch_size=16, return_video_metadata=True, return_video_kwargs=True
        )
    videos = video_metadata = None
    if video_inputs is not None:
        videos, video_metadata = (list(part) for part in zip(*video_inputs, strict=True))
    inputs = processor(
        text=text, images=images, videos=videos, video_metadata=video_metadata, truncation=True,
        max_length=max_length, padding=True, do_resize=False, return_tensors="pt", **video_kwargs,
    )  # fmt: skip
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
    attention_mask = inputs["attention_mask"]
    col = attention_mask.shape[1] - attention_mask.flip(dims=[1]).argmax(dim=1) - 1
    pooled = hidden[torch.arange(hidden.shape[0]), col]
    return F.normalize(pooled, p=2, dim=-1)


@pytest.fixture(scope="module")
def reference(tiny_vl_model_dir):
    """The official pair: processor (right padding) and the backbone of the generation checkpoint."""
    from transformers import Qwen3VLForConditionalGeneration, Qwen3VLProcessor

    processor = Qwen3VLProcessor.from_pretrained(tiny_vl_model_dir, padding_side="right")
    model = Qwen3VLForConditionalGeneration.from_pretrained(
        tiny_vl_model_dir, dtype=torch.float32
    ).model.eval()
    return processor, model


# --------------------------------------------------------------------------- test media
def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels in a few dozen bytes (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> SimpleNamespace:
    directory = tmp_path_factory.mktemp("vl-media")
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (100, 150, 3), dtype=np.uint8))
    photo.save(directory / "photo.png")
    # A smooth clip (noise would make the encoder's job and the test's tolerance meaningless).
    ramp = np.linspace(0, 255, 64, dtype=np.float32)
    clip = np.stack(
        [
            np.stack([np.add.outer(ramp[:48] * 0.5, ramp * 0.5 + 8 * t) % 256] * 3, axis=-1)
            for t in range(12)
        ]
    ).astype(np.uint8)
    write_mp4(directory / "clip.mp4", clip, fps=4)
    # 8 s at 25 fps with a keyframe every 25 frames and B-frames: its 8 sampled frames are
    # reached by seeking (see video.py), and must be exactly the frames a decode from the start
    # gives (the official readers count frames that way).
    moving = np.stack([np.roll(clip[t % 12], 3 * t, axis=1) for t in range(200)])
    write_mp4(
        directory / "long.mp4", moving, fps=25, codec="libx264", options={"g": "25", "bf": "2"}
    )
    return SimpleNamespace(
        dir=directory,
        photo=photo,
        photo_path=str(directory / "photo.png"),
        photo_bytes=(directory / "photo.png").read_bytes(),
        rgba=Image.fromarray(rng.integers(0, 256, (70, 50, 4), dtype=np.uint8), "RGBA"),
        frames=[
            Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)) for _ in range(5)
        ],
        clip_path=str(directory / "clip.mp4"),
        long_clip_path=str(directory / "long.mp4"),
        # 70 tiny frames: more than the 64 a frame list keeps, so it is sampled down.
        many_frames=[
            Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)) for _ in range(70)
        ],
        pages=[
            Image.fromarray(rng.integers(0, 256, (90, 64, 3), dtype=np.uint8)) for _ in range(3)
        ],
    )


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


def pixel_arrays(embedder: Embedder, item) -> dict[str, np.ndarray]:
    return embedder.prepare([item])[0].media


# --------------------------------------------------------------------------- parity
PARITY_CASES = {
    "text": lambda m: {"text": "A dog on a beach"},
    "image (path)": lambda m: {"image": m.photo_path},
    "text + RGBA image": lambda m: {"text": "Description", "image": m.rgba},
    "per-item instruction": lambda m: {
        "text": "query",
        "instruction": "Retrieve images that match the query",
    },
    "instruction with punctuation + spaces": lambda m: {
        "text": "a cat",
        "instruction": "  Find the picture!  ",
    },
    "video (frame list)": lambda m: {"video": m.frames},
    "video (file)": lambda m: {"video": m.clip_path},
    "long video file (sampled by seeking)": lambda m: {"video": m.long_clip_path},
    "video + image + text": lambda m: {"text": "all three", "image": m.photo, "video": m.clip_path},
    # Several media and texts in one item (the January 2026 official embedder).
    "2 images": lambda m: {"image": [m.photo, m.rgba]},
    "image + text + text": lambda m: {"image": m.photo_path, "text": ["page one", "page two"]},
    "multi-page document": lambda m: {"image": m.pages, "text": "Q3 report", "instruction": "Doc"},
    "4-frame list (kept as is)": lambda m: {"video": m.frames[:4]},
    "70-frame list (sampled to 64)": lambda m: {"video": m.many_frames},
    "frame list given as one-element list of lists": lambda m: {"video": [m.frames[:3]]},
    "2 videos: file + frame list": lambda m: {"video": [m.clip_path, m.frames[:4]]},
    "2 videos: frame lists": lambda m: {"video": [m.frames[:2], m.frames[1:]], "text": "two"},
    "per-item fps / max_frames on a file": lambda m: {
        "video": m.clip_path,
        "fps": 4,
        "max_frames": 6,
    },
    "per-item fps on a file beside a frame list": lambda m: {
        "video": [m.frames[:2], m.clip_path],
        "fps": 2.5,
    },
    "everything": lambda m: {
        "video": [m.clip_path, m.frames],
        "image": [m.photo, m.rgba],
        "text": ["a", "b"],
        "max_frames": 4,
    },
}


# ~4,900 tokens (32 temporal patches of at least 128 tokens): padding a whole batch to it is slow
# on CPU, so the reference embeds it in a batch of its own.
LONG_CASES = ("70-frame list (sampled to 64)",)


def test_parity_with_official_embedder(tiny_vl_embedder, reference, media):
    names = [name for name in PARITY_CASES if name not in LONG_CASES] + list(LONG_CASES)
    items = [PARITY_CASES[name](media) for name in names]
    ours = tiny_vl_embedder.embed(["A dog on a beach"] + items).embeddings
    conversations = [official_format_model_input(**item) for item in items]
    split = len(names) - len(LONG_CASES)
    expected = torch.cat(
        [
            official_embed(reference, conversations[:split]),
            official_embed(reference, conversations[split:]),
        ]
    )
    assert torch.equal(ours[0], ours[1]), "a plain string is the same item as {'text': ...}"
    diffs = (ours[1:] - expected).abs().max(dim=1).values
    report = {name: f"{diff:.2e}" for name, diff in zip(names, diffs.tolist(), strict=True)}
    assert (diffs <= ATOL).all(), report
    assert torch.allclose(ours.norm(dim=1), torch.ones(len(ours)), atol=1e-6)
    assert ours.dtype == torch.float32


def test_multi_media_items_batched_equal_alone(tiny_vl_embedder, media):
    """One padded batch mixing every multi-media case with single-medium items: each row equals
    the item embedded alone."""
    names = [
        "text",
        "image (path)",
        "video (file)",
        "2 images",
        "image + text + text",
        "4-frame list (kept as is)",
        "70-frame list (sampled to 64)",
        "2 videos: file + frame list",
        "per-item fps / max_frames on a file",
        "everything",
    ]
    prepared = tiny_vl_embedder.prepare([PARITY_CASES[name](media) for name in names])
    together = tiny_vl_embedder.forward_pooled(prepared)
    alone = torch.cat([tiny_vl_embedder.forward_pooled([item]) for item in prepared])
    assert (together - alone).abs().max() <= ATOL


def test_frame_lists_keep_short_lists_and_sample_long_ones(tiny_vl_embedder, media):
    """4 frames stay 4 (2 temporal patches); 70 become 64 (32); a file follows the item's fps."""
    four, five, seventy, clip, clip_fast = tiny_vl_embedder.prepare(
        [
            {"video": media.frames[:4]},
            {"video": media.frames},  # odd: qwen-vl-utils repeats the last frame -> 6
            {"video": media.many_frames},
            {"video": media.clip_path},
            {"video": media.clip_path, "fps": 4, "max_frames": 6},
        ]
    )
    grid_t = [p.media["video_grid_thw"][0, 0] for p in (four, five, seventy, clip, clip_fast)]
    assert grid_t == [2, 3, 32, 2, 3]
    two = tiny_vl_embedder.prepare([{"video": [media.frames[:2], media.clip_path]}])[0]
    assert two.media["video_grid_thw"].shape == (2, 3)


def test_call_instruction_matches_official_item_instruction(tiny_vl_embedder, reference, media):
    instruction = "Retrieve images that match the query"
    items = [
        {"text": "a red car"},
        {"image": media.photo},
        {"text": "own", "instruction": "Own task"},
    ]
    ours = tiny_vl_embedder.embed(items, instruction=instruction).embeddings
    conversations = [
        official_format_model_input(text="a red car", instruction=instruction),
        official_format_model_input(image=media.photo, instruction=instruction),
        official_format_model_input(text="own", instruction="Own task"),  # the item's own wins
    ]
    assert (ours - official_embed(reference, conversations)).abs().max() <= ATOL


def test_truncation_matches_official(tiny_vl_embedder, tiny_vl_model_dir, reference, media):
    long_text = " ".join(["The quick brown fox jumps over the lazy dog."] * 20)
    item = {"text": long_text, "image": media.photo}
    full_ids = tiny_vl_embedder.prepare([item])[0].input_ids
    image_token_id = reference[0].image_token_id
    last_media = max(i for i, token in enumerate(full_ids) if token == image_token_id)
    max_length = last_media + 5  # cuts the text, keeps every image token
    assert max_length < len(full_ids)
    short = Embedder(
        Preparer.from_model_dir("tiny-vl", tiny_vl_model_dir, tiny_vl_embedder.info, max_length),
        tiny_vl_embedder.backend,
    )
    out = short.embed([item, {"text": long_text}])
    assert out.sequence_lengths == [max_length, max_length]
    expected = official_embed(
        reference,
        [official_format_model_input(**item), official_format_model_input(text=long_text)],
        max_length,
    )
    assert (out.embeddings - expected).abs().max() <= ATOL

    with pytest.raises(InputTooLongError, match=r"input\[0\].*max_length"):
        short.embed([item], truncate=False)
    tiny = Embedder(
        Preparer.from_model_dir(
            "tiny-vl", tiny_vl_model_dir, tiny_vl_embedder.info, last_media - 3
        ),
        tiny_vl_embedder.backend,
    )
    with pytest.raises(
        InputTooLongError, match=r"input\[1\]: its media end at token \d+, beyond max_length"
    ):
        tiny.embed(["fits after truncation", item])


# --------------------------------------------------------------------------- invariants
@pytest.fixture(scope="module")
def invariant_items(media) -> list:
    return [
        "a short text",
        {"text": "a much longer text that pads the others " * 3},
        {"image": media.photo},
        {"text": "caption", "image": media.rgba, "instruction": "Find it"},
        {"video": media.clip_path},
    ]


def test_batched_equals_alone(tiny_vl_embedder, invariant_items):
    prepared = tiny_vl_embedder.prepare(invariant_items)
    together = tiny_vl_embedder.forward_pooled(prepared)
    alone = torch.cat([tiny_vl_embedder.forward_pooled([item]) for item in prepared])
    assert (together - alone).abs().max() <= 1e-5
    reordered = tiny_vl_embedder.forward_pooled(prepared[::-1]).flip(0)
    assert (together - reordered).abs().max() <= 1e-5


def test_matryoshka_truncates_before_normalising(tiny_vl_embedder, invariant_items):
    prepared = tiny_vl_embedder.prepare(invariant_items)
    full = tiny_vl_embedder.forward_pooled(prepared)
    for dim in (64, 100, 128):
        vectors = tiny_vl_embedder.embed_prepared(prepared, dim=dim).embeddings
        assert vectors.shape == (len(prepared), dim)
        assert (vectors - F.normalize(full[:, :dim], p=2, dim=1)).abs().max() <= 1e-5
        assert torch.allclose(vectors.norm(dim=1), torch.ones(len(prepared)), atol=1e-6)


def test_deterministic(tiny_vl_embedder, invariant_items):
    first = tiny_vl_embedder.embed(invariant_items).embeddings
    assert torch.equal(first, tiny_vl_embedder.embed(invariant_items).embeddings)


@pytest.mark.parametrize("dim", [63, 129, 0, 64.0, True])
def test_dim_outside_range_names_it(tiny_vl_embedder, dim):
    assert (tiny_vl_embedder.min_dim, tiny_vl_embedder.hidden_size) == (64, 128)
    with pytest.raises(DimensionError, match=r"\[64, 128\]"):
        tiny_vl_embedder.embed(["x"], dim=dim)


def test_prepared_rows_round_trip(tiny_vl_embedder, media):
    prepared = tiny_vl_embedder.prepare(
        [{"text": "t", "image": media.photo}, {"video": media.clip_path}, "text"]
    )
    rows = [item.to_row() for item in prepared]
    assert set(rows[0]) == {
        "input_ids", "media_image_pixels", "media_image_shapes", "media_image_grid_thw",
    }  # fmt: skip
    assert set(rows[1]) == {
        "input_ids", "media_video_pixels", "media_video_shapes", "media_video_grid_thw",
    }  # fmt: skip
    restored = [PreparedInput.from_row(row) for row in rows]
    assert torch.equal(
        tiny_vl_embedder.embed_prepared(prepared).embeddings,
        tiny_vl_embedder.embed_prepared(restored).embeddings,
    )


def test_uint8_pixels_normalised_by_the_backend_equal_the_processors_patches(
    tiny_vl_embedder, media
):
    """The CPU stage ships resized uint8 pixels; the backend's patches equal those the processor
    computes from the same media in one call (the float32 arrays shipped before), bit for bit
    on CPU, and the shipped bytes are 1/8 (images) and 1/4 (videos) of the float32 patches."""
    from qwen3_embed.vl.pixels import media_tensors

    impl = tiny_vl_embedder.preparer.impl
    item = {"video": [media.clip_path, media.frames], "image": [media.photo, media.rgba]}
    parsed = impl_parse(impl, item)
    prompt = impl.processor.apply_chat_template(
        conversation(parsed), add_generation_prompt=True, tokenize=False
    )
    loaded = impl._load_media(parsed, ItemBudget(10**12, 10**9))
    expected = impl._process(prompt, loaded, truncation=False, max_length=None)
    (prepared,) = tiny_vl_embedder.prepare([item])
    got = media_tensors([prepared.media], impl.processor, torch.device("cpu"))
    for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
        assert torch.equal(got[key], expected[key]), key
    assert prepared.media["image_pixels"].dtype == np.uint8
    assert expected["pixel_values"].numpy().nbytes == 8 * prepared.media["image_pixels"].nbytes
    assert (
        expected["pixel_values_videos"].numpy().nbytes == 4 * prepared.media["video_pixels"].nbytes
    )


def impl_parse(impl, item):
    from qwen3_embed.vl.items import parse_item

    return parse_item(item, None)


def test_num_tokens_count_vision_tokens(tiny_vl_embedder, media):
    text_only, with_image = tiny_vl_embedder.prepare(
        [{"text": "x"}, {"text": "x", "image": media.photo}]
    )
    # 100x150 -> smart_resize -> 96x160 -> 6x10 patches of 16 -> 15 merged tokens + vision start/end
    assert with_image.num_tokens - text_only.num_tokens == 15 + 2
    assert with_image.media["image_grid_thw"].tolist() == [[1, 6, 10]]


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


# --------------------------------------------------------------------------- errors
ERROR_CASES = {
    "empty item": (lambda m: {}, r"the item is empty"),
    "only None values": (lambda m: {"text": None, "image": None}, r"the item is empty"),
    "unknown key": (
        lambda m: {"text": "x", "img": "a.png"},
        r"unknown key\(s\) \['img'\]; valid keys are: text, image, video, instruction, fps, max_frames",
    ),
    "item of wrong type": (lambda m: 42, r"an item must be a string or a dict"),
    "text of wrong type": (lambda m: {"text": 3}, r"text must be a string"),
    "empty text": (lambda m: {"text": "  ", "image": m.photo}, r"text is empty"),
    "instruction of wrong type": (
        lambda m: {"text": "x", "instruction": 1},
        r"instruction must be a string",
    ),
    "image of wrong type": (
        lambda m: {"image": 3.5},
        r"image: unsupported media source of type float",
    ),
    "corrupt image bytes": (
        lambda m: {"image": b"not an image at all"},
        r"image: could not decode the image",
    ),
    "truncated image": (
        lambda m: {"image": m.photo_bytes[:200]},
        r"image: could not decode the image",
    ),
    "bad base64": (
        lambda m: {"image": "data:image/png;base64,@@not base64@@"},
        r"image: the data URI payload is not valid base64",
    ),
    "data URI without base64": (
        lambda m: {"image": "data:image/png,abc"},
        r"image: a data URI must look like",
    ),
    "decompression bomb": (
        lambda m: {"image": png_header_only(100_000, 100_000)},
        r"image: image refused as a decompression bomb",
    ),
    "over the pixel limit": (
        lambda m: {"image": png_header_only(10_000, 10_000)},
        r"image: image is 10000x10000 = 100000000 pixels, more than the limit of 89478485",
    ),
    "missing file": (
        lambda m: {"image": "/no/such/photo.png"},
        r"image: no such file: '/no/such/photo.png'",
    ),
    "extreme aspect ratio": (
        lambda m: {"image": Image.new("RGB", (1000, 4))},
        r"image: cannot be used \(absolute aspect ratio",
    ),
    "bad array": (
        lambda m: {"image": np.zeros((4, 4), dtype=np.float32)},
        r"image: an image array must be uint8",
    ),
    "reserved vision token in text": (
        lambda m: {"text": "look <|image_pad|> here", "image": m.photo},
        r"text and instruction must not contain the reserved token <\|image_pad\|>",
    ),
    "reserved vision token in instruction": (
        lambda m: {"text": "x", "instruction": "<|video_pad|>"},
        r"text and instruction must not contain the reserved token <\|video_pad\|>",
    ),
    "empty video list": (lambda m: {"video": []}, r"video is an empty list"),
    "empty frame list among videos": (
        lambda m: {"video": [m.clip_path, []]},
        r"video\[1\] is an empty frame list",
    ),
    "empty image list": (lambda m: {"image": [], "text": "x"}, r"image is an empty list"),
    "empty text list": (lambda m: {"text": [], "image": m.photo}, r"text is an empty list"),
    "lone surrogate in a text string": (lambda m: "x \ud800", r"text is not valid Unicode"),
    "lone surrogate in a text list": (
        lambda m: {"text": ["ok", "\udc00"], "image": m.photo},
        r"text\[1\] is not valid Unicode text: it holds a lone surrogate U\+DC00 at character 0",
    ),
    "lone surrogate in the item's instruction": (
        lambda m: {"text": "x", "instruction": "\ud83d find"},
        r"instruction is not valid Unicode",
    ),
    "empty text in a list": (lambda m: {"text": ["ok", " "]}, r"text\[1\] is empty"),
    "text list of wrong type": (lambda m: {"text": ["ok", 3]}, r"text\[1\] must be a string"),
    "bad second image names it": (
        lambda m: {"image": [m.photo, b"junk"]},
        r"image\[1\]: could not decode the image",
    ),
    "bad second video names it": (
        lambda m: {"video": [m.clip_path, "/no/such/clip.mp4"]},
        r"video\[1\]: no such file",
    ),
    "fps of 0 (the official code would silently use 1)": (
        lambda m: {"video": m.clip_path, "fps": 0},
        r"fps must be > 0",
    ),
    "fps of wrong type": (lambda m: {"video": m.clip_path, "fps": "2"}, r"fps must be a finite"),
    "max_frames of 1": (
        lambda m: {"video": m.clip_path, "max_frames": 1},
        r"max_frames must be an integer >= 2",
    ),
    "max_frames on a frame list only": (
        lambda m: {"video": m.frames, "max_frames": 8},
        r"fps and max_frames apply to video files only",
    ),
    "fps without a video": (lambda m: {"text": "x", "fps": 2}, r"fps and max_frames apply"),
    "reserved token with two images": (
        lambda m: {"text": "<|image_pad|>", "image": [m.photo, m.photo]},
        r"text and instruction must not contain the reserved token <\|image_pad\|>",
    ),
    "corrupt frame": (
        lambda m: {"video": [m.photo, b"junk"]},
        r"video: video frame 1: could not decode the image",
    ),
    "frames of different sizes": (
        lambda m: {"video": [m.photo, m.rgba]},
        r"video: video frames must all have the same size",
    ),
    "corrupt video": (
        lambda m: {"video": b"\x00\x00\x00\x18ftypmp42 not really a video"},
        r"video: could not decode the video",
    ),
    "image as video": (lambda m: {"video": m.photo_bytes}, r"video: "),
    "missing video": (lambda m: {"video": "/no/such/clip.mp4"}, r"video: no such file"),
}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_item_is_an_input_error_naming_its_index(tiny_vl_embedder, media, case):
    build, reason = ERROR_CASES[case]
    with pytest.raises(InputError, match=r"^input\[1\]: " + reason):
        tiny_vl_embedder.embed(["a good item", build(media), "another good one"])


def test_long_videos_are_decoded_with_bounded_work(tiny_vl_embedder, media, monkeypatch):
    """The red-team's clip: many static frames (cheap to store, so every size limit passes).
    Sampling seeks to the keyframe before each sampled frame instead of decoding every frame up
    to the last one; a video whose keyframes are too far apart for that is refused past the
    item's decode budget (`decode_limit_exceeded`: a 413 on the API, an error row in a job)."""
    from qwen3_embed.vl.video import load_video

    static = np.full((6000, 32, 32, 3), 90, dtype=np.uint8)  # 4 minutes at 25 fps
    seekable, one_keyframe = media.dir / "static-g25.mp4", media.dir / "static-1-keyframe.mp4"
    write_mp4(seekable, static, fps=25, options={"g": "25"})
    write_mp4(
        one_keyframe, static, fps=25, codec="libx264", options={"g": "100000", "sc_threshold": "0"}
    )

    budget = ItemBudget(10**12, 10**9, max_decoded_frames=10**9)
    video = load_video(str(seekable), MediaOptions(), budget)
    indices = video.metadata["frames_indices"]
    assert len(indices) == 64 and indices[-1] == 5999 and video.metadata["total_num_frames"] == 6000
    # At most one keyframe interval per sampled frame, not the 6000 frames up to the last one.
    assert 64 <= budget.decoded_frames <= 64 * 25, budget.decoded_frames

    budget = ItemBudget(10**12, 10**9, max_decoded_frames=10**9)
    load_video(str(one_keyframe), MediaOptions(), budget)
    assert budget.decoded_frames == 6000  # nothing to seek to: every frame is decoded

    impl = tiny_vl_embedder.preparer.impl
    monkeypatch.setattr(impl, "media_options", MediaOptions(max_decoded_frames=2000))
    results = tiny_vl_embedder.prepare_each(["fine", {"video": str(one_keyframe)}])
    error = results[1]
    assert isinstance(error, DecodeLimitError) and error.code == "decode_limit_exceeded"
    assert str(error).startswith("input[1]: video: sampling the item's videos needs more than 2000")
    assert not isinstance(results[0], InputError)
    assert not isinstance(tiny_vl_embedder.prepare_each([{"video": str(seekable)}])[0], InputError)
    monkeypatch.setattr(impl, "media_options", MediaOptions(max_decode_s=1e-9))
    with pytest.raises(DecodeLimitError, match=r"video: reading the item's videos took more than"):
        tiny_vl_embedder.prepare([{"video": str(seekable)}])


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


def test_per_item_media_limits(tiny_vl_embedder, tiny_vl_model_dir, media, monkeypatch):
    impl = tiny_vl_embedder.preparer.impl
    monkeypatch.setattr(impl, "media_options", MediaOptions(max_media_per_item=2))
    assert tiny_vl_embedder.prepare([{"image": [media.photo], "video": media.frames}])
    with pytest.raises(
        InputError,
        match=r"input\[0\]: the item has 2 image\(s\) and 1 video\(s\), more than the limit of 2 media per item",
    ):
        tiny_vl_embedder.prepare([{"image": [media.photo, media.photo], "video": media.frames}])
    # photo 150x100 = 15,000 decoded pixels: two fit in 30,000, three do not
    monkeypatch.setattr(impl, "media_options", MediaOptions(max_item_pixels=30_000))
    assert tiny_vl_embedder.prepare([{"image": [media.photo, media.photo]}])
    with pytest.raises(
        InputError, match=r"input\[0\]: image\[2\]: the item's media add up to more than 30000"
    ):
        tiny_vl_embedder.prepare([{"image": [media.photo] * 3}])
    with pytest.raises(InputError, match=r"video: the item's media add up to more than 30000"):
        tiny_vl_embedder.prepare([{"video": media.clip_path, "max_frames": 12, "fps": 4}])
    # Vision tokens: 100x150 -> 15 tokens + 2 per image; the item is refused before the processor
    # runs, whether truncation is on or off, as soon as its media alone pass max_length.
    monkeypatch.undo()
    short = Embedder(
        Preparer.from_model_dir("tiny-vl", tiny_vl_model_dir, tiny_vl_embedder.info, 60),
        tiny_vl_embedder.backend,
    )
    assert short.prepare([{"image": [media.photo, media.photo]}])
    for truncate in (True, False):
        with pytest.raises(
            InputTooLongError,
            match=r"input\[0\]: image\[3\]: the item's media need at least 68 tokens, more than max_length=60",
        ):
            short.prepare([{"image": [media.photo] * 4}], truncate=truncate)


def test_video_list_rule_follows_the_official_is_video_input(tiny_vl_embedder, media):
    """A list starting with an image is one video (frames); any other list is several videos."""
    from qwen3_embed.vl.items import split_videos

    frame_paths = [str(media.dir / f"f{i}.png") for i in range(3)]
    for index, path in enumerate(frame_paths):
        media.frames[index].save(path)
    assert split_videos(media.clip_path) == [media.clip_path]
    assert split_videos(frame_paths) == [frame_paths]  # image suffix: frames
    assert split_videos(media.frames) == [media.frames]
    assert split_videos([media.clip_path, media.clip_path]) == [media.clip_path] * 2
    assert split_videos([frame_paths, media.clip_path]) == [frame_paths, media.clip_path]
    assert len(split_videos([media.photo_bytes, media.photo_bytes])) == 1  # PNG bytes: frames
    clip = Path(media.clip_path).read_bytes()
    assert split_videos([clip, clip]) == [clip, clip]  # mp4 bytes: two videos
    data_uri = "data:image/png;base64," + base64.b64encode(media.photo_bytes).decode()
    assert len(split_videos([data_uri, data_uri])) == 1
    assert split_videos(["https://x.test/a.JPG?size=2", "https://x.test/b.jpg"]) == [
        ["https://x.test/a.JPG?size=2", "https://x.test/b.jpg"]
    ]


def test_prepare_each_keeps_the_good_items(tiny_vl_embedder, media):
    items = [
        "good text",
        {"image": media.photo},
        {"image": b"corrupt"},
        {"text": "good", "image": media.photo},
    ]
    results = tiny_vl_embedder.prepare_each(items)
    assert [type(result) for result in results] == [
        PreparedInput,
        PreparedInput,
        InputError,
        PreparedInput,
    ]
    assert results[2].index == 2 and results[2].reason.startswith("image: could not decode")
    good = [result for result in results if isinstance(result, PreparedInput)]
    expected = tiny_vl_embedder.embed([items[0], items[1], items[3]]).embeddings
    assert torch.equal(tiny_vl_embedder.embed_prepared(good).embeddings, expected)


def test_call_level_errors(tiny_vl_embedder):
    with pytest.raises(InputError, match="instruction must not be empty"):
        tiny_vl_embedder.embed(["x"], instruction="   ")
    with pytest.raises(InputError, match="not a single item"):
        tiny_vl_embedder.embed({"text": "x"})


# --------------------------------------------------------------------------- packaging
def test_vl_model_without_the_extra_names_the_install_command(tiny_vl_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "qwen_vl_utils", None)  # import qwen_vl_utils -> ImportError
    with pytest.raises(
        MissingExtraError, match=r"missing: qwen-vl-utils.*pip install 'qwen3-embed\[vl\]'"
    ):
        Embedder.from_pretrained(tiny_vl_model_dir, device="cpu")
    with pytest.raises(MissingExtraError):
        Preparer.from_pretrained(tiny_vl_model_dir)


def test_text_path_works_without_the_extra(tiny_vl_model_dir, tmp_path):
    """In a fresh interpreter where torchvision, qwen-vl-utils and av cannot be imported."""
    script = textwrap.dedent(
        """
        import sys
        BLOCKED = ("torchvision", "qwen_vl_utils", "av")
        for name in BLOCKED:
            sys.modules[name] = None  # import fails, find_spec says "not installed"
        import qwen3_embed
        from qwen3_embed import Embedder, MissingExtraError
        from qwen3_embed.testing import make_tiny_text_model
        embedder = Embedder.from_pretrained(make_tiny_text_model(sys.argv[1]), device="cpu")
        assert embedder.embed(["hello"]).embeddings.shape == (1, 64)
        try:
            Embedder.from_pretrained(sys.argv[2], device="cpu")
        except MissingExtraError as error:
            assert "pip install 'qwen3-embed[vl]'" in str(error), error
        else:
            raise SystemExit("a VL model loaded without the [vl] extra")
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "text"), str(tiny_vl_model_dir)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_cli_builds_a_loadable_tiny_vl_model(tmp_path):
    from qwen3_embed.cli import main

    assert main(["make-tiny-model", str(tmp_path / "vl"), "--family", "vl"]) == 0
    config = json.loads((tmp_path / "vl" / "config.json").read_text())
    assert config["model_type"] == "qwen3_vl"
    assert config["architectures"] == ["Qwen3VLForConditionalGeneration"]
    assert config["vision_config"]["deepstack_visual_indexes"]
    preparer = Preparer.from_pretrained(tmp_path / "vl")
    assert preparer.info.family == "vl"
    assert preparer.prepare(["hello", {"image": Image.new("RGB", (64, 64))}])


def test_media_options_through_from_pretrained(tiny_vl_model_dir, media):
    locked = Preparer.from_pretrained(
        tiny_vl_model_dir, media_options=MediaOptions(allow_local_paths=False)
    )
    (result,) = locked.prepare_each([{"image": str(media.photo_path)}])
    assert isinstance(result, InputError) and "local" in result.reason
    assert locked.prepare([{"image": media.photo_bytes}])[0].num_tokens > 0


def test_vision_tokens_without_pixels_are_refused_not_embedded(tiny_vl_embedder, media):
    (prepared,) = tiny_vl_embedder.prepare([{"image": media.photo_bytes}])
    stripped = PreparedInput(input_ids=prepared.input_ids, media={})
    with pytest.raises(ValueError, match="inconsistent"):
        tiny_vl_embedder.embed_prepared([stripped])
