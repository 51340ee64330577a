"""The tagging output store without Ray: atomic units of whole images, resume scan and
quarantine, superseded rows, the run lock, bytes-safe names and the file-size cap."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from emotion import storage
from emotion.schema import output_schema
from emotion.tagging.digests import source_digests
from emotion.tagging.lock import OutputLock, OutputLockedError
from emotion.models.protocol import model_id
from emotion.tagging.output import OutputMismatch, OutputState, drop_superseded, list_units, remove_partial_writes, scan_output
from emotion.tagging.sources import UnnameableSourceError, encode_source, source_path
from emotion.tagging.units import ROWS_IN_IMAGE, UnitWriter
from emotion.weights import KNOWN_WEIGHTS
from tests.s3_server import s3_bucket, s3_endpoint, s3_server  # noqa: F401 (fixtures)

SCHEMA = output_schema(["happy", "sad"], "test@sha256:0")


def rows(image: str, people: int, error: str | None = None) -> list[dict]:
    """Output rows of one image: ``people`` persons, or one row (no person / error)."""
    n = max(people, 1)
    return [{"image_id": image, "source": image, "person_index": p if people else None,
             "emotions": ["happy"] if people else [], "error": error, ROWS_IN_IMAGE: n} for p in range(n)]


def table(*images: list[dict]) -> pa.Table:
    flat = [r for image in images for r in image]
    schema = SCHEMA.append(pa.field(ROWS_IN_IMAGE, pa.int32()))
    return pa.Table.from_pylist(flat, schema=schema)


def read_units(output) -> pa.Table:
    return pa.concat_tables([pq.read_table(u) for u in list_units(str(output))])


def test_units_hold_whole_images_even_when_rows_arrive_split(tmp_path):
    a, b, c = rows("a.jpg", 3), rows("b.jpg", 0), rows("c.jpg", 2)
    with UnitWriter(str(tmp_path), SCHEMA, every_rows=2, every_s=3600) as writer:
        writer.add(table(a[:2]))  # a.jpg incomplete: nothing to commit yet
        assert list_units(str(tmp_path)) == []
        writer.add(table(b, c[:1]))  # b complete -> 1 row ready, below every_rows
        writer.add(table(a[2:], c[1:]))  # a and c complete -> commit
        assert len(list_units(str(tmp_path))) == 1
    units = list_units(str(tmp_path))
    per_unit = [pq.read_table(u).column("source").to_pylist() for u in units]
    for sources in per_unit:  # an image's rows never straddle two units
        assert all(sources.count(s) == {"a.jpg": 3, "b.jpg": 1, "c.jpg": 2}[s] for s in set(sources))
    assert writer.stats.images == 3 and writer.stats.people == 5 and writer.stats.rows == 6
    assert pq.read_schema(units[0]).metadata == SCHEMA.metadata  # labels travel with every unit


def test_each_unit_may_hold_twice_the_rows_of_the_one_before_up_to_a_cap(tmp_path):
    with UnitWriter(str(tmp_path), SCHEMA, every_rows=2, every_s=3600, max_rows=5) as writer:
        for i in range(20):
            writer.add(table(rows(f"{i:02d}.jpg", 1)))
    sizes = [pq.read_metadata(u).num_rows for u in list_units(str(tmp_path))]
    assert sizes == [2, 4, 5, 5, 4]  # the last one: what was left at the end


def test_units_commit_by_time_when_the_stream_is_slow(tmp_path):
    with UnitWriter(str(tmp_path), SCHEMA, every_rows=1_000_000, every_s=0.2) as writer:
        writer.add(table(rows("a.jpg", 1)))
        deadline = time.monotonic() + 5
        while not list_units(str(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(list_units(str(tmp_path))) == 1  # committed by the timer, no new rows needed


def test_a_failed_stream_keeps_its_complete_images(tmp_path):
    with pytest.raises(RuntimeError, match="upstream"):
        with UnitWriter(str(tmp_path), SCHEMA, every_rows=100, every_s=3600) as writer:
            writer.add(table(rows("a.jpg", 2), rows("b.jpg", 3)[:1]))
            raise RuntimeError("upstream failure")
    assert read_units(tmp_path).column("source").to_pylist() == ["a.jpg", "a.jpg"]  # b.jpg incomplete: not written


def test_resume_scan_quarantines_a_truncated_unit(tmp_path):
    with UnitWriter(str(tmp_path), SCHEMA, every_rows=1, every_s=3600) as writer:
        writer.add(table(rows("a.jpg", 1)))
        writer.add(table(rows("b.jpg", 0, error="corrupt")))
    good, bad = list_units(str(tmp_path))
    data = open(bad, "rb").read()
    open(bad, "wb").write(data[: len(data) // 2])  # damaged by something other than our writer
    (tmp_path / ".part-x.parquet.1234.part").write_bytes(b"half")  # a killed local write
    remove_partial_writes(str(tmp_path))
    state = scan_output(str(tmp_path))
    assert state.units == [good] and state.done == {"a.jpg"} and state.failed == set()
    assert len(state.quarantined) == 1 and (tmp_path / "_quarantine").is_dir()
    assert not os.path.exists(bad) and not list(tmp_path.glob(".*.part"))
    assert scan_output(str(tmp_path)).quarantined == []  # moved aside once, not again



def test_resume_scan_knows_which_model_wrote_the_output_and_refuses_another(tmp_path):
    with UnitWriter(str(tmp_path), SCHEMA, every_rows=1, every_s=3600) as writer:
        writer.add(table(rows("a.jpg", 1)))
        writer.add(table(rows("b.jpg", 2)))
    state = scan_output(str(tmp_path))
    assert state.models == {"test@sha256:0": 2}
    state.check_model("test@sha256:0")  # the same model continues
    with pytest.raises(OutputMismatch, match=r"holds rows of test@sha256:0 \(2 files\).*qcs@sha256:1"):
        state.check_model("qcs@sha256:1")
    # The message names the overrides that select the model that wrote it.
    shipped = model_id("qcs", KNOWN_WEIGHTS["qcs_ferplus"].sha256)
    with pytest.raises(OutputMismatch, match=r"run with the model that wrote it \(model=qcs "
                                             r"model.checkpoint=qcs_ferplus\)"):
        OutputState(str(tmp_path), models={shipped: 1}).check_model("face_ensemble@sha256:1")
    scan_output(str(tmp_path / "empty")).check_model("qcs@sha256:1")  # nothing there yet


def test_resume_scan_knows_the_crop_settings_of_the_output_and_refuses_others(tmp_path):
    recipe = {"detector.name": "retinaface", "detector.head_expand": 1.25, "predictor.align_faces": False}
    schema = output_schema(["happy", "sad"], "test@sha256:0", recipe)
    with UnitWriter(str(tmp_path), schema, every_rows=1, every_s=3600) as writer:
        writer.add(table(rows("a.jpg", 1)))
    state = scan_output(str(tmp_path))
    assert len(state.recipes) == 1 and list(state.recipes.values()) == [1]
    state.check_recipe(dict(recipe))  # the same settings continue
    with pytest.raises(OutputMismatch, match=r"other crop settings \(1 files\): predictor\.align_faces=False there, "
                                             r"True here; write to another output"):
        state.check_recipe({**recipe, "predictor.align_faces": True})
    with pytest.raises(OutputMismatch, match=r"detector\.head_expand=1\.25 there, None here"):
        state.check_recipe({"detector.name": "retinaface", "predictor.align_faces": False})
    # Units written without a recipe (serving's schema, older outputs) are not checked.
    with UnitWriter(str(tmp_path / "plain"), SCHEMA, every_rows=1, every_s=3600) as writer:
        writer.add(table(rows("b.jpg", 1)))
    plain = scan_output(str(tmp_path / "plain"))
    assert plain.recipes == {}
    plain.check_recipe({**recipe, "predictor.align_faces": True})

def test_newest_rows_supersede_older_ones(tmp_path):
    with UnitWriter(str(tmp_path), SCHEMA, every_rows=1, every_s=3600, run_started=1_000, run_id="aaaa") as w:
        w.add(table(rows("a.jpg", 1), rows("b.jpg", 0, error="read failed: timeout")))
    with UnitWriter(str(tmp_path), SCHEMA, every_rows=1, every_s=3600, run_started=2_000, run_id="bbbb") as w:
        w.add(table(rows("b.jpg", 2)))  # the retry
    state = scan_output(str(tmp_path))
    assert state.failed == set() and state.repeated == {bytes(source_digests(["b.jpg"])[0]): list_units(str(tmp_path))}
    assert drop_superseded(state) == 1
    final = read_units(tmp_path).to_pylist()
    assert sorted((r["source"], r["person_index"], r["error"]) for r in final) == [
        ("a.jpg", 0, None), ("b.jpg", 0, None), ("b.jpg", 1, None)]
    assert scan_output(str(tmp_path)).repeated == {}


HOLDER = """
import sys, time
from emotion.tagging.lock import OutputLock
lock = OutputLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_lock_refuses_a_live_writer_and_takes_over_a_dead_one(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputLockedError, match="being written by another run.*break_lock=true"):
            OutputLock(str(tmp_path)).acquire()
        forced = OutputLock(str(tmp_path), break_lock=True).acquire()  # the documented override
        forced.release()
    finally:
        holder.kill()
        holder.wait()
    storage.write_bytes(str(tmp_path / "_LOCK.json"),
                        b'{"run_id": "dead", "host": "%s", "pid": %d, "heartbeat": 0}'
                        % (os.uname().nodename.encode(), holder.pid))
    with OutputLock(str(tmp_path)) as lock:  # the holder is gone: taken over with a warning
        assert (tmp_path / "_LOCK.json").read_text().count(lock.run_id) == 1
    assert not (tmp_path / "_LOCK.json").exists()  # released


