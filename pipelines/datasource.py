"""The job's Ray Data source: one read task per table/text file (images in groups), each
streaming blocks of `ReadSpec.block_rows` rows, with rows already in OUTPUT marked `skipped`.

With `read_config` (the job always passes it) every row carries its fragment's key (see
`fragments`), and the fragments a rerun found done get no read task at all."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from .discovery import InputFile, InputSet
from .fragments import fragment_key, read_groups, tag_rows
from .readers import ReadSpec, read_file, read_image_files, read_video_files
from .resume import DoneSet, mark_skipped
from .rows import READ_SCHEMA, TRACKED_READ_SCHEMA


class CorpusDatasource(Datasource):
    def __init__(
        self,
        inputs: InputSet,
        spec: ReadSpec,
        done_ref: Any | None = None,
        read_config: dict[str, Any] | None = None,
        done_fragments: Mapping[str, int] | None = None,
    ):
        super().__init__()
        self.inputs = inputs
        self.spec = spec
        # ObjectRef of the sorted id digests to check rows against (in-flight parts), or None.
        self.done_ref = done_ref
        self.read_config = read_config  # None: rows carry no provenance
        self.done_fragments = dict(done_fragments or {})  # {fragment key: rows}: no read task
        groups = read_groups(inputs)
        keys = [
            fragment_key(group, read_config) if read_config is not None else None
            for group in groups
        ]
        self.groups = [
            (group, key)
            for group, key in zip(groups, keys, strict=True)
            if key is None or key not in self.done_fragments
        ]
        # Rows of the fragments dropped here: the job counts them as skipped.
        self.skipped_rows = sum(
            self.done_fragments[key]
            for key in keys
            if key is not None and key in self.done_fragments
        )

    def get_name(self) -> str:
        return "Corpus"  # Ray Data shows it as "ReadCorpus"

    def estimate_inmemory_data_size(self) -> int:
        return sum(file.size for group, _ in self.groups for file in group)

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        # Ray Data runs as many at once as resources and backpressure allow, whatever
        # `parallelism` says.
        tasks = [self._task(group, key) for group, key in self.groups]
        return tasks or [self._empty_task()]  # every fragment done: still a (rowless) dataset

    def _schema(self) -> pa.Schema:
        return TRACKED_READ_SCHEMA if self.read_config is not None else READ_SCHEMA

    def _task(self, files: list[InputFile], key: str | None) -> ReadTask:
        # The closure is pickled into the task: it holds this task's files, not the whole list.
        fs, prefix, spec, done_ref = self.inputs.fs, self.inputs.prefix, self.spec, self.done_ref
        tracked = self.read_config is not None

        def read() -> Iterator[pa.Table]:
            done = DoneSet(ray.get(done_ref)) if done_ref is not None else None
            if files[0].format == "images":
                tables = read_image_files(files, fs, spec)
            elif files[0].format == "videos":
                tables = read_video_files(files, fs, prefix, spec)
            else:
                tables = read_file(files[0], fs, prefix, spec)
            if tracked:
                tables = tag_rows(tables, key)
            for table in tables:
                yield mark_skipped(table, done)

        metadata = BlockMetadata(
            num_rows=None,
            size_bytes=sum(file.size for file in files),
            input_files=[prefix + file.path for file in files],
            exec_stats=None,
        )
        return ReadTask(read, metadata, schema=self._schema())

    def _empty_task(self) -> ReadTask:
        schema = self._schema()

        def read() -> Iterator[pa.Table]:
            yield schema.empty_table()

        metadata = BlockMetadata(num_rows=0, size_bytes=0, input_files=[], exec_stats=None)
        return ReadTask(read, metadata, schema=schema)
