"""The output layout, in one place:

    OUTPUT/
      part-<hash>.parquet        id: string, embedding: fixed_size_list<float32>[dim], num_tokens: int32
                                 (--precision: float16 / int8 / uint8 values, or dim/8 packed bytes)
      _errors/part-<hash>.parquet  id: string, error: string, code: string
      _manifest.json             job identity, config, counts, timings
      _tmp/                      files being written (never read; removed at the next start)

`<hash>` is a digest of the ids in the file: rewriting the same rows (a retried Ray task) gives
the same name and replaces the file instead of adding a second copy. Every file appears whole or
not at all (rename on filesystems, single upload on object stores), so whatever a killed job
left behind can be trusted by the next run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from qwen3_embed.precision import PrecisionSpec

PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
ERRORS_DIR = "_errors"
MANIFEST_FILE = "_manifest.json"
TMP_DIR = "_tmp"


def schema_metadata(
    model: str,
    dim: int,
    instruction: str | None,
    normalized: bool,
    family: str,
    precision: PrecisionSpec | None = None,
    chunking: dict[str, int] | None = None,
) -> dict[str, str]:
    """Parquet schema metadata: enough to tell what the vectors are without the manifest:
    `precision` names the embedding column's precision, and for int8 / uint8
    `precision_ranges` holds the ranges as JSON `[[min...], [max...]]` (to quantise queries
    the same way)."""
    from qwen3_embed import __version__

    precision = precision or PrecisionSpec()
    metadata = {
        "model": model,
        "dim": str(dim),
        "instruction": instruction or "",
        "normalized": "true" if normalized else "false",
        "family": family,
        "producer": f"qwen3-embed {__version__}",
        "precision": precision.name,
    }
    if precision.ranges is not None:
        metadata["precision_ranges"] = json.dumps(precision.to_dict()["ranges"])
    if chunking is not None:
        metadata["chunking"] = json.dumps(chunking, sort_keys=True)
    return metadata


def identity_from_metadata(metadata: dict[bytes, bytes]) -> dict[str, object] | None:
    values = {key.decode(): value.decode() for key, value in (metadata or {}).items()}
    if "model" not in values or "dim" not in values:
        return None
    return {
        "model": values["model"],
        "dim": int(values["dim"]),
        "instruction": values.get("instruction") or None,
        "normalized": values.get("normalized") == "true",
        "precision": values.get("precision") or "float32",  # files from before --precision
        "chunking": json.loads(values["chunking"]) if values.get("chunking") else None,
    }


def part_name(ids: Iterable[str]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for row_id in ids:
        digest.update(row_id.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")  # separator: ("ab", "c") and ("a", "bc") must differ
    return f"{PART_PREFIX}{digest.hexdigest()}{PART_SUFFIX}"


def is_part_file(name: str) -> bool:
    return name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX)
