"""A tagging output folder (local or ``s3://``): what it holds, read back for resume.

    <output>/part-<run start>-<run id>-<seq>.parquet   committed units, immutable once written
    <output>/_LOCK.json                                 the run that writes here now (``lock``)
    <output>/_quarantine/                               unreadable files moved aside by a later run

* **Resume.** ``scan_output`` reads the ``source`` column of every unit to learn what is
  done and which images failed, and the model id and crop settings in each unit's schema
  (``OutputState.check_model`` and ``check_recipe`` refuse a resume with another model,
  whose labels and scores would not match, or with other crop settings, which would find
  and cut people otherwise). A file that cannot be read (truncated by a crash of some other
  writer, a disk error) is moved to ``_quarantine/`` with a warning, and its images are
  tagged again.
* **Superseded rows.** When an image has rows in several units (a retried error, or two
  runs let in by ``break_lock``), ``drop_superseded`` keeps the newest unit's rows and
  rewrites the older units without them, each in place and atomically.

The units themselves are written by ``emotion.tagging.units.UnitWriter``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from emotion import storage
from emotion.schema import MODEL_METADATA_KEY, RECIPE_METADATA_KEY
from emotion.tagging.digests import SourceSet, source_digests
from emotion.tagging.sources import source_keys
from emotion.weights import KNOWN_WEIGHTS

log = logging.getLogger(__name__)

QUARANTINE = "_quarantine"


class OutputMismatch(ValueError):
    """The output holds rows of another model, or of other crop settings, than this run's."""


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
    recipes: dict[str, int] = field(default_factory=dict)  # crop settings (schema metadata, JSON) -> units

    def check_model(self, model_id: str) -> None:
        """Raise ``OutputMismatch`` when a unit here was written by another model:
        one output holds one model's labels and scores."""
        others = sorted(m for m in self.models if m != model_id)
        if others:
            raise OutputMismatch(
                f"output {self.output} holds rows of {', '.join(others)} ({sum(self.models[m] for m in others)} "
                f"files); this run's model is {model_id}: write to another output, or run with the "
                f"model that wrote it ({'; '.join(model_overrides(m) for m in others)})")

    def check_recipe(self, recipe: Mapping[str, object]) -> None:
        """Raise ``OutputMismatch`` when a unit here was written with other crop settings
        (``PredictorConfig.crop_recipe``), naming each key that differs. Units written
        without a recorded recipe are not checked."""
        for written, units in sorted(self.recipes.items()):
            theirs = json.loads(written)
            differ = sorted(k for k in set(theirs) | set(recipe) if theirs.get(k) != recipe.get(k))
            if differ:
                changes = "; ".join(f"{k}={theirs.get(k)!r} there, {recipe.get(k)!r} here" for k in differ)
                raise OutputMismatch(
                    f"output {self.output} holds rows made with other crop settings ({units} files): {changes}; "
                    f"write to another output, or run with the settings that wrote it")


def model_overrides(model_id: str) -> str:
    """The config overrides that select the model of ``model_id`` (``name@sha256:<prefix>``)
    when its weights are shipped (``KNOWN_WEIGHTS``), else the family to load its checkpoint
    with."""
    name, _, digest = model_id.partition("@sha256:")
    shipped = [weights for weights, spec in KNOWN_WEIGHTS.items() if digest and (spec.sha256 or "").startswith(digest)]
    if shipped:
        return f"model={name} model.checkpoint={shipped[0]}"
    return f"model={name} model.checkpoint=<the checkpoint with SHA-256 {digest}...>"


def _unit_order(uri: str) -> tuple[bool, str]:
    # Units that UnitWriter writes sort by run start time; any other Parquet file (e.g. a
    # name from Ray Data's write_parquet) counts as older than all of them.
    name = uri.rsplit("/", 1)[-1]
    return name.startswith("part-"), name


def list_units(output: str) -> list[str]:
    if not storage.exists(output):
        return []
    units = storage.list_files(output, suffixes=(".parquet",), recursive=False)
    return sorted(units, key=_unit_order)


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
            model_id, recipe, keys, is_error = read
            if model_id:
                state.models[model_id] = state.models.get(model_id, 0) + 1
            if recipe:
                state.recipes[recipe] = state.recipes.get(recipe, 0) + 1
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
        found = [read[2] for read in pool.map(_read_unit_keys, units) if not isinstance(read, BaseException)]
    return SourceSet(np.concatenate(found) if found else None)


def _read_unit_keys(uri: str) -> tuple[str, str, np.ndarray, np.ndarray] | BaseException:
    """(model id, crop recipe JSON, row digests, row is-error flags) of one unit, or the
    exception that reading it raised."""
    try:
        table = _read_columns(uri, ("source", "source_bytes", "error"))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is set aside, not fatal
        return exc
    metadata = table.schema.metadata or {}
    model_id = metadata.get(MODEL_METADATA_KEY, b"").decode()
    recipe = metadata.get(RECIPE_METADATA_KEY, b"").decode()
    return model_id, recipe, source_digests(source_keys(table)), np.asarray(table.column("error").is_valid())


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
        drop = SourceSet(np.array(keys, dtype="S16")).contains(source_digests(source_keys(table)))
        kept = table.filter(pa.array(~drop, pa.bool_()))
        removed += len(table) - len(kept)
        if len(kept):
            storage.write_bytes(uri, parquet_bytes(kept))
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


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()
