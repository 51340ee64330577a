"""The tagging job's stages: what runs in Ray Data's tasks and actors.

A module of its own so that an actor's process imports only what the stages need (the
predictor, NumPy, Arrow): the job's driver-side code (config validation with pydantic,
listing, the writer) stays out of every actor's start-up.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import ray

from emotion.allocator import retain_freed_memory
from emotion.images import DecodedBatch
from emotion.models.protocol import InputSpec
from emotion.pipelines.job_board import StallWatch
from emotion.pipelines.worker_startup import limit_torch_threads, loading_models
from emotion.predictor import build_predictor
from emotion.settings import PredictorConfig
from emotion.tagging.reads import read_source
from emotion.tagging.sources import source_path
from emotion.tagging.units import DETECT_NODE, ROWS_IN_IMAGE


def read_and_decode(batch: dict[str, np.ndarray], max_side: int, max_pixels: int,
                    max_file_bytes: int, read_timeout_s: float | None = None) -> dict[str, np.ndarray]:
    """Ray Data task: read and decode each source in turn; failures become error rows.

    One file's bytes are held at a time (dropped once decoded), and a file above
    ``max_file_bytes`` is refused before it is read, so a batch's memory is bounded by
    its decoded (shrunk) images, whatever the files weigh. A read that takes longer than
    ``read_timeout_s`` becomes an error row (``emotion.tagging.reads.read_source``).
    """
    retain_freed_memory()  # once per worker process: decoded images reuse freed memory
    out = DecodedBatch()
    for text, raw, size, error in zip(batch["source"], batch["source_bytes"], batch["size"], batch["error"]):
        raw = bytes(raw) if raw is not None else b""
        data = None
        if not error:
            data, error = read_source(source_path(str(text), raw), max_bytes=max_file_bytes, known_size=int(size),
                                      timeout_s=read_timeout_s)
        out.add(str(text), data, max_side, max_pixels, source_bytes=raw, error=error or None)
        del data
    return out.to_batch()


class DetectStage:
    """Actor: loads the detector once, turns decoded images into person rows with crops.

    With ``decode`` (``read_and_decode``'s keyword arguments) it takes source rows and
    reads and decodes them itself first. ``run_id`` and ``stall_warn_s``: a batch that
    runs longer than that puts its files on the job's board (``StallWatch``).
    """

    recognizes = False  # whether the actor also loads the emotion model

    def __init__(self, cfg: PredictorConfig, spec: InputSpec, torch_threads: int | None,
                 decode: Mapping[str, Any] | None = None, run_id: str | None = None, stall_warn_s: float = 0.0):
        with loading_models():
            limit_torch_threads(torch_threads)
            self.predictor = build_predictor(cfg, recognize=self.recognizes, spec=spec)
        self.decode = dict(decode) if decode is not None else None
        context = ray.get_runtime_context()
        self.node_id = context.get_node_id()
        self.watch = StallWatch(run_id, stall_warn_s, actor=context.get_actor_id() or "driver")

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        self.watch.start([str(s) for s in batch["source"]])
        try:
            return self._run(batch)
        finally:
            self.watch.end()

    def _run(self, batch: dict[str, np.ndarray]) -> Any:
        return self._detect(batch)

    def _detect(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.decode is not None:
            batch = read_and_decode(batch, **self.decode)
        people = self.predictor.detect(batch)
        # Which node detected each row: the driver counts images per node from it.
        people[DETECT_NODE] = np.full(len(people["source"]), self.node_id, dtype=object)
        return people


class PredictStage(DetectStage):
    """Actor: detect and recognize back to back (``stages.fuse``), loading both models once.

    On one machine this saves shipping every crop from a detect actor to a recognize
    actor through the object store, and lets each actor use its cores for the whole path.
    """

    recognizes = True

    def _run(self, batch: dict[str, np.ndarray]) -> pa.Table:
        people = self._detect(batch)
        return with_stream_columns(self.predictor.recognize(people), people)


def with_stream_columns(table: pa.Table, people: Mapping[str, np.ndarray]) -> pa.Table:
    """The columns the driver needs and does not write: each row's image row count (the
    writer commits whole images only) and the node that detected it (per-node figures)."""
    table = table.append_column(ROWS_IN_IMAGE, pa.array(np.asarray(people[ROWS_IN_IMAGE], np.int32)))
    return table.append_column(DETECT_NODE, pa.array([str(n) for n in people[DETECT_NODE]], pa.string()))


class RecognizeStage:
    """Actor: loads the emotion model once, turns person rows into output rows."""

    def __init__(self, cfg: PredictorConfig, spec: InputSpec, torch_threads: int | None):
        with loading_models():
            limit_torch_threads(torch_threads)
            self.predictor = build_predictor(cfg, detect=False, spec=spec)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        return with_stream_columns(self.predictor.recognize(batch), batch)
