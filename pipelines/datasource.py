"""The job's Ray Data source: one read task per table/text file (images in groups), each
streaming blocks of `ReadSpec.block_rows` rows, with rows already in OUTPUT marked `skipped`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from .inputs import InputFile, InputSet
from .readers import READ_SCHEMA, ReadSpec, read_file, read_image_files
from .resume import DoneSet, mark_skipped

IMAGES_PER_READ_TASK = 64


class CorpusDatasource(Datasource):
    def __init__(self, inputs: InputSet, spec: ReadSpec, done_ref: Any | None = None):
        super().__init__()
        self.inputs = inputs
        self.spec = spec
        self.done_ref = done_ref  # ObjectRef of the sorted id digests already in OUTPUT, or None

    def get_name(self) -> str:
        return "Corpus"  # Ray Data shows it as "ReadCorpus"

    def estimate_inmemory_data_size(self) -> int:
        return self.inputs.total_bytes

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        # One task per file keeps row numbers (and so derived ids) simple and exact; Ray Data
        # runs as many at once as resources and backpressure allow, whatever `parallelism` says.
        groups: list[list[InputFile]] = []
        images = [file for file in self.inputs.files if file.format == "images"]
        groups.extend([file] for file in self.inputs.files if file.format != "images")
        groups.extend(
            images[start : start + IMAGES_PER_READ_TASK]
            for start in range(0, len(images), IMAGES_PER_READ_TASK)
        )
        return [self._task(group) for group in groups]

    def _task(self, files: list[InputFile]) -> ReadTask:
        # The closure is pickled into the task: it holds this task's files, not the whole list.
        fs, prefix, spec, done_ref = self.inputs.fs, self.inputs.prefix, self.spec, self.done_ref

        def read() -> Iterator[pa.Table]:
            done = DoneSet(ray.get(done_ref)) if done_ref is not None else None
            if files[0].format == "images":
                tables = read_image_files(files, fs, spec)
            else:
                tables = read_file(files[0], fs, prefix, spec)
            for table in tables:
                yield mark_skipped(table, done)

        metadata = BlockMetadata(
            num_rows=None,
            size_bytes=sum(file.size for file in files),
            input_files=[prefix + file.path for file in files],
            exec_stats=None,
        )
        return ReadTask(read, metadata, schema=READ_SCHEMA)
