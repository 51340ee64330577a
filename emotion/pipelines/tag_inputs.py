"""The input rows of a large tagging input on Ray Data.

A small input is listed on the driver (``emotion.tagging.inputs``) and becomes blocks
made there (``emotion.tagging.sources.source_blocks``). A large one becomes a
``ShardDatasource`` whose read tasks each list a run of consecutive shards as the job
runs, drop what the output already holds (the resume sets, shipped once through the
object store as digests) and yield input blocks as they go. The driver never holds the
listing; the tasks report their counts on the job's board
(``emotion.pipelines.job_board``).
"""

from __future__ import annotations

import functools
import time
from typing import Any, Iterator, Optional

import numpy as np
import pyarrow as pa
import ray
from ray.data import TaskPoolStrategy
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from emotion.pipelines.job_board import JobBoard
from emotion.tagging.digests import ResumeSets, source_digests
from emotion.tagging.inputs import Entry, InputPlan, Shard, iter_shard
from emotion.tagging.sources import source_blocks

# Rows per table a read task yields; Ray Data gathers them into blocks of ``block_bytes``.
TABLE_ROWS = 32


def input_dataset(plan: InputPlan, resume: ResumeSets, *, path_column: str, run_id: str, limit: Optional[int],
                  num_cpus: float, max_tasks: Optional[int], read_tasks: int,
                  block_bytes: int) -> tuple[ray.data.Dataset, int]:
    """The input rows of a large input (``plan.shards``), listed by at most ``read_tasks``
    read tasks (each a run of consecutive shards), or by one in order when ``limit`` is set
    (the first ``limit`` listed). Returns the dataset and its number of read tasks.

    A read task's output goes to the next stage in blocks of Ray Data's
    ``target_max_block_size``, set to ``block_bytes`` for this dataset: at Ray's default
    (128 MiB) a task's whole listing would be one block, handed to one actor as one task,
    and no row would come out before that actor had tagged all of it.
    """
    source = ShardDatasource(plan.shards, ray.put(resume), path_column=path_column, block=TABLE_ROWS,
                             run_id=run_id, limit=limit, tasks=read_tasks)
    context = ray.data.DataContext.get_current()
    default_bytes = context.target_max_block_size
    context.target_max_block_size = block_bytes  # the dataset takes a copy of the context
    try:
        ds = ray.data.read_datasource(
            source, num_cpus=num_cpus, override_num_blocks=len(source.groups),
            **({"compute": TaskPoolStrategy(size=min(max_tasks, len(source.groups)))} if max_tasks else {}))
    finally:
        context.target_max_block_size = default_bytes
    return ds, len(source.groups)


class ShardDatasource(Datasource):
    """Ray Data source over an input plan's shards (module doc)."""

    def __init__(self, shards: list[Shard], resume: ray.ObjectRef, *, path_column: str, block: int,
                 run_id: str, limit: Optional[int], tasks: int):
        super().__init__()
        # Each read task costs Ray Data about 0.1 s of CPU to start and finish: a thousand
        # folders are listed by a few tasks, each over a run of consecutive folders.
        count = 1 if limit else max(1, min(tasks, len(shards)))
        self.groups = [list(group) for group in np.array_split(np.array(shards, dtype=object), count)]
        self.resume, self.path_column, self.block = resume, path_column, block
        self.run_id, self.limit = run_id, limit

    def get_name(self) -> str:
        return "ListInputs"

    def estimate_inmemory_data_size(self) -> Optional[int]:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: Optional[int] = None,
                       data_context: Any = None) -> list[ReadTask]:
        return [ReadTask(functools.partial(_list_shards, group, index, self.resume, self.path_column,
                                           self.block, self.run_id, self.limit),
                         BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None))
                for index, group in enumerate(self.groups)]


def _list_shards(shards: list[Shard], index: int, resume_ref: ray.ObjectRef, path_column: str, block: int,
                 run_id: str, limit: Optional[int]) -> Iterator[pa.Table]:
    """Read task: list ``shards`` in order and yield blocks of the entries to tag."""
    resume: ResumeSets = ray.get(resume_ref)
    board = JobBoard(run_id)
    counts = {"listed": 0, "skipped": 0, "retried": 0, "finished": False}
    seen: set[bytes] = set()  # a manifest may name a file twice: it is tagged once
    left = limit
    reported = time.monotonic()
    for shard in shards:
        for chunk in iter_shard(shard, path_column):
            if shard.kind == "manifest":
                chunk = _first_sightings(chunk, seen)
            if left is not None:
                chunk = chunk[:left]
                left -= len(chunk)
            todo, retried = resume.todo(chunk)
            counts["listed"] += len(chunk)
            counts["skipped"] += len(chunk) - len(todo)
            counts["retried"] += retried
            if time.monotonic() - reported > 1.0:
                board.put_listing(index, counts)
                reported = time.monotonic()
            yield from source_blocks(todo, block)
            if left == 0:
                break
        if left == 0:
            break
    counts["finished"] = True
    board.put_listing(index, counts)


def _first_sightings(chunk: list[Entry], seen: set[bytes]) -> list[Entry]:
    out = []
    for entry, digest in zip(chunk, source_digests([path for path, _ in chunk])):
        key = bytes(digest)
        if key not in seen:
            seen.add(key)
            out.append(entry)
    return out
