"""Tagging at scale: inputs listed as the job runs, resume by digest, nothing that can
hang a job (FIFOs, devices, reads that never return), and what the driver tells a user
while it runs."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from emotion import storage
from emotion.tagging.digests import SourceSet, source_digests
from emotion.tagging.inputs import Shard, iter_shard, list_inputs, plan_inputs
from emotion.tagging.reads import read_source
from tests.conftest import PROJECT_ROOT
from tests.s3_server import s3_bucket, s3_endpoint, s3_env, s3_server, seed_objects  # noqa: F401 (fixtures)
from tests.test_tag_reliability import EMOTION, assert_each_input_once, read_rows
from tests.test_tagging import compose_tag


@pytest.fixture(scope="module")
def tree(tmp_path_factory, sample_photos) -> tuple[Path, list[str]]:
    """Photos in nested folders (three of them, and some at the root)."""
    root = tmp_path_factory.mktemp("tree")
    photos = list(sample_photos.values())
    paths = []
    for i, folder in enumerate(["", "a", "a/deep", "b", "c"]):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for j in range(3):
            path = root / folder / f"p{i}{j}.jpg"
            shutil.copy(photos[(i + j) % len(photos)], path)
            paths.append(str(path))
    (root / "b" / "notes.txt").write_text("not an image")
    return root, sorted(paths)


class StallingServer:
    """A TCP server on loopback that accepts connections and never answers: a store (or
    a network mount) whose reads block."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.held.append(conn)  # kept open, never read or answered
            except OSError:
                continue

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2)
        for conn in self.held:
            conn.close()
        self.sock.close()


# -- listing -------------------------------------------------------------------------------
def test_a_small_input_is_listed_whole_and_a_large_one_is_split_into_folder_shards(tree):
    root, paths = tree
    small = plan_inputs(str(root), "path", inline_max=100)
    assert [p for p, _ in small.entries] == paths and small.total == len(paths) and not small.shards
    large = plan_inputs(str(root), "path", inline_max=4)
    assert large.entries is None and large.total is None
    assert [(s.root, s.recursive) for s in large.shards] == [
        (str(root), False), (str(root / "a"), True), (str(root / "b"), True), (str(root / "c"), True)]
    listed = [p for shard in large.shards for chunk in iter_shard(shard, "path") for p, _ in chunk]
    assert sorted(listed) == paths and len(listed) == len(set(listed))


def test_a_glob_keeps_its_depth_when_split(tree):
    root, paths = tree
    plan = plan_inputs(f"{root}/*/*.jpg", "path", inline_max=1)
    listed = sorted(p for shard in plan.shards for chunk in iter_shard(shard, "path") for p, _ in chunk)
    assert listed == [p for p in paths if p.count("/") == str(root).count("/") + 2]  # not a/deep
    assert [p for p, _ in list_inputs(f"{root}/**/*.jpg")] == paths


def test_an_s3_prefix_is_listed_page_by_page_and_split_by_prefix(s3_bucket):  # noqa: F811
    keys = [f"photos/{d:02d}/{i:04d}.jpg" for d in range(3) for i in range(1100)] + ["photos/top.jpg",
                                                                                    "photos/readme.txt"]
    seed_objects(s3_bucket, keys)
    pages = list(storage.iter_s3_objects(f"s3://{s3_bucket}/photos/00/"))
    assert [len(p) for p in pages] == [1000, 100]  # one page at a time, not one whole listing
    plan = plan_inputs(f"s3://{s3_bucket}/photos/", "path", inline_max=500)
    assert [s.root for s in plan.shards] == [f"s3://{s3_bucket}/photos/"] + [
        f"s3://{s3_bucket}/photos/{d:02d}/" for d in range(3)]
    listed = [p for shard in plan.shards for chunk in iter_shard(shard, "path") for p, _ in chunk]
    assert sorted(listed) == sorted(f"s3://{s3_bucket}/{k}" for k in keys if k.endswith(".jpg"))
    assert plan_inputs(f"s3://{s3_bucket}/photos/top.jpg", "path", 10).entries == [
        (f"s3://{s3_bucket}/photos/top.jpg", 1)]


def test_a_manifest_is_read_in_row_batches_and_names_each_file_once(tmp_path, tree):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, paths = tree
    pq.write_table(pa.table({"path": paths + paths[:2]}), tmp_path / "m.parquet", row_group_size=4)
    plan = plan_inputs(str(tmp_path / "m.parquet"), "path", inline_max=3)
    assert plan.total == len(paths) + 2 and [s.kind for s in plan.shards] == ["manifest"]
    small = plan_inputs(str(tmp_path / "m.parquet"), "path", inline_max=100)
    assert [p for p, _ in small.entries] == paths  # the repeats are dropped, the order kept
    with pytest.raises(KeyError, match="no 'file' column"):
        list(iter_shard(Shard("manifest", str(tmp_path / "m.parquet")), "file"))


