"""The batch job under faults, on the session's local Ray cluster (2 CPUs) with the tiny
checkpoints: corrupt and empty input files, an embedding replica killed mid-job, and workers that
raise (or die) on chosen blocks. Every test ends on the same check: every input id is in OUTPUT
exactly once, as a vector or as an error row with its reason, and the manifest's counts add up.

The figures quoted in docs/reliability.md ("Batch job") are the constants and assertions here.
The killed driver is tested in test_pipeline_cli.py (`test_killed_driver_then_rerun...`).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipelines import JobConfig, run_embedding_job
from pipelines.discovery import discover
from pipelines.failure_layers import STAGE_ATTEMPTS, StageBroken, attempts_then_rows
from pipelines.ledger import REPLICA_CRASHES_PER_BATCH
from pipelines.readers import READ_ATTEMPTS, ReadSpec, read_file
from pipelines.rows import CODE_REPLICA_CRASHED, PREPARED_SCHEMA
from pipelines.stages import failed_rows_in

SPEC = ReadSpec(id_column=None, text_column="text", image_column=None, block_rows=64)


def output_rows(folder: Path) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """(ids with a vector, {id: (error, code)}), with every id listed as often as it appears."""
    vectors = (
        pads.dataset(str(folder), format="parquet")
        .to_table(columns=["id"])
        .column("id")
        .to_pylist()
    )
    errors: list[dict] = []
    if (folder / "_errors").exists():
        errors = pads.dataset(str(folder / "_errors"), format="parquet").to_table().to_pylist()
    all_ids = vectors + [row["id"] for row in errors]
    assert len(all_ids) == len(set(all_ids)), "an id appears twice in OUTPUT"
    return vectors, {row["id"]: (row["error"], row["code"]) for row in errors}


def assert_counts_add_up(folder: Path, expected_ids: set[str]) -> dict:
    vectors, errors = output_rows(folder)
    assert set(vectors) | set(errors) == expected_ids, "an input id is missing from OUTPUT"
    manifest = json.loads((folder / "_manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["consistent"]
    assert manifest["rows_in"] == manifest["rows_embedded"] + manifest["rows_failed"]
    assert (manifest["rows_in"], manifest["rows_embedded"], manifest["rows_failed"]) == (
        len(expected_ids),
        len(vectors),
        len(errors),
    )
    return manifest


def read(path: Path, spec: ReadSpec = SPEC) -> list[dict]:
    found = discover((str(path),))
    return [
        row
        for table in read_file(found.files[0], found.fs, found.prefix, spec)
        for row in table.to_pylist()
    ]


def parquet_bytes(count: int, row_group_size: int) -> bytes:
    sink = io.BytesIO()
    table = pa.table({"text": [f"parquet row {n} " * 8 for n in range(count)]})
    pq.write_table(table, sink, row_group_size=row_group_size)
    return sink.getvalue()


def corrupt_second_row_group(data: bytes) -> bytes:
    """The footer stays intact; the pages of row group 1 become noise."""
    offset = pq.ParquetFile(io.BytesIO(data)).metadata.row_group(1).column(0).data_page_offset
    noisy = bytearray(data)
    noisy[offset : offset + 64] = b"\xff" * 64
    return bytes(noisy)


# ------------------------------------------------------------ corrupt inputs: the readers
def test_reader_reports_corrupt_and_empty_files(tmp_path):
    data = parquet_bytes(300, row_group_size=100)
    (tmp_path / "truncated.parquet").write_bytes(data[: len(data) // 2])
    got = read(tmp_path / "truncated.parquet")
    assert [(r["id"], r["status"], r["code"]) for r in got] == [
        ("truncated.parquet", "error", "unreadable_file")
    ]
    assert got[0]["error"].startswith(f"cannot read the file ({READ_ATTEMPTS} attempts): ")
    assert "magic bytes not found" in got[0]["error"]

    # A bad page in the middle: the rows before it are kept, the rest is one error row.
    (tmp_path / "bad-page.parquet").write_bytes(corrupt_second_row_group(data))
    got = read(tmp_path / "bad-page.parquet", ReadSpec(None, "text", None, block_rows=50))
    ok = [r["id"] for r in got if r["status"] == "ok"]
    assert ok == [f"bad-page.parquet:{n}" for n in range(len(ok))] and 0 < len(ok) < 300
    assert [(r["id"], r["code"]) for r in got if r["status"] != "ok"] == [
        ("bad-page.parquet", "unreadable_file")
    ]
    assert f"past row {len(ok)} " in got[-1]["error"]

    lines = b"".join(b'{"text": "line %d"}\n' % n for n in range(2000))
    packed = gzip.compress(lines)
    (tmp_path / "broken.jsonl.gz").write_bytes(packed[:100] + b"\x00" * 64 + packed[164:])
    got = read(tmp_path / "broken.jsonl.gz")
    assert got[-1]["id"] == "broken.jsonl.gz" and got[-1]["code"] == "unreadable_file"
    assert all(r["status"] == "ok" for r in got[:-1])

    for name in ("empty.jsonl", "empty.parquet", "empty.txt", "empty.csv", "empty.jsonl.gz"):
        (tmp_path / name).write_bytes(b"")
        assert [(r["id"], r["status"], r["code"], r["error"]) for r in read(tmp_path / name)] == [
            (name, "error", "empty_file", "the file is empty (0 bytes)")
        ]
    (tmp_path / "header-only.csv").write_text("text\n")  # no rows, but not broken either
    assert read(tmp_path / "header-only.csv") == []


def test_reader_rereads_after_a_transient_error(tmp_path, monkeypatch):
    """An I/O error mid-file (here raised once, after 70 rows) costs a second read that skips
    the rows already handed on: every row exactly once, no error row."""
    import pipelines.readers as readers

    path = tmp_path / "flaky.jsonl"
    path.write_text("".join(json.dumps({"text": f"line {n}"}) + "\n" for n in range(200)))
    original, failures = readers._read_jsonl, []

    def flaky(file, fs, spec, source, buffer):
        for position, step in enumerate(original(file, fs, spec, source, buffer)):
            if position == 70 and not failures:
                failures.append(position)
                raise OSError("connection reset by peer")
            yield step

    monkeypatch.setattr(readers, "_read_jsonl", flaky)
    got = read(path, ReadSpec(None, "text", None, block_rows=32))
    assert failures == [70]
    assert [(r["id"], r["status"]) for r in got] == [(f"flaky.jsonl:{n}", "ok") for n in range(200)]


# ------------------------------------------------------------ worker faults: the guard
def prepared(ids: list[str], statuses: list[str] | None = None) -> pa.Table:
    statuses = statuses or ["ok"] * len(ids)
    return pa.table(
        {
            "id": ids,
            "status": statuses,
            "error": ["earlier" if s == "error" else None for s in statuses],
            "code": ["invalid_input" if s == "error" else None for s in statuses],
            "num_tokens": pa.array([1] * len(ids), pa.int32()),
            "input_ids": [[1]] * len(ids),
            "media": [None] * len(ids),
        },
        schema=PREPARED_SCHEMA,
    )


def run_guarded(stage: str, call, table: pa.Table, schema: pa.Schema, code: str) -> pa.Table:
    """The stage-attempts layer, writing its error rows as the stages do."""
    return attempts_then_rows(stage, call, table, failed_rows_in(schema), code)


def test_guard_retries_then_isolates_the_failing_row():
    calls: list[list[str]] = []

    def stage(table: pa.Table) -> pa.Table:
        ids = table.column("id").to_pylist()
        calls.append(ids)
        if "poison" in ids or ("flaky" in ids and len(calls) <= 2):
            raise RuntimeError(f"injected fault on {ids}")
        return table

    flaky = run_guarded("prepare", stage, prepared(["a", "flaky", "b"]), PREPARED_SCHEMA, "x")
    assert len(calls) == 3 and flaky.column("status").to_pylist() == ["ok"] * 3  # third try ok

    calls.clear()
    table = prepared(["a", "poison", "b", "c"], ["ok", "ok", "ok", "skipped"])
    out = run_guarded("prepare", stage, table, PREPARED_SCHEMA, "prepare_failed").to_pylist()
    assert len(calls) == STAGE_ATTEMPTS + 4  # the block STAGE_ATTEMPTS times, then each row
    assert [(r["id"], r["status"], r["code"]) for r in out] == [
        ("a", "ok", None),
        ("poison", "error", "prepare_failed"),
        ("b", "ok", None),
        ("c", "skipped", None),
    ]
    assert out[1]["error"] == (
        f"prepare failed on this row alone after {STAGE_ATTEMPTS} attempts on its block: "
        "RuntimeError: injected fault on ['poison']"
    )
    assert out[1]["input_ids"] is None

    def broken(table: pa.Table) -> pa.Table:
        raise RuntimeError("device lost")

    with pytest.raises(RuntimeError, match="device lost"):  # every row fails alone: raise
        run_guarded("embed", broken, prepared(["a", "b"]), PREPARED_SCHEMA, "embed_failed")

    calls = []

    def dead(table: pa.Table) -> pa.Table:
        calls.append(table.num_rows)
        raise StageBroken("every item failed")

    with pytest.raises(StageBroken):  # never written off row by row
        run_guarded("embed", dead, prepared(["a", "b", "c"]), PREPARED_SCHEMA, "embed_failed")
    # Nor retried: the block and each of its items already failed once (inside the call that
    # raised it), so another try would only repeat (N + 1) doomed forwards.
    assert calls == [3]


# ------------------------------------------------------------ corrupt inputs: the job
def test_corrupt_inputs_are_reported_and_the_rest_embedded(
    ray_cluster, tiny_text_model_dir, tmp_path
):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    expected: set[str] = set()
    lines = [json.dumps({"text": f"json document {n}"}) for n in range(30)]
    lines[11] = '{"text": "a line cut short'  # not JSON
    lines[17] = "\x00\x01 binary junk"
    (corpus / "docs.jsonl").write_text("\n".join(lines) + "\n")
    expected |= {f"docs.jsonl:{n}" for n in range(30)}
    data = parquet_bytes(40, row_group_size=10)
    (corpus / "good.parquet").write_bytes(data)
    expected |= {f"good.parquet:{n}" for n in range(40)}
    (corpus / "truncated.parquet").write_bytes(data[: len(data) * 2 // 3])
    expected.add("truncated.parquet")
    (corpus / "bad-page.parquet").write_bytes(corrupt_second_row_group(data))
    expected.add("bad-page.parquet")
    expected |= {f"bad-page.parquet:{n}" for n in range(10)}  # row group 0 reads fine
    for name in ("empty.jsonl", "empty.parquet", "empty.txt"):
        (corpus / name).write_bytes(b"")
        expected.add(name)
    (corpus / "notes.txt").write_text("a plain text line\nanother one\n")
    expected |= {"notes.txt:0", "notes.txt:1"}

    output = tmp_path / "out"
    result = run_embedding_job(
        JobConfig(
            input=str(corpus),
            output=str(output),
            model=str(tiny_text_model_dir),
            progress=False,
            batch_rows=16,
            rows_per_file=32,
        )
    )
    manifest = assert_counts_add_up(output, expected)
    vectors, errors = output_rows(output)
    assert {row_id: code for row_id, (_, code) in errors.items()} == {
        "docs.jsonl:11": "invalid_row",
        "docs.jsonl:17": "invalid_row",
        "truncated.parquet": "unreadable_file",
        "bad-page.parquet": "unreadable_file",
        "empty.jsonl": "empty_file",
        "empty.parquet": "empty_file",
        "empty.txt": "empty_file",
    }
    assert "not valid JSON" in errors["docs.jsonl:11"][0]
    assert "past row 10 " in errors["bad-page.parquet"][0]
    assert len(vectors) == 28 + 40 + 10 + 2 and result.consistent
    assert manifest["error_codes"] == {"unreadable_file": 2, "invalid_row": 2, "empty_file": 3}


def test_corrupt_images_are_reported_and_the_rest_embedded(
    ray_cluster, tiny_vl_model_dir, tmp_path
):
    pytest.importorskip("qwen3_embed.vl", reason="the VL backend is not importable")
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for n in range(6):
        buffer = io.BytesIO()
        Image.new("RGB", (40, 32), (40 * n, 255 - 40 * n, 90)).save(buffer, format="PNG")
        (images / f"good-{n}.png").write_bytes(buffer.getvalue())
    (images / "noise.png").write_bytes(os.urandom(4096))
    (images / "noise.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(2048))  # a JPEG header
    (images / "empty.png").write_bytes(b"")
    output = tmp_path / "out"
    run_embedding_job(
        JobConfig(
            input=str(images),
            output=str(output),
            model=str(tiny_vl_model_dir),
            progress=False,
            batch_rows=4,
            rows_per_file=4,
        )
    )
    expected = {f"good-{n}.png" for n in range(6)} | {"noise.png", "noise.jpg", "empty.png"}
    assert_counts_add_up(output, expected)
    vectors, errors = output_rows(output)
    assert sorted(vectors) == sorted(f"good-{n}.png" for n in range(6))
    assert errors["empty.png"] == ("the file is empty (0 bytes)", "empty_file")
    for name in ("noise.png", "noise.jpg"):
        reason, code = errors[name]
        assert reason.startswith("image:") and code == "invalid_input", (name, reason, code)


# ------------------------------------------------------------ a replica killed mid-job
# The replica kills itself (SIGKILL, as the OOM killer would) on the block holding a chosen row,
# once: the kill happens mid-job by construction, never in a race with the job's end. Marker
# files record the killed and the restarted process.
KILL_DRIVER = textwrap.dedent(
    """
    import json, os, signal, sys

    import ray

    OUTPUT, MARKS, VICTIM = sys.argv[2], sys.argv[3], sys.argv[5]


    def inject():
        import pipelines.stages as stages

        embed_block = stages.EmbedWorker._embed_block

        def mark(name):
            context = ray.get_runtime_context()
            files = len([n for n in os.listdir(OUTPUT) if n.startswith("part-")])
            record = {"actor": context.get_actor_id(), "pid": os.getpid(), "files": files}
            with open(os.path.join(MARKS, name + ".tmp"), "w") as handle:
                json.dump(record, handle)
            os.rename(os.path.join(MARKS, name + ".tmp"), os.path.join(MARKS, name))

        def embed(self, table):
            if VICTIM in table.column("id").to_pylist():
                if not os.path.exists(os.path.join(MARKS, "killed")):
                    mark("killed")
                    os.kill(os.getpid(), signal.SIGKILL)
                if not os.path.exists(os.path.join(MARKS, "retried")):
                    mark("retried")
            return embed_block(self, table)

        stages.EmbedWorker._embed_block = embed


    ray.init(
        address=os.environ["RAY_ADDRESS"],
        runtime_env={"worker_process_setup_hook": inject},
        logging_level="WARNING",
    )
    from pipelines import JobConfig, run_embedding_job

    result = run_embedding_job(
        JobConfig(
            input=sys.argv[1], output=OUTPUT, model=sys.argv[4], id_column="id",
            num_replicas=2, cpus_per_replica=0.5,  # the other CPU reads, prepares and writes
            batch_rows=20, rows_per_file=40, progress=False,
        )
    )
    print(json.dumps(result.manifest))
    """
)


@pytest.mark.slow
def test_killed_replica_job_completes_exactly_once(ray_cluster, tiny_text_model_dir, tmp_path):
    rows, victim = 3000, "doc-01010"
    corpus = tmp_path / "corpus.jsonl"
    with open(corpus, "w") as handle:
        for n in range(rows):
            text = f"document {n}: " + "words in a row " * (n % 13 + 1)
            handle.write(json.dumps({"id": f"doc-{n:05d}", "text": text}) + "\n")
    output, marks = tmp_path / "out", tmp_path / "marks"
    marks.mkdir()
    script = tmp_path / "driver.py"
    script.write_text(KILL_DRIVER)
    done = subprocess.run(
        [sys.executable, str(script), str(corpus), str(output), str(marks)]
        + [str(tiny_text_model_dir), victim],
        env={**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address},
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    killed = json.loads((marks / "killed").read_text())
    retried = json.loads((marks / "retried").read_text())
    print("replica kill:", {"killed": killed, "retried": retried})  # figures (pytest -s)
    # The same Ray Data actor, restarted in a new process, ran the killed batch again.
    assert retried["actor"] == killed["actor"] and retried["pid"] != killed["pid"]
    assert killed["files"] < rows // 40, "the job was over when the replica was killed"
    manifest = assert_counts_add_up(output, {f"doc-{n:05d}" for n in range(rows)})
    assert (manifest["rows_in"], manifest["rows_embedded"], manifest["rows_failed"]) == (
        rows,
        rows,
        0,
    )
    assert manifest["this_run"]["rows_embedded"] == rows and manifest["duplicate_ids"] == 0
    # The driver prints the manifest on one line; Ray may log its own lines after it on stdout
    # ("(raylet) Task ... will be retried" for the killed replica's batch).
    printed = next(
        json.loads(line) for line in reversed(done.stdout.splitlines()) if line.startswith("{")
    )
    assert printed["run_id"] == manifest["run_id"]


# ------------------------------------------------------------ workers that raise or die
DRIVER = textwrap.dedent(
    """
    import json, os, sys, uuid

    import ray

    MARKS = sys.argv[3]


    def inject():
        # Runs in every worker process of this job (Ray's worker_process_setup_hook): wraps the
        # two stages' block functions with faults keyed on row ids. Nothing in pipelines/ knows.
        import pipelines.stages as stages

        def count(name):
            return sum(1 for mark in os.listdir(MARKS) if mark.startswith(name + "."))

        def mark(name):
            open(os.path.join(MARKS, f"{name}.{uuid.uuid4().hex}"), "w").close()

        def faulty(stage, ids):
            for name in (f"flaky-{stage}", f"poison-{stage}", f"crash-{stage}", f"killer-{stage}"):
                if name not in ids:
                    continue
                if name.startswith("killer"):  # kills every replica it reaches
                    mark(name)
                    os._exit(1)
                if name.startswith("crash") and count(name) == 0:
                    mark(name)
                    os._exit(1)  # the worker process dies with its block
                if name.startswith("poison") or (name.startswith("flaky") and count(name) < 2):
                    mark(name)
                    raise RuntimeError(f"injected fault: {name}")

        prepare_block, embed_block = stages._prepare_block, stages.EmbedWorker._embed_block

        def prepare(table, settings):
            faulty("prepare", table.column("id").to_pylist())
            return prepare_block(table, settings)

        def embed(self, table):
            faulty("embed", table.column("id").to_pylist())
            return embed_block(self, table)

        stages._prepare_block, stages.EmbedWorker._embed_block = prepare, embed


    ray.init(
        address=os.environ["RAY_ADDRESS"],
        runtime_env={"worker_process_setup_hook": inject},
        logging_level="WARNING",
    )
    from pipelines import JobConfig, run_embedding_job

    result = run_embedding_job(
        JobConfig(
            input=sys.argv[1], output=sys.argv[2], model=sys.argv[4], id_column="id",
            batch_rows=16, rows_per_file=32, progress=False,
        )
    )
    print(json.dumps(result.manifest))
    """
)
FAULTS = [
    f"{kind}-{stage}" for kind in ("flaky", "poison", "crash") for stage in ("prepare", "embed")
] + ["killer-embed"]


@pytest.mark.slow
def test_workers_raising_or_dying_on_a_block(ray_cluster, tiny_text_model_dir, tmp_path):
    address = ray_cluster.get_runtime_context().gcs_address
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    ids = [f"doc-{n:03d}" for n in range(50 * len(FAULTS))]
    # Each faulty id sits in the middle of its own file, among good rows.
    for index, fault in enumerate(FAULTS):
        ids[index * 50 + 25] = fault
    for part in range(len(FAULTS)):
        with open(corpus / f"part-{part}.jsonl", "w") as handle:
            for row_id in ids[part * 50 : (part + 1) * 50]:
                handle.write(json.dumps({"id": row_id, "text": f"text of {row_id} " * 3}) + "\n")
    marks = tmp_path / "marks"
    marks.mkdir()
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    output = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            str(corpus),
            str(output),
            str(marks),
            str(tiny_text_model_dir),
        ],
        env={**os.environ, "RAY_ADDRESS": address},
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    fired = {name: sum(1 for m in os.listdir(marks) if m.startswith(name + ".")) for name in FAULTS}
    print("faults fired:", fired)  # figures for docs/reliability.md (pytest -s)
    # Flaky blocks: two failed tries, the third succeeds. Crashes: one dead process each, then a
    # retried task (prepare) or a restarted replica (embed). Poison: the block's tries, then the
    # row alone (at least once more).
    assert fired["flaky-prepare"] == fired["flaky-embed"] == 2, fired
    assert fired["crash-prepare"] == fired["crash-embed"] == 1, fired
    assert fired["poison-prepare"] >= STAGE_ATTEMPTS + 1, fired
    assert fired["poison-embed"] >= STAGE_ATTEMPTS + 1, fired
    # The row that kills every replica: its batch twice, then alone twice, then written off
    # (Ray Data alone would restart and retry it forever; see pipelines/ledger.py).
    assert fired["killer-embed"] == 2 * REPLICA_CRASHES_PER_BATCH, fired

    manifest = assert_counts_add_up(output, set(ids))
    vectors, errors = output_rows(output)
    assert {row_id: code for row_id, (_, code) in errors.items()} == {
        "poison-prepare": "prepare_failed",
        "poison-embed": "embed_failed",
        "killer-embed": CODE_REPLICA_CRASHED,
    }
    for stage in ("prepare", "embed"):
        assert errors[f"poison-{stage}"][0] == (
            f"{stage} failed on this row alone after {STAGE_ATTEMPTS} attempts on its block: "
            f"RuntimeError: injected fault: poison-{stage}"
        )
    assert errors["killer-embed"][0].startswith(
        f"the embedding replica died {REPLICA_CRASHES_PER_BATCH} times while this row was being embedded"
    )
    assert len(vectors) == len(ids) - 3 and {"flaky-prepare", "crash-embed"} <= set(vectors)
    assert manifest["error_codes"] == {"prepare_failed": 1, "embed_failed": 1, "replica_crashed": 1}