def test_non_utf8_names_round_trip():
    raw = b"/photos/caf\xe9-\xff.jpg"
    listed = os.fsdecode(raw)  # how os.walk returns it
    text, stored = encode_source(listed)
    assert text == "/photos/caf\\xe9-\\xff.jpg" and stored == raw
    text.encode("utf-8")  # storable in Arrow / JSON
    assert source_path(text, stored) == listed and os.fsencode(source_path(text, stored)) == raw
    assert encode_source("/photos/ok-é.jpg") == ("/photos/ok-é.jpg", b"")
    with pytest.raises(UnnameableSourceError, match="not valid text"):
        encode_source("/photos/\ud800-manifest.jpg".replace("\ud800", "\udfff\ud800"))


def test_oversized_file_is_refused_without_being_read(tmp_path):
    big = tmp_path / "huge.jpg"
    with open(big, "wb") as f:
        f.truncate(3 * 1024**3)  # sparse: 3 GiB that reading would have to allocate
    tracemalloc.start()
    with pytest.raises(storage.FileTooLargeError, match="above the limit of 1048576 bytes"):
        storage.read_bytes(str(big), max_bytes=1024 * 1024)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1024 * 1024  # not even the first megabyte was read
    small = tmp_path / "small.jpg"
    small.write_bytes(b"x" * 100)
    assert storage.read_bytes(str(small), max_bytes=100) == b"x" * 100


def test_units_quarantine_and_lock_on_s3(s3_bucket):
    """The same store on a real S3-compatible server: single-PUT units, quarantine by
    copy + delete, and the lock's conditional create."""
    output = f"s3://{s3_bucket}/tags"
    with UnitWriter(output, SCHEMA, every_rows=1, every_s=3600) as writer:
        writer.add(table(rows("s3://x/a.jpg", 2)))
        writer.add(table(rows("s3://x/b.jpg", 1)))
    good, bad = list_units(output)
    data = storage.read_bytes(bad)
    storage.write_bytes(bad, data[:100])
    state = scan_output(output)
    assert state.done == {"s3://x/a.jpg"} and len(state.quarantined) == 1
    assert state.quarantined[0].startswith(f"{output}/_quarantine/") and storage.exists(state.quarantined[0])
    assert not storage.exists(bad)
    with OutputLock(output) as lock:
        assert not storage.create_exclusive(f"{output}/_LOCK.json", b"{}")  # held: a second create fails
        with pytest.raises(OutputLockedError):
            OutputLock(output).acquire()
        assert lock.run_id in storage.read_bytes(f"{output}/_LOCK.json").decode()
    assert not storage.exists(f"{output}/_LOCK.json")
