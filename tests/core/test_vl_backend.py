"""The multimodal core's embedding path (qwen3_embed/vl/backend.py, Qwen3-VL-Embedding) against
the official algorithm and its invariants.

CPU, fp32, offline: a tiny random Qwen3-VL checkpoint. The reference below is written from the
official `Qwen3VLEmbedder` (QwenLM/Qwen3-VL-Embedding `src/models/qwen3_vl_embedding.py`):
`format_model_input`, `process_vision_info`, one right-padded processor call with truncation,
`Qwen3VLModel.last_hidden_state`, last-token pooling, L2 normalisation. It shares no code with
`qwen3_embed.vl`.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from media_support import decord_like_reader
from PIL import Image

pytest.importorskip("torchvision")
pytest.importorskip("qwen_vl_utils")
av = pytest.importorskip("av")
from qwen3_embed import (  # noqa: E402
    DimensionError,
    Embedder,
    InputError,
    InputTooLongError,
    PreparedInput,
    Preparer,
)
from qwen3_embed.vl.items import conversation  # noqa: E402
from qwen3_embed.vl.limits import ItemBudget  # noqa: E402

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


def test_call_level_errors(tiny_vl_embedder):
    with pytest.raises(InputError, match="instruction must not be empty"):
        tiny_vl_embedder.embed(["x"], instruction="   ")
    with pytest.raises(InputError, match="not a single item"):
        tiny_vl_embedder.embed({"text": "x"})


def test_vision_tokens_without_pixels_are_refused_not_embedded(tiny_vl_embedder, media):
    (prepared,) = tiny_vl_embedder.prepare([{"image": media.photo_bytes}])
    stripped = PreparedInput(input_ids=prepared.input_ids, media={})
    with pytest.raises(ValueError, match="inconsistent"):
        tiny_vl_embedder.embed_prepared([stripped])
