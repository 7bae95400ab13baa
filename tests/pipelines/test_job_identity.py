""" "Same job" and "nothing to do" are decided once (`pipelines.identity`): for each setting of a
rerun over a finished OUTPUT, the CLI's first look (`noop.finish_if_nothing_to_do`, before Ray
and the tokenizer) and the full job (`plan_job`, then `job.nothing_left`) agree, as the README
promises: another model, dim, instruction, normalisation, precision, chunking or kept columns
is refused; other ids, columns, inputs or OUTPUT files are redone (a resuming run); settings
outside the identity leave nothing to do. One job run makes OUTPUT; the decisions are called
directly, and a few runs go end to end (the CLI in-process, one resuming job)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from pipelines import JobConfig, plan_job, run_embedding_job
from pipelines.cli import add_arguments, run
from pipelines.identity import ModelFacts, job_identity
from pipelines.job import nothing_left
from pipelines.noop import finish_if_nothing_to_do
from pipelines.resume import OutputMismatchError

QUERY = "Given a web search query, retrieve relevant passages that answer the query"
REFUSED, REDO, NOOP = "refused", "redo", "nothing to do"


def job(**fields) -> JobConfig:
    fields.setdefault("progress", False)
    fields.setdefault("rows_per_file", 4)
    fields.setdefault("batch_rows", 4)
    return JobConfig(**fields)


@pytest.fixture(scope="module")
def finished(ray_cluster, tiny_text_model_dir, tmp_path_factory) -> dict[str, Path]:
    """A completed job over 6 rows (ids from the default `id` column), with its own copy of the
    tiny model (one case edits its files)."""
    root = tmp_path_factory.mktemp("identity")
    model = root / "model"
    shutil.copytree(tiny_text_model_dir, model)
    corpus = root / "in" / "docs.jsonl"
    corpus.parent.mkdir()
    rows = [
        {"id": f"d{n}", "key": f"k{n}", "text": f"document {n} about vectors", "title": f"t{n}"}
        for n in range(6)
    ]
    corpus.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = root / "out"
    result = run_embedding_job(job(input=str(corpus), output=str(output), model=str(model)))
    assert result.consistent and result.rows_embedded == 6
    assert result.manifest["ids"] == {"column": "id", "source": "default"}
    return {"root": root, "model": model, "corpus": corpus, "output": output}


def same(finished: dict[str, Path], **changes) -> JobConfig:
    fields = {
        "input": str(finished["corpus"]),
        "output": str(finished["output"]),
        "model": str(finished["model"]),
    }
    return job(**{**fields, **changes})


def manifest_of(output: Path) -> dict:
    return json.loads((output / "_manifest.json").read_text())


def decisions(config: JobConfig, caplog) -> tuple[str, str, str]:
    """(the first look's outcome, the full job's outcome, what the first look logged)."""
    before = (Path(config.output) / "_manifest.json").read_bytes()
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="pipelines.noop"):
        quick = finish_if_nothing_to_do(config, {})
    logged = "\n".join(record.getMessage() for record in caplog.records)
    if quick is None:
        assert (Path(config.output) / "_manifest.json").read_bytes() == before, "it wrote"
    try:
        plan = plan_job(config)
    except OutputMismatchError as error:
        full = REFUSED
        logged += f"\nfull: {error}"
    else:
        full = NOOP if nothing_left(plan) else REDO
    return (NOOP if quick is not None else "not done"), full, logged


# (what changes, the outcome the README promises, a word the refusal names)
IDENTITY_CASES = [
    ("model", lambda f, noeos: {"model": str(noeos)}, "model"),
    ("dim", lambda f, noeos: {"dim": 32}, "dim 64 (this job: 32)"),
    ("instruction", lambda f, noeos: {"instruction": QUERY}, "instruction None"),
    ("precision", lambda f, noeos: {"precision": "float16"}, "precision 'float32'"),
    ("chunking", lambda f, noeos: {"chunk_tokens": 16}, "chunking None"),
    ("chunk overlap", lambda f, noeos: {"chunk_tokens": 16, "chunk_overlap": 4}, "chunking"),
    ("keep_columns", lambda f, noeos: {"keep_columns": "title"}, "keep_columns None"),
]


@pytest.mark.parametrize("name, change, named", IDENTITY_CASES, ids=[c[0] for c in IDENTITY_CASES])
def test_another_identity_is_refused_by_both_paths(
    finished, tiny_text_model_noeos_dir, caplog, name, change, named
):
    config = same(finished, **change(finished, tiny_text_model_noeos_dir))
    quick, full, logged = decisions(config, caplog)
    assert (quick, full) == ("not done", REFUSED)
    # The first look refused it itself, with the full check's own words (one identity).
    assert logged.count("already holds embeddings from a different job") == 2, logged
    assert named in logged


def test_a_changed_normalisation_is_refused_by_both_paths(finished, caplog):
    """The same model folder whose checkpoint no longer normalises (a sentence-transformers
    layout without a Normalize module): the first look reads the model's files too."""
    model = finished["model"]
    (model / "1_Pooling").mkdir()
    (model / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_lasttoken": True}))
    (model / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )  # fmt: skip
    try:
        quick, full, logged = decisions(same(finished), caplog)
    finally:
        (model / "modules.json").unlink()
        shutil.rmtree(model / "1_Pooling")
    assert (quick, full) == ("not done", REFUSED)
    assert "normalized True (this job: False)" in logged


def test_ids_columns_inputs_and_output_files_are_redone_by_both_paths(finished, caplog):
    """What decides the rows and their ids (not the vectors): a change means a resuming run."""
    for change in ({"id_column": "key"}, {"derived_ids": True}, {"text_column": "title"}):
        quick, full, logged = decisions(same(finished, **change), caplog)
        assert (quick, full) == ("not done", REDO), change
        assert "changed since its last run" in logged

    corpus, output = finished["corpus"], finished["output"]
    elsewhere = finished["root"] / "copy" / "docs.jsonl"  # the same rows, another input root
    elsewhere.parent.mkdir()
    shutil.copy2(corpus, elsewhere)
    assert decisions(same(finished, input=str(elsewhere)), caplog)[:2] == ("not done", REDO)

    stat = corpus.stat()  # the same bytes, touched
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        assert decisions(same(finished), caplog)[:2] == ("not done", REDO)
    finally:
        os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    part = sorted(output.glob("part-*.parquet"))[0]  # OUTPUT lost a file
    aside = finished["root"] / part.name
    part.rename(aside)
    try:
        assert decisions(same(finished), caplog)[:2] == ("not done", REDO)
    finally:
        aside.rename(part)


def test_settings_outside_the_identity_leave_nothing_to_do_on_both_paths(finished, caplog):
    """The same job as the one that wrote OUTPUT: its own settings, the dim it resolved to, the
    id column it chose, and settings that do not change the vectors of this OUTPUT's rows. (The
    first look writes its manifest each time; the full job's decision follows it.)"""
    for change in (
        {},
        {"dim": 64},  # the tiny model's full size: what the first run resolved
        {"id_column": "id"},  # what the first run chose by default
        {"num_replicas": 2, "batch_rows": 2, "rows_per_file": 3},
        {"max_length": 48},  # outside the identity today (a rerun does not truncate again)
        {"truncate": False},
    ):
        quick, full, _ = decisions(same(finished, **change), caplog)
        assert (quick, full) == (NOOP, NOOP), change
    manifest = manifest_of(finished["output"])
    assert manifest["nothing_to_do"] and manifest["rows_embedded"] == 6


def test_the_identity_is_one_definition(finished):
    """The plan's identity is `job_identity` of the facts the first look reads from the files."""
    config = same(finished, dim=32, instruction=QUERY)
    facts = ModelFacts.read(config)
    assert facts == ModelFacts(str(finished["model"]), "text", 32, True)
    assert plan_job(same(finished)).identity == job_identity(
        same(finished), ModelFacts.read(same(finished))
    )
    assert manifest_of(finished["output"])["identity"] == job_identity(
        same(finished), ModelFacts.read(same(finished))
    )


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return run(parser.parse_args(argv))


def test_cli_refuses_or_finishes_in_process(finished, capsys):
    """As users run it: the same command finishes with nothing to do (no Ray needed); another
    dim is refused with one line (exit code 2)."""
    args = [str(finished["corpus"]), str(finished["output"]), "--model", str(finished["model"])]
    assert cli(args) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert cli([*args, "--dim", "32"]) == 2
    err = capsys.readouterr().err
    assert "different job: dim 64 (this job: 32)" in err and "Traceback" not in err


def test_a_rerun_over_grown_input_is_redone_then_done(finished, tmp_path, caplog):
    """End to end: one more row makes both paths redo; the resuming run embeds that row alone,
    and the next rerun is a no-op again on both paths."""
    output = tmp_path / "out"
    shutil.copytree(finished["output"], output)
    corpus = tmp_path / "docs.jsonl"
    shutil.copy2(finished["corpus"], corpus)
    config = job(input=str(corpus), output=str(output), model=str(finished["model"]))
    with open(corpus, "a") as handle:
        handle.write(
            json.dumps({"id": "d6", "key": "k6", "text": "one more", "title": "t6"}) + "\n"
        )
    # The copy's inputs differ from the recorded ones (another root): redo in any case.
    assert decisions(config, caplog)[:2] == ("not done", REDO)
    result = run_embedding_job(config)
    assert result.consistent and result.rows_embedded == 7
    assert result.manifest["this_run"]["rows_embedded"] == 1
    ids = pads.dataset(str(output), format="parquet").to_table(columns=["id"]).column("id")
    assert sorted(ids.to_pylist()) == [f"d{n}" for n in range(7)]
    assert decisions(config, caplog)[:2] == (NOOP, NOOP)


BROKEN = [
    ("not JSON", lambda text: text[: len(text) // 2], "is not JSON"),
    ("a list", lambda text: "[1, 2]", "holds a JSON list, not an object"),
    (
        "identity not an object",
        lambda text: json.dumps({**json.loads(text), "identity": "m"}),
        "'identity' that are not JSON objects",
    ),
]


@pytest.mark.parametrize("name, damage, message", BROKEN, ids=[b[0] for b in BROKEN])
def test_a_damaged_manifest_is_never_done_nor_a_traceback(
    finished, tmp_path, caplog, capsys, name, damage, message
):
    output = tmp_path / "out"
    shutil.copytree(finished["output"], output)
    manifest = output / "_manifest.json"
    manifest.write_text(damage(manifest.read_text()))
    config = same(finished, output=str(output))
    quick, full, logged = decisions(config, caplog)
    assert (quick, full) == ("not done", REFUSED)
    assert logged.count(message) == 2  # the look says why (INFO), the full check refuses alike
    args = [str(finished["corpus"]), str(output), "--model", str(finished["model"])]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_manifest_without_its_counts_is_redone(finished, tmp_path, caplog):
    """A complete manifest that lost a count cannot vouch for OUTPUT: both paths redo (the
    resuming run counts OUTPUT from its files)."""
    output = tmp_path / "out"
    shutil.copytree(finished["output"], output)
    manifest = manifest_of(output)
    del manifest["rows_in"]
    (output / "_manifest.json").write_text(json.dumps(manifest))
    assert decisions(same(finished, output=str(output)), caplog)[:2] == ("not done", REDO)


def test_a_hub_model_is_read_from_the_hub_cache_alone(finished, tmp_path, monkeypatch, caplog):
    """A job named by hub id: the first look reads the model's files from the hub's cache (no
    download, no network) and decides as the full job does; a model not in the cache is left
    to the full checks, with the reason logged."""
    import huggingface_hub.constants as hub

    model_id = "tester/tiny-embedding"
    repo = tmp_path / "hub" / "models--tester--tiny-embedding"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(finished["model"], repo / "snapshots" / ("0" * 40))
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # the full job must not reach out either
    output = tmp_path / "out"
    shutil.copytree(finished["output"], output)
    manifest = manifest_of(output)
    manifest["identity"]["model"] = manifest["model"] = model_id
    (output / "_manifest.json").write_text(json.dumps(manifest))
    config = same(finished, output=str(output), model=model_id)
    assert decisions(config, caplog)[:2] == (NOOP, NOOP)

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipelines.noop"):
        assert finish_if_nothing_to_do(config, {}) is None
    assert "not in the Hugging Face hub's local cache" in caplog.text
