"""A successful run says only true things: the summary names `_errors/` only when rows failed
and shows where start-up time went; Ray's benign error-level line is filtered by the CLI and
nothing else is; a rerun with nothing to do is recognised without a cluster; the ledger bounds
replica deaths per batch and row. All without Ray (the ledger runs in-process here; the job
runs it as an actor in test_pipeline_faults.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.discovery import discover
from pipelines.layout import part_name
from pipelines.ledger import REPLICA_CRASHES_PER_BATCH, CrashGuard, Ledger
from pipelines.manifest import format_summary, nothing_to_do_manifest
from pipelines.resume import input_fingerprint, nothing_to_do, output_fingerprint
from pipelines.rows import CODE_REPLICA_CRASHED, ERRORS_SCHEMA, PREPARED_SCHEMA
from pipelines.stages import _failed_rows
from pipelines.stderr_filter import forward, is_benign
from pipelines.storage import resolve

REPO = Path(__file__).resolve().parents[2]
# Copied from a real run of `qwen3-embed embed` on Ray 2.60 (ray-project/ray#57733).
BENIGN = (
    b"[2026-12-03 06:47:26,888 E 6784 6784] core_worker.cc:2465: Actor with class name: "
    b"'MapWorker(MapBatches(EmbedWorker))' and ID: '5fca5e08c534fa878ec7776901000000' has "
    b"constructor arguments in the object store and max_restarts > 0. If the arguments in the "
    b"object store go out of scope or are lost, the actor restart will fail. See "
    b"https://github.com/ray-project/ray/issues/53727 for more details."
)


def manifest(**changes) -> dict:
    base = {
        "status": "complete",
        "wall_seconds": 12.3,
        "model": "/m",
        "family": "text",
        "dim": 64,
        "normalized": True,
        "instruction": None,
        "inputs": {"files": 1, "formats": ["jsonl"], "root": "/in"},
        "output": "/tmp/out",
        "rows_in": 10,
        "rows_embedded": 10,
        "rows_failed": 0,
        "tokens": 100,
        "duplicate_ids": 0,
        "consistent": True,
        "error_codes": {},
        "rows_per_second": 1.0,
        "tokens_per_second": 10.0,
        "execute_seconds": 5.0,
        "num_replicas": 1,
        "gpus_per_replica": 0.0,
        "this_run": {
            "rows_embedded": 10,
            "rows_failed": 0,
            "rows_skipped": 0,
            "tokens": 100,
            "files_written": 1,
        },
    }
    return {**base, **changes}


# ---------------------------------------------------------------------------- summary
def test_summary_names_errors_only_when_rows_failed():
    clean = format_summary(manifest())
    assert "_errors" not in clean and "  failed       0 rows\n" in clean + "\n"
    failed = format_summary(
        manifest(rows_embedded=8, rows_failed=2, error_codes={"invalid_input": 2})
    )
    assert "failed       2 rows (this run 0) -> /tmp/out/_errors" in failed
    assert "by code: invalid_input 2" in failed


def test_summary_explains_skipped_rows_and_shows_phases():
    resumed = manifest(
        this_run={
            "rows_embedded": 0,
            "rows_failed": 0,
            "rows_skipped": 10,
            "tokens": 0,
            "files_written": 0,
        },
        phases={
            "imports": 2.04,
            "plan": 0.5,
            "ray_start": 6.0,
            "replica_ready": 9.1,
            "pipeline": 11,
        },
    )
    text = format_summary(resumed)
    # Ray's own "Data sink ... 10 rows ... written" line counts the skipped rows: say so.
    assert "10 skipped as already done (Ray's 'rows ... written' line counts these too" in text
    assert (
        "start-up     imports 2.0 s, checks 0.5 s, Ray start 6.0 s, first replica ready 9.1 s, "
        "pipeline 11.0 s" in text
    )
    assert "start-up" not in format_summary(manifest())  # older manifests have no phases


def test_nothing_to_do_manifest_and_summary():
    previous = manifest(run_id="old", finished_at="2026-01-01T00:00:00+00:00", phases={"x": 1})
    common = {"run_id": "new", "config": {}, "producer": "p", "started_at": "s"}
    now = nothing_to_do_manifest(previous, common, 1.25, {"imports": 1.0})
    assert now["nothing_to_do"] and now["run_id"] == "new" and now["status"] == "complete"
    assert now["done_by_run"] == {"run_id": "old", "finished_at": "2026-01-01T00:00:00+00:00"}
    assert now["this_run"] == {
        "rows_embedded": 0,
        "rows_failed": 0,
        "rows_skipped": 10,
        "tokens": 0,
        "files_written": 0,
    }
    assert (now["rows_in"], now["rows_embedded"], now["phases"]) == (10, 10, {"imports": 1.0})
    again = nothing_to_do_manifest(now, {**common, "run_id": "newer"}, 0.5, {})
    assert again["done_by_run"]["run_id"] == "old"  # still the run that did the work
    text = format_summary(now)
    assert text.startswith(
        "qwen3-embed embed: nothing to do (1.2 s): all 10 input rows are already in OUTPUT"
    )
    assert "no replica was started" in text and "_errors" not in text and "check        ok" in text


# --------------------------------------------------------------------- nothing to do
def test_nothing_to_do_needs_unchanged_inputs_and_output(tmp_path):
    corpus = tmp_path / "in"
    corpus.mkdir()
    (corpus / "a.jsonl").write_text('{"text": "one"}\n')
    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(
        pa.table({"id": ["e"], "error": ["x"], "code": ["c"]}, schema=ERRORS_SCHEMA),
        out / part_name(["e"]),
    )
    output = resolve(str(out))
    read = {"id_column": None}
    files = discover((str(corpus),)).files
    fingerprint = input_fingerprint(files, read)
    previous = {
        "status": "complete",
        "consistent": True,
        "inputs": {"fingerprint": fingerprint},
        "output_fingerprint": output_fingerprint(output),
        "output": str(out),
        **{"rows_in": 1, "rows_embedded": 0, "rows_failed": 1, "tokens": 0, "duplicate_ids": 0},
    }
    assert fingerprint and nothing_to_do(previous, fingerprint, output)
    for count in ("rows_in", "tokens"):  # a manifest that cannot vouch for OUTPUT's counts
        assert not nothing_to_do({**previous, count: None}, fingerprint, output)
    assert not nothing_to_do({**previous, "status": "running"}, fingerprint, output)
    assert not nothing_to_do({**previous, "consistent": False}, fingerprint, output)
    assert not nothing_to_do(previous, None, output)  # a modification time was unknown
    assert input_fingerprint(files, {"id_column": "id"}) != fingerprint  # other ids

    time.sleep(0.01)
    (corpus / "a.jsonl").write_text('{"text": "two"}\n')  # same size, newer
    changed = input_fingerprint(discover((str(corpus),)).files, read)
    assert changed != fingerprint and not nothing_to_do(previous, changed, output)
    (corpus / "b.jsonl").write_text('{"text": "more"}\n')
    assert input_fingerprint(discover((str(corpus),)).files, read) not in (fingerprint, changed)

    (out / part_name(["e"])).unlink()  # OUTPUT lost a file: the ids in it are to do again
    assert not nothing_to_do(previous, fingerprint, output)
    missing_mtime = [type(files[0])(**{**files[0].__dict__, "mtime_ns": None})]
    assert input_fingerprint(missing_mtime, read) is None


# ------------------------------------------------------------------- replica crashes
def prepared(ids: list[str]) -> pa.Table:
    return pa.table(
        {
            "id": ids,
            "status": ["ok"] * len(ids),
            "error": [None] * len(ids),
            "code": [None] * len(ids),
            "num_tokens": pa.array([1] * len(ids), pa.int32()),
            "input_ids": [[1]] * len(ids),
            "media": [None] * len(ids),
        },
        schema=PREPARED_SCHEMA,
    )


def run_guard(guard: CrashGuard, table: pa.Table, calls: list[list[str]]) -> pa.Table:
    def call(block: pa.Table) -> pa.Table:
        calls.append(block.column("id").to_pylist())
        return block

    return guard.run(
        table,
        call,
        lambda rows, reason, code: _failed_rows(rows, PREPARED_SCHEMA, reason, code),
        lambda block: "ok" in block.column("status").to_pylist(),
    )


def crash_while(ledger: Ledger, ids: list[str], times: int, row: bool = False) -> None:
    """What a replica that died mid-batch leaves in the ledger: a begin without a finish."""
    from pipelines.ledger import _digest

    for _ in range(times):
        ledger.begin(("row:" if row else "batch:") + _digest(ids))


def test_ledger_isolates_a_batch_then_writes_off_the_row_that_kills_replicas():
    ledger = Ledger()
    guard = CrashGuard(None, ledger)
    calls: list[list[str]] = []
    batch = ["a", "killer", "b"]

    crash_while(ledger, batch, REPLICA_CRASHES_PER_BATCH - 1)  # one death: tried whole again
    assert run_guard(guard, prepared(batch), calls).column("status").to_pylist() == ["ok"] * 3
    assert calls == [batch]

    calls.clear()
    crash_while(ledger, batch, REPLICA_CRASHES_PER_BATCH)  # now its deaths reach the bound
    crash_while(ledger, ["killer"], REPLICA_CRASHES_PER_BATCH, row=True)
    out = run_guard(guard, prepared(batch), calls).to_pylist()
    assert calls == [["a"], ["b"]]  # row by row; the killer row is not run again
    assert [(row["id"], row["status"], row["code"]) for row in out] == [
        ("a", "ok", None),
        ("killer", "error", CODE_REPLICA_CRASHED),
        ("b", "ok", None),
    ]
    assert "replica died 2 times while this row was being embedded" in out[1]["error"]
    assert ledger.timings()["first_batch"] is not None


def test_ledger_skips_batches_without_work():
    ledger = Ledger()
    table = prepared(["s"]).set_column(1, "status", pa.array(["skipped"]))
    calls: list[list[str]] = []
    run_guard(CrashGuard(None, ledger), table, calls)
    assert calls == [["s"]] and not ledger.started  # no remote call for a skipped batch


# ------------------------------------------------------------------------ stderr filter
def test_filter_drops_only_the_benign_line():
    assert is_benign(BENIGN)
    other_error = BENIGN.replace(b"MapWorker(MapBatches(EmbedWorker))", b"MyActor")
    assert not is_benign(other_error)  # the same warning for someone else's actor stays
    assert not is_benign(b"[2026-12-03 06:47:26,888 E 6784 6784] core_worker.cc:99: Failed")
    read_end, write_end = os.pipe()
    out_read, out_write = os.pipe()
    stream = (
        b"before\n" + BENIGN + b"\n" + other_error + b"\nLoading: 50%\rLoading: 100%\r"
        b"[partial C++ line, held until its newline"
    )
    os.write(write_end, stream[:40])
    os.write(write_end, stream[40:])
    os.close(write_end)
    forward(read_end, out_write)
    os.close(out_write)
    got = os.read(out_read, 1 << 20)
    assert got == stream.replace(BENIGN + b"\n", b"")


def test_cli_filter_covers_children_and_keeps_crash_output(tmp_path):
    """Installed as the CLI installs it: a child process's benign line goes, its other lines and
    a traceback written just before the process dies all arrive, and the filter exits with it."""
    script = tmp_path / "driver.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, subprocess, sys
            from pipelines.stderr_filter import install
            assert install()
            benign = {BENIGN!r}
            subprocess.run([sys.executable, "-c",
                            "import os, sys; os.write(2, sys.argv[1].encode() + b'\\\\n' + b'child warning\\\\n')",
                            benign.decode()])
            print("stdout line", flush=True)
            raise SystemExit("fatal: the last words")
            """
        )
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert time.monotonic() - started < 30  # the filter did not keep the pipes open
    assert done.returncode == 1 and done.stdout == "stdout line\n"
    assert done.stderr == "child warning\nfatal: the last words\n"

    raw = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "QWEN3_EMBED_RAW_STDERR": "1"},
    )
    assert raw.returncode != 0 and "AssertionError" in raw.stderr  # off: install() says so


