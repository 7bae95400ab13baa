"""Carried columns (`keep_columns`): checked and typed before Ray starts.

The job copies the named input columns into every output row (each chunk of a document gets its
document's values). Their Arrow types come from the first table file: a parquet file's schema
(int64 stays int64, list<string> stays a list, timestamps keep their unit and zone), a CSV's
columns are strings, a JSON lines file's are what Arrow infers from its first records (a later
record whose value does not fit that type, such as 1.5 or "3" in an int64 column, is an
`invalid_input` row of `_errors/` naming the column and the type: never a crash of the job, nor
a value changed to fit; see `readers._misfit`). An unknown
name, a name OUTPUT itself uses, or an input with no columns (txt, image folders) is refused with
one line naming what the input has.
"""

from __future__ import annotations

import csv
import json
from itertools import islice

import pyarrow as pa
import pyarrow.parquet as pq

from .discovery import InputFile, InputSet
from .readers import FILE_ERRORS, _open_lines
from .rows import reserved_output_names

JSON_SAMPLE_RECORDS = 1000  # records of the first JSON lines file that decide a column's type


def kept_fields(inputs: InputSet, names: tuple[str, ...]) -> tuple[tuple[str, pa.DataType], ...]:
    """(name, Arrow type) of each carried column, in the order given; ValueError otherwise."""
    if not names:
        return ()
    reserved = [name for name in names if name in reserved_output_names()]
    if reserved:
        raise ValueError(
            f"--keep-columns {', '.join(reserved)}: reserved for OUTPUT's own columns "
            f"({', '.join(reserved_output_names())}); rename the input column"
        )
    columnless = sorted(set(inputs.formats()) & {"txt", "images"})
    if columnless:
        raise ValueError(
            f"--keep-columns needs table inputs (parquet, jsonl, csv); {' and '.join(columnless)} "
            "inputs have no columns"
        )
    file = inputs.files[0]
    available = _schema(file, inputs)
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ValueError(
            f"--keep-columns {', '.join(unknown)}: no such column in {file.relpath}; its columns "
            f"are: {', '.join(available) or '(none)'}"
        )
    return tuple((name, available[name]) for name in names)


def _schema(file: InputFile, inputs: InputSet) -> dict[str, pa.DataType]:
    """Column name -> Arrow type of one table file (read from its footer or first lines)."""
    try:
        if file.format == "parquet":
            with inputs.fs.open_input_file(file.path) as handle:
                schema = pq.read_schema(handle)
            return {name: schema.field(name).type for name in schema.names}
        with _open_lines(file, inputs.fs) as lines:
            if file.format == "csv":
                first = next((line for line in lines if line.strip()), b"")
                delimiter = "\t" if ".tsv" in file.path.lower() else ","
                header = next(csv.reader([first.decode("utf-8-sig")], delimiter=delimiter), [])
                return dict.fromkeys(header, pa.string())
            records = [
                record
                for record in (
                    json.loads(line) for line in islice(lines, JSON_SAMPLE_RECORDS) if line.strip()
                )
                if isinstance(record, dict)
            ]
    except (*FILE_ERRORS, ValueError) as error:
        raise ValueError(f"{file.relpath}: cannot read its columns: {error}") from error
    names = list(dict.fromkeys(name for record in records for name in record))
    types = {}
    for name in names:
        kind = pa.array([record.get(name) for record in records]).type
        types[name] = pa.string() if pa.types.is_null(kind) else kind
    return types
