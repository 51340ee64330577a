"""Commits a tagging job's output rows in small atomic units of whole images.

``UnitWriter`` commits rows every ``every_rows`` rows (twice as many for each unit after,
up to ``max_rows``) or ``every_s`` seconds, whichever comes first, and only whole images
(every row of an image in the same unit). Each unit is one atomic write
(``storage.write_bytes``: a temporary file renamed into place locally, a single PUT of the
complete object on S3). A crash loses at most the rows not yet committed, and a re-run
never sees half a file.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from emotion import storage
from emotion.tagging.output import parquet_bytes
from emotion.tagging.sources import source_keys

ROWS_IN_IMAGE = "rows_in_image"  # the stream's per-row count of the image's rows (not written)
DETECT_NODE = "detect_node"  # the stream's Ray node that detected the row (not written)


@dataclass
class WriteStats:
    """What a ``UnitWriter`` has committed so far."""

    units: list[str] = field(default_factory=list)
    images: int = 0
    people: int = 0
    errors: int = 0
    rows: int = 0
    emotions: Counter = field(default_factory=Counter)


class UnitWriter:
    """Commits a stream of output rows as atomic units of whole images (module doc).

    ``add`` takes tables in the output schema plus a ``rows_in_image`` column; rows may
    arrive split across tables in any order. The time limit is checked as tables arrive.
    """

    def __init__(self, output: str, schema: pa.Schema, every_rows: int, every_s: float,
                 run_started: float | None = None, run_id: str | None = None, first_seq: int = 0,
                 max_rows: int | None = None):
        self.output, self.schema = output.rstrip("/"), schema
        self.every_rows, self.every_s = int(every_rows), float(every_s)
        # Each unit may hold twice the rows of the one before, up to ``max_rows``: the first
        # rows are committed soon, and ten million images still make a few thousand files.
        self.max_rows = int(max_rows) if max_rows is not None else self.every_rows
        started = datetime.fromtimestamp(run_started or time.time(), tz=timezone.utc)
        self.prefix = f"part-{started:%Y%m%dT%H%M%S}-{(run_id or uuid.uuid4().hex)[:8]}"
        self.first_seq = first_seq  # the number of this writer's first unit (a job that restarts its pipeline goes on counting)
        self.stats = WriteStats()
        self._ready: list[pa.Table] = []
        self._ready_rows = 0
        self._oldest_ready: float | None = None
        self._pending: dict[str, list[pa.Table]] = {}  # images with some rows still to come
        self._pending_rows: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, table: pa.Table) -> None:
        with self._lock:
            keys = source_keys(table)
            expected = table.column(ROWS_IN_IMAGE).to_pylist()
            counts = Counter(keys)
            complete = [counts[k] == n and k not in self._pending for k, n in zip(keys, expected)]
            self._take(table.filter(pa.array(complete, pa.bool_())))
            if not all(complete):
                self._hold(table.filter(pa.array([not c for c in complete], pa.bool_())))
            if self._due():
                self._commit()

    def _hold(self, rows: pa.Table) -> None:
        keys = source_keys(rows)
        expected = rows.column(ROWS_IN_IMAGE).to_pylist()
        for i, key in enumerate(keys):
            self._pending.setdefault(key, []).append(rows.slice(i, 1))
            self._pending_rows[key] = self._pending_rows.get(key, 0) + 1
            if self._pending_rows[key] == expected[i]:
                self._take(pa.concat_tables(self._pending.pop(key)))
                del self._pending_rows[key]

    def _take(self, rows: pa.Table) -> None:
        if len(rows) == 0:
            return
        self._ready.append(rows.drop_columns([c for c in (ROWS_IN_IMAGE, DETECT_NODE) if c in rows.column_names]))
        self._ready_rows += len(rows)
        if self._oldest_ready is None:
            self._oldest_ready = time.monotonic()

    def _due(self) -> bool:
        if not self._ready_rows:
            return False
        return self._ready_rows >= self.every_rows or time.monotonic() - self._oldest_ready >= self.every_s

    def _commit(self) -> None:
        table = pa.concat_tables(self._ready).cast(self.schema)
        uri = storage.join(self.output, f"{self.prefix}-{self.first_seq + len(self.stats.units):06d}.parquet")
        storage.write_bytes(uri, parquet_bytes(table))
        self._count(table)
        self.stats.units.append(uri)
        self._ready, self._ready_rows, self._oldest_ready = [], 0, None
        self.every_rows = max(self.every_rows, min(self.every_rows * 2, self.max_rows))

    def _count(self, table: pa.Table) -> None:
        person = table.column("person_index")
        stats = self.stats
        stats.rows += len(table)
        stats.people += len(table) - person.null_count
        # One row of each image has person_index null (no person, error) or 0.
        stats.images += len(table) - pc.sum(pc.fill_null(pc.greater(person, 0), False)).as_py()
        stats.errors += len(table) - table.column("error").null_count  # one error row per failed image
        names = pc.list_flatten(table.column("emotions"))
        if len(names):
            stats.emotions.update(names.to_pylist())

    def flush(self) -> None:
        """Commit whatever complete images are buffered."""
        with self._lock:
            if self._ready_rows:
                self._commit()

    def _commit_when_due(self) -> None:
        # Rows must not wait for the next table past ``every_s`` when the stream is slow.
        while not self._stop.wait(min(1.0, self.every_s / 4)):
            with self._lock:
                if self._due():
                    self._commit()

    def __enter__(self) -> "UnitWriter":
        self._stop = threading.Event()
        self._timer = threading.Thread(target=self._commit_when_due, name="unit-writer-timer", daemon=True)
        self._timer.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._stop.set()
        self._timer.join(timeout=10)
        if exc_type is None:
            self.close()
        else:
            self.flush()  # keep every complete image even when the job fails

    def close(self) -> None:
        """Commit the rest. Images still incomplete mean rows were lost upstream: an error."""
        self.flush()
        if self._pending:
            missing = sorted(self._pending)[:5]
            raise RuntimeError(f"{len(self._pending)} images ended with rows missing (e.g. {missing}); "
                               "they were not written and will be tagged again on the next run")
