"""The batch job's videos (tiny Qwen3-VL checkpoint): a video column holding files (relative
paths, bytes), frame lists and per-row fps / max_frames, and a folder of video files
(`--format videos` / auto); each vector equal to the core's on the same item, and a corrupt or
missing video an `_errors/` row beside the good ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_pipeline_vl import assert_close, outputs, png

from pipelines import JobConfig, run_embedding_job

pytestmark = pytest.mark.requires_vl


def clip(frames: int, shift: int) -> np.ndarray:
    ramp = np.linspace(0, 255, 64, dtype=np.float32)
    return np.stack(
        [
            np.stack([np.add.outer(ramp[:48] * 0.5, ramp + 8 * t + shift) % 256] * 3, -1)
            for t in range(frames)
        ]
    ).astype(np.uint8)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    from media_support import write_mp4

    folder = tmp_path_factory.mktemp("videos")
    (folder / "clips").mkdir()
    write_mp4(folder / "clips" / "a.mp4", clip(12, 0), fps=4)
    write_mp4(folder / "clips" / "b.mp4", clip(8, 40), fps=2)
    (folder / "clips" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is no video")
    return folder


def test_video_column_with_files_frames_and_bad_videos(
    ray_cluster, tiny_vl_model_dir, tiny_vl_embedder, videos, tmp_path
):
    frames = [png((40 * n, 90, 200 - 30 * n), (32, 24)) for n in range(4)]
    b_bytes = (videos / "clips" / "b.mp4").read_bytes()
    rows = [
        {"id": "file", "text": "a clip", "video": "clips/a.mp4", "fps": 2, "max_frames": 4},
        {"id": "second-file", "video": "clips/b.mp4"},
        {"id": "frames", "text": "frames", "video": [f"frame{n}.png" for n in range(4)]},
        {"id": "corrupt", "video": "clips/corrupt.mp4"},
        {"id": "missing", "video": "clips/missing.mp4"},
        {"id": "text", "text": "text only"},
        {"id": "bad-fps", "video": "clips/a.mp4", "fps": "fast"},
        # Images under the same rule: a missing file is `read_error`, a corrupt one `invalid_input`.
        {"id": "missing-image", "image": "clips/missing.png"},
        {"id": "corrupt-image", "image": "clips/corrupt.png"},
    ]
    (videos / "clips" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is no image")
    for n, frame in enumerate(frames):
        (videos / f"frame{n}.png").write_bytes(frame)
    with open(videos / "rows.jsonl", "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    # Bytes (a video file's, and frames as bytes) from a parquet table's binary columns.
    pq.write_table(
        pa.table(
            {
                "id": ["video-bytes"],
                "video": pa.array([b_bytes], pa.binary()),
                "max_frames": pa.array([4], pa.int64()),
            }
        ),
        videos / "bytes.parquet",
    )
    pq.write_table(
        pa.table({"id": ["frame-bytes"], "video": pa.array([frames], pa.list_(pa.binary()))}),
        videos / "frames.parquet",
    )
    output = tmp_path / "out"
    result = run_embedding_job(
        JobConfig(
            input=[
                str(videos / "rows.jsonl"),
                str(videos / "bytes.parquet"),
                str(videos / "frames.parquet"),
            ],
            output=str(output),
            model=str(tiny_vl_model_dir),
            progress=False,
            batch_rows=4,
            id_column="id",
        )
    )
    assert (result.rows_in, result.rows_embedded, result.rows_failed) == (11, 6, 5)
    assert result.consistent
    vectors, errors = outputs(output)
    clips = videos / "clips"
    items = {
        "file": {"text": "a clip", "video": str(clips / "a.mp4"), "fps": 2, "max_frames": 4},
        "second-file": {"video": str(clips / "b.mp4")},
        "frames": {"text": "frames", "video": [frames]},
        "text": {"text": "text only"},
        "video-bytes": {"video": b_bytes, "max_frames": 4},
        "frame-bytes": {"video": [frames]},
    }
    reference = tiny_vl_embedder.embed(list(items.values())).embeddings.numpy()
    assert_close(vectors, dict(zip(items, reference, strict=True)))
    assert set(errors) == {"corrupt", "missing", "bad-fps", "missing-image", "corrupt-image"}
    # One rule for every medium: a file that cannot be read (missing, no permission) is
    # `read_error`, as a 404 is; one that is read but does not decode, or a bad value, is
    # `invalid_input`.
    codes = {row_id: code for row_id, (_, code) in errors.items()}
    assert codes == {
        "missing": "read_error",
        "missing-image": "read_error",
        "corrupt": "invalid_input",
        "corrupt-image": "invalid_input",
        "bad-fps": "invalid_input",
    }
    assert "could not decode the video" in errors["corrupt"][0]
    assert "no such file" in errors["missing"][0] and "missing.mp4" in errors["missing"][0]
    assert "no such file" in errors["missing-image"][0]
    assert "column 'fps' must hold numbers" in errors["bad-fps"][0]


@pytest.mark.slow
def test_video_folder(ray_cluster, tiny_vl_model_dir, tiny_vl_embedder, videos, tmp_path):
    output = tmp_path / "folder-out"
    result = run_embedding_job(
        JobConfig(
            input=str(videos / "clips"),
            output=str(output),
            model=str(tiny_vl_model_dir),
            progress=False,
            batch_rows=4,
        )
    )
    assert (result.rows_in, result.rows_embedded, result.rows_failed) == (3, 2, 1)
    vectors, errors = outputs(output)
    names = ["a.mp4", "b.mp4"]
    reference = tiny_vl_embedder.embed(
        [{"video": str(videos / "clips" / name)} for name in names]
    ).embeddings.numpy()
    assert_close(vectors, dict(zip(names, reference, strict=True)))
    assert list(errors) == ["corrupt.mp4"] and errors["corrupt.mp4"][1] == "invalid_input"