def test_cli_first_look_decides_nothing_to_do_without_ray_or_torch(
    tmp_path, tiny_text_model_dir, tiny_text_model_noeos_dir
):
    """`pipelines.noop` (the CLI's first look) imports neither Ray nor torch, and answers only
    for the same model, dim and instruction over unchanged inputs and OUTPUT."""
    from pipelines.config import JobConfig
    from pipelines.identity import read_settings
    from pipelines.manifest import write_manifest
    from pipelines.noop import finish_if_nothing_to_do

    probe = "import sys, pipelines.noop; assert not {'ray', 'torch'} & set(sys.modules)"
    subprocess.run(
        [sys.executable, "-c", probe],
        check=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    corpus, out, model = tmp_path / "in.jsonl", tmp_path / "out", tiny_text_model_dir
    corpus.write_text('{"text": "one"}\n')
    out.mkdir()
    pq.write_table(
        pa.table({"id": ["e"], "error": ["x"], "code": ["c"]}, schema=ERRORS_SCHEMA),
        out / part_name(["e"]),
    )
    config = JobConfig(input=str(corpus), output=str(out), model=str(model))
    inputs = discover((str(corpus),))
    fingerprint = input_fingerprint(
        inputs.files, read_settings(config, inputs.prefix + inputs.root, "text")
    )
    identity = {"model": str(model), "dim": 64, "instruction": None, "normalized": True}
    done = manifest(
        run_id="worker",
        finished_at="then",
        identity=identity,
        config=config.to_dict(),
        inputs={
            "files": 1,
            "formats": ["jsonl"],
            "root": str(tmp_path),
            "fingerprint": fingerprint,
        },
        output_fingerprint=output_fingerprint(resolve(str(out))),
        rows_in=1,
        rows_embedded=0,
        rows_failed=1,
    )
    write_manifest(resolve(str(out)), {**done, "status": "running"})
    assert finish_if_nothing_to_do(config, {}) is None  # the last run did not complete
    write_manifest(resolve(str(out)), done)
    other_dim = JobConfig(input=str(corpus), output=str(out), model=str(model), dim=32)
    other_model = JobConfig(
        input=str(corpus), output=str(out), model=str(tiny_text_model_noeos_dir)
    )
    assert finish_if_nothing_to_do(other_dim, {}) is None
    assert finish_if_nothing_to_do(other_model, {}) is None
    result = finish_if_nothing_to_do(config, {"imports": 0.25})
    assert result is not None and result.manifest["nothing_to_do"] and result.consistent
    assert result.manifest["done_by_run"] == {"run_id": "worker", "finished_at": "then"}
    assert set(result.manifest["phases"]) == {"imports", "plan"}
    (out / "notes.txt").write_text("not ours")  # the full checks refuse such an OUTPUT
    assert finish_if_nothing_to_do(config, {}) is None