# -- resume by digest ----------------------------------------------------------------------
def test_source_sets_hold_digests_and_answer_membership():
    names = [f"/photos/{i}.jpg" for i in range(1000)] + ["caf\udce9.jpg"]
    found = SourceSet(source_digests(names[::2]))
    mask = found.contains(source_digests(names))
    assert mask.tolist() == [i % 2 == 0 for i in range(len(names))]
    assert "/photos/0.jpg" in found and "/photos/1.jpg" not in found and len(found) == 501
    assert SourceSet(source_digests(["a", "b"])) == {"b", "a"} and SourceSet() == set()
    assert source_digests(["a"]).dtype == np.dtype("S16")


# -- nothing hangs ---------------------------------------------------------------------------
def test_only_regular_files_are_read(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "folder.jpg").mkdir()
    data, error = read_source(str(tmp_path / "pipe.jpg"), timeout_s=30)
    assert data is None and "is a FIFO, not a regular file" in error
    data, error = read_source(str(tmp_path / "folder.jpg"))
    assert data is None and "is a folder, not a regular file" in error
    data, error = read_source("/dev/zero")
    assert data is None and "character device" in error


def test_a_read_that_blocks_past_its_deadline_is_an_error(monkeypatch):
    server = StallingServer()
    try:
        for key, value in s3_env(server.endpoint).items():
            monkeypatch.setenv(key, value)
        data, error = read_source("s3://stalled/photo.jpg", timeout_s=1.0)
        assert data is None and error.startswith("read timed out after 1 s (read_timeout_s)")
    finally:
        server.close()


@pytest.mark.integration
def test_a_fifo_and_a_photo_through_the_command_with_no_alarming_line(tmp_path, sample_photos):
    """The FIFO gets an error row without being opened, the photo a normal row, and the
    whole run prints no Ray error line (``E ... core_worker``)."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(sample_photos["trump"], folder / "photo.jpg")
    os.mkfifo(folder / "pipe.jpg")
    result = subprocess.run([EMOTION, "tag", f"input={folder}", f"output={tmp_path / 'out'}"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    text = result.stdout + result.stderr
    assert result.returncode == 0, text
    rows = {r["source"]: r for r in read_rows(tmp_path / "out")}
    assert "not a regular file" in rows[str(folder / "pipe.jpg")]["error"]
    assert rows[str(folder / "photo.jpg")]["error"] is None and rows[str(folder / "photo.jpg")]["person_index"] == 0
    alarming = [line for line in text.splitlines() if " E " in line or "core_worker" in line or "Traceback" in line]
    assert not alarming, alarming


def test_a_stalled_read_is_named_then_becomes_an_error_row(ray_local, tmp_path, sample_photos, capsys, monkeypatch):
    """A manifest with a photo and an object on a store that never answers: the progress
    names the stalled file, the read times out into an error row, the job finishes."""
    from jobs.tag import run

    server = StallingServer()
    try:
        for key, value in s3_env(server.endpoint).items():
            monkeypatch.setenv(key, value)
        photo = tmp_path / "photo.jpg"
        shutil.copy(sample_photos["batman"], photo)
        stalled = "s3://stalled/never.jpg"
        (tmp_path / "m.csv").write_text(f"path\n{photo}\n{stalled}\n")
        summary = run(compose_tag([f"input={tmp_path / 'm.csv'}", f"output={tmp_path / 'out'}",
                                   "read_timeout_s=8", "stall_warn_s=2", "progress_every_s=0"]))
    finally:
        server.close()
    rows = {r["source"]: r for r in read_rows(tmp_path / "out")}
    assert rows[stalled]["error"].startswith("read timed out after 8 s")
    assert rows[str(photo)]["error"] is None
    assert summary.images == 2 and summary.errors == 1
    stall_lines = [line for line in capsys.readouterr().out.splitlines() if "no image finished" in line]
    assert any(stalled in line for line in stall_lines), stall_lines


# -- the streaming job -------------------------------------------------------------------------
def test_a_large_input_streams_resumes_and_retries_by_digest(ray_local, tree, tmp_path):
    from jobs.tag import run

    root, paths = tree
    output = tmp_path / "out"
    (root / "c" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    try:
        first = run(compose_tag([f"input={root}", f"output={output}", "inline_inputs=4", "limit=7"]))
        assert first.images == 7 and first.listed == 7  # the first 7 listed, by one task in order
        second = run(compose_tag([f"input={root}", f"output={output}", "inline_inputs=4"]))
        assert second.listed == len(paths) + 1 and second.skipped_already_tagged == 7
        assert second.images == len(paths) + 1 - 7 and second.errors == 1
        rows = read_rows(output)
        assert_each_input_once(rows, set(paths) | {str(root / "c" / "broken.jpg")})
        (root / "c" / "broken.jpg").unlink()
        shutil.copy(paths[0], root / "c" / "broken.jpg")  # fixed: retry_errors tags it again
        third = run(compose_tag([f"input={root}", f"output={output}", "inline_inputs=4", "retry_errors=true"]))
        assert third.images == 1 and third.retried_errors == 1 and third.errors == 0
        assert_each_input_once(read_rows(output), set(paths) | {str(root / "c" / "broken.jpg")})
    finally:
        (root / "c" / "broken.jpg").unlink()
