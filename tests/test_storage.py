"""emotion.storage against local folders and a real S3-compatible server (moto on loopback)."""

from __future__ import annotations

import os
import traceback
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from emotion import storage
from emotion.storage import S3Config, StorageError
from tests.s3_server import (  # noqa: F401 (fixtures)
    MotoProcess,
    ThrottlingProxy,
    boto3_client,
    free_port,
    s3_bucket,
    s3_endpoint,
    s3_server,
    seed_objects,
)

# ------------------------------------------------------------------ URIs, local


def test_split_and_is_s3():
    assert storage.is_s3("s3://b/k/x.jpg")
    assert not storage.is_s3("/data/s3://x") and not storage.is_s3("b/k")
    assert storage.split_s3("s3://bucket/a/b.jpg") == ("bucket", "a/b.jpg")
    assert storage.split_s3("s3://bucket") == ("bucket", "")
    assert storage.join("s3://b/out/", "part", "x.parquet") == "s3://b/out/part/x.parquet"
    with pytest.raises(ValueError, match="not an s3:// URI"):
        storage.split_s3("/tmp/x")
    with pytest.raises(ValueError, match="no bucket"):
        storage.split_s3("s3:///key")


def _make_tree(root):
    for rel in ["a/1.jpg", "a/2.JPG", "a/b/3.jpg", "a/b/c/4.png", "top.jpg", "notes.txt"]:
        storage.write_bytes(str(root / rel), rel.encode())


def test_local_round_trip_and_listing(tmp_path):
    _make_tree(tmp_path)
    assert storage.read_bytes(str(tmp_path / "a/b/3.jpg")) == b"a/b/3.jpg"
    every = storage.list_files(str(tmp_path))
    assert every == sorted(every) and len(every) == 6
    jpgs = storage.list_files(str(tmp_path), suffixes=(".jpg",))
    assert [p.removeprefix(str(tmp_path)) for p in jpgs] == [
        "/a/1.jpg", "/a/2.JPG", "/a/b/3.jpg", "/top.jpg",
    ]
    shallow = storage.list_files(str(tmp_path / "a"), recursive=False)
    assert [p.rsplit("/", 1)[1] for p in shallow] == ["1.jpg", "2.JPG"]
    assert storage.list_files(f"file://{tmp_path}/top.jpg") == [str(tmp_path / "top.jpg")]
    assert storage.exists(str(tmp_path / "a/b")) and not storage.exists(str(tmp_path / "zz"))


def test_local_glob(tmp_path):
    _make_tree(tmp_path)
    rel = lambda ps: [p.removeprefix(str(tmp_path) + "/") for p in ps]  # noqa: E731
    assert rel(storage.list_files(f"{tmp_path}/a/*.jpg")) == ["a/1.jpg"]
    assert rel(storage.list_files(f"{tmp_path}/a/?.*")) == ["a/1.jpg", "a/2.JPG"]
    assert rel(storage.list_files(f"{tmp_path}/**/*.jpg")) == ["a/1.jpg", "a/b/3.jpg", "top.jpg"]
    assert rel(storage.list_files(f"{tmp_path}/a/**/*.png")) == ["a/b/c/4.png"]
    assert rel(storage.list_files(f"{tmp_path}/a/[12].*")) == ["a/1.jpg", "a/2.JPG"]


def test_local_missing_paths_are_named(tmp_path):
    missing = tmp_path / "nope" / "x.jpg"
    with pytest.raises(FileNotFoundError, match="nope/x.jpg"):
        storage.read_bytes(str(missing))
    with pytest.raises(FileNotFoundError, match="nope"):
        storage.list_files(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="nope"):
        storage.list_files(str(tmp_path / "nope" / "*.jpg"))
    with pytest.raises(FileNotFoundError, match="x.jpg"):
        storage.copy_to_local(str(missing), tmp_path / "out.jpg")
    with pytest.raises(FileNotFoundError, match="x.jpg"):
        storage.upload_file(str(missing), str(tmp_path / "out.jpg"))


def test_local_names_that_are_not_utf8(tmp_path):
    # PyArrow's own local listing refuses a folder holding such a name; ours keeps it.
    name = os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9-\xff.jpg")
    storage.write_bytes(name, b"bytes")
    assert storage.list_files(str(tmp_path)) == [name]
    assert storage.read_bytes(name, max_bytes=5) == b"bytes" and storage.exists(name)
    storage.move(name, name + ".moved")
    storage.delete(name + ".moved")
    assert os.listdir(tmp_path) == []


def test_failed_write_leaves_no_partial_file_or_object(s3_bucket, tmp_path):
    def failing(first: bytes | None):
        if first is not None:
            yield first
        raise OSError("source broke")

    for uri in (str(tmp_path / "out.bin"), f"s3://{s3_bucket}/out.bin"):
        # Small (one PutObject on close) and above 10 MiB (a multipart upload).
        for first in (b"x" * 100, b"y" * (11 * 1024 * 1024)):
            with pytest.raises(OSError, match="source broke"):
                storage._write(uri, failing(first), None, "write")
            assert not storage.exists(uri), (uri, len(first))
        storage.write_bytes(uri, b"old")
        # A source that fails before its first chunk leaves the previous content.
        with pytest.raises(OSError, match="source broke"):
            storage._write(uri, failing(None), None, "write")
        assert storage.read_bytes(uri) == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]  # no temporary file left behind


def test_local_filesystem_for_parquet(tmp_path):
    fs, path = storage.get_filesystem(str(tmp_path / "t.parquet"))
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "t.parquet")
    pq.write_table(pa.table({"x": [1, 2]}), path, filesystem=fs)
    assert pq.read_table(path, filesystem=fs).column("x").to_pylist() == [1, 2]


# ------------------------------------------------------------------- S3 (moto)


def test_s3_round_trip(s3_bucket, tmp_path):
    uri = f"s3://{s3_bucket}/dir/blob.bin"
    payload = bytes(range(256)) * 1000
    storage.write_bytes(uri, payload)
    assert storage.read_bytes(uri) == payload
    assert storage.exists(uri)
    assert storage.exists(f"s3://{s3_bucket}/dir")  # a non-empty prefix
    assert not storage.exists(f"s3://{s3_bucket}/dir/other.bin")
    local = storage.copy_to_local(uri, tmp_path / "deep" / "blob.bin")
    assert local.read_bytes() == payload
    storage.upload_file(local, f"s3://{s3_bucket}/up/blob.bin")
    assert storage.read_bytes(f"s3://{s3_bucket}/up/blob.bin") == payload
    storage.makedirs(f"s3://{s3_bucket}/no/dirs/on/s3")  # a no-op, must not fail
    with pytest.raises(FileNotFoundError, match=f"s3://{s3_bucket}/dir/missing.bin"):
        storage.read_bytes(f"s3://{s3_bucket}/dir/missing.bin")
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        storage.copy_to_local(f"s3://{s3_bucket}/dir/missing.bin", tmp_path / "m.bin")


def test_s3_parquet_round_trip_with_returned_filesystem(s3_bucket):
    fs, path = storage.get_filesystem(f"s3://{s3_bucket}/tags/part-0.parquet")
    assert isinstance(fs, pafs.S3FileSystem) and path == f"{s3_bucket}/tags/part-0.parquet"
    table = pa.table({"image_id": ["a", "b", "c"], "score": [0.1, 0.5, 0.9]})
    pq.write_table(table, path, filesystem=fs)
    assert pq.read_table(path, filesystem=fs).equals(table)
    # Folder-style reads through the same filesystem, as Ray Data does.
    folder_fs, folder = storage.get_filesystem(f"s3://{s3_bucket}/tags/")
    assert pq.read_table(folder, filesystem=folder_fs).num_rows == 3
    assert storage.list_files(f"s3://{s3_bucket}/tags", suffixes=".parquet") == [
        f"s3://{s3_bucket}/tags/part-0.parquet"
    ]


def test_s3_listing_paginates_past_1000_keys(s3_bucket, s3_endpoint):
    client = boto3_client(s3_endpoint)
    keys = [f"imgs/{i:05d}.jpg" for i in range(2500)]
    # A few real PUTs over HTTP, the bulk seeded straight into the server (fast).
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=s3_bucket, Key=k, Body=b"x"), keys[:20]))
    seed_objects(s3_bucket, keys[20:])
    # The server does page at 1,000: one un-paginated call cannot see everything.
    first = client.list_objects_v2(Bucket=s3_bucket, Prefix="imgs/")
    assert first["IsTruncated"] and first["KeyCount"] == 1000
    listed = storage.list_files(f"s3://{s3_bucket}/imgs/")
    assert listed == [f"s3://{s3_bucket}/{k}" for k in keys]  # all 2,500, sorted


def test_s3_glob_and_shallow_listing(s3_bucket):
    for rel in ["a/1.jpg", "a/2.JPG", "a/b/3.jpg", "a/b/c/4.png", "top.jpg", "notes.txt"]:
        storage.write_bytes(f"s3://{s3_bucket}/{rel}", b"x")
    base = f"s3://{s3_bucket}"
    rel = lambda us: [u.removeprefix(base + "/") for u in us]  # noqa: E731
    assert rel(storage.list_files(f"{base}/a/*.jpg")) == ["a/1.jpg"]
    assert rel(storage.list_files(f"{base}/a/?.*")) == ["a/1.jpg", "a/2.JPG"]
    assert rel(storage.list_files(f"{base}/**/*.jpg")) == ["a/1.jpg", "a/b/3.jpg", "top.jpg"]
    assert rel(storage.list_files(f"{base}/a/**/*.png")) == ["a/b/c/4.png"]
    assert rel(storage.list_files(f"{base}/a", recursive=False)) == ["a/1.jpg", "a/2.JPG"]
    assert rel(storage.list_files(base, suffixes=[".jpg"])) == [
        "a/1.jpg", "a/2.JPG", "a/b/3.jpg", "top.jpg",
    ]
    assert storage.list_files(f"{base}/top.jpg") == [f"{base}/top.jpg"]  # one object
    assert storage.list_files(f"{base}/empty/") == []


def test_s3_writes_are_single_puts_and_listings_carry_sizes(s3_bucket, s3_endpoint):
    storage.write_bytes(f"s3://{s3_bucket}/a/x.json.gz", b"not gzip")
    head = boto3_client(s3_endpoint).get_object(Bucket=s3_bucket, Key="a/x.json.gz")
    if "allow_delayed_open" in (pafs.S3FileSystem.__doc__ or ""):  # pyarrow >= 21
        assert "-" not in head["ETag"]  # one PutObject: a multipart upload's ETag ends "-<parts>"
    assert head["Body"].read() == b"not gzip"  # written as given: ".gz" does not make PyArrow compress
    storage.write_bytes(f"s3://{s3_bucket}/a/b/y.bin", b"12345")
    assert storage.list_entries(f"s3://{s3_bucket}/a") == [
        (f"s3://{s3_bucket}/a/b/y.bin", 5), (f"s3://{s3_bucket}/a/x.json.gz", 8),
    ]
    assert storage.list_entries(f"s3://{s3_bucket}/a/b/y.bin") == [(f"s3://{s3_bucket}/a/b/y.bin", 5)]
    with pytest.raises(storage.FileTooLargeError, match="5 bytes, above the limit of 4"):
        storage.read_bytes(f"s3://{s3_bucket}/a/b/y.bin", max_bytes=4)
    assert storage.read_bytes(f"s3://{s3_bucket}/a/b/y.bin", max_bytes=5) == b"12345"
    storage.move(f"s3://{s3_bucket}/a/b/y.bin", f"s3://{s3_bucket}/moved/y.bin")
    assert storage.list_files(f"s3://{s3_bucket}/moved") == [f"s3://{s3_bucket}/moved/y.bin"]
    assert not storage.exists(f"s3://{s3_bucket}/a/b/y.bin")
    with pytest.raises(FileNotFoundError, match="a/b/y.bin"):
        storage.move(f"s3://{s3_bucket}/a/b/y.bin", f"s3://{s3_bucket}/moved/z.bin")
    storage.delete(f"s3://{s3_bucket}/moved/y.bin")
    storage.delete(f"s3://{s3_bucket}/moved/y.bin")  # already gone: not an error
    assert storage.list_files(f"s3://{s3_bucket}/moved") == []


def test_unreachable_endpoint_is_named(s3_endpoint):
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(StorageError, match=f"cannot reach endpoint {dead} to read s3://b/k") as info:
        storage.read_bytes("s3://b/k", s3=S3Config(endpoint_url=dead, max_attempts=1))
    assert not isinstance(info.value, FileNotFoundError)


def test_s3_missing_bucket_is_named(s3_endpoint, tmp_path):
    uri = "s3://no-such-bucket-here/x/y.jpg"
    calls = [
        lambda: storage.read_bytes(uri),
        lambda: storage.list_files("s3://no-such-bucket-here/x/"),
        lambda: storage.exists(uri),
        lambda: storage.copy_to_local(uri, tmp_path / "y.jpg"),  # HEAD: 404 without body
        lambda: storage.write_bytes(uri, b"x"),
        lambda: storage.delete(uri),
        lambda: storage.check_bucket(uri),
    ]
    for call in calls:
        with pytest.raises(StorageError, match="bucket 'no-such-bucket-here'") as info:
            call()
        assert not isinstance(info.value, FileNotFoundError)
        assert s3_endpoint in str(info.value)


def _full_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


@pytest.mark.integration
def test_s3_bad_credentials_give_access_denied_without_the_secret():
    with MotoProcess() as server:
        key_id, secret = server.create_user_with_s3_access()
        boto3_client(server.endpoint).create_bucket(Bucket="guarded")
        server.enable_auth()

        good = S3Config(endpoint_url=server.endpoint, access_key_id=key_id, secret_access_key=secret)
        storage.write_bytes("s3://guarded/ok.txt", b"ok", s3=good)
        assert storage.read_bytes("s3://guarded/ok.txt", s3=good) == b"ok"
        fs, path = storage.get_filesystem("s3://guarded/ok.txt", s3=good)
        with fs.open_input_stream(path) as f:
            assert f.read() == b"ok"

        wrong_secret = "wrong-secret-0123456789abcdef"
        bad_configs = {
            "unknown key": S3Config(
                endpoint_url=server.endpoint, access_key_id="AKIAUNKNOWN0000", secret_access_key=secret
            ),
            "wrong secret": S3Config(
                endpoint_url=server.endpoint, access_key_id=key_id, secret_access_key=wrong_secret
            ),
        }
        for label, cfg in bad_configs.items():
            for call in (
                lambda: storage.read_bytes("s3://guarded/ok.txt", s3=cfg),
                lambda: storage.list_files("s3://guarded/", s3=cfg),
                lambda: storage.write_bytes("s3://guarded/new.txt", b"x", s3=cfg),
            ):
                with pytest.raises(StorageError) as info:
                    call()
                text = _full_text(info.value)
                assert "access denied" in str(info.value), label
                assert "'guarded'" in str(info.value) and server.endpoint in str(info.value)
                assert secret not in text and wrong_secret not in text, label
            assert secret not in repr(cfg) and wrong_secret not in repr(cfg)
        assert secret not in repr(good) and "access_key_id" not in repr(good)


def test_s3_secret_from_environment_never_in_errors(s3_endpoint, monkeypatch):
    secret = "env-secret-that-must-not-leak-42"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    # An error whose text we build from server output: the secret is redacted anyway.
    with pytest.raises(StorageError) as info:
        storage.read_bytes(f"s3://no-such-bucket-{secret[:3]}/k")
    assert secret not in _full_text(info.value)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageError, match="no usable AWS credentials"):
        storage.read_bytes("s3://any-bucket/k")


def test_retry_policy_is_configured(s3_endpoint):
    cfg = S3Config(max_attempts=7)
    client = storage._boto3_client(storage._resolve(cfg))
    assert client.meta.config.retries["mode"] == "adaptive"
    assert client.meta.config.retries["total_max_attempts"] == 7
    assert client.meta.endpoint_url == s3_endpoint  # from AWS_ENDPOINT_URL_S3
    fs, _ = storage.get_filesystem("s3://b/k", s3=cfg)
    assert isinstance(fs, pafs.S3FileSystem)
    with pytest.raises(ValueError, match="max_attempts"):
        S3Config(max_attempts=0)
    with pytest.raises(ValueError, match="http"):
        S3Config(endpoint_url="127.0.0.1:9000")
    assert storage.build_s3_config({"endpoint_url": "http://minio:9000", "max_attempts": 4}) == (
        S3Config(endpoint_url="http://minio:9000", max_attempts=4)
    )
    with pytest.raises(ValueError, match="secret_access_key"):
        storage.build_s3_config({"secret_access_key": "x"})


def test_throttling_is_retried_then_reported(s3_bucket, s3_endpoint):
    storage.write_bytes(f"s3://{s3_bucket}/k.txt", b"payload")
    # A real 503 SlowDown answer, then success on the second attempt. PyArrow sends a HEAD
    # (which gives the size) before the GET: throttled HEAD, HEAD, GET.
    with ThrottlingProxy(s3_endpoint, failures=1) as proxy:
        cfg = S3Config(endpoint_url=proxy.endpoint, max_attempts=2)
        assert storage.read_bytes(f"s3://{s3_bucket}/k.txt", s3=cfg) == b"payload"
        assert proxy.requests_seen == 3
    # Through the filesystem handed to Ray Data: same server behaviour, same outcome.
    with ThrottlingProxy(s3_endpoint, failures=2) as proxy:
        fs, path = storage.get_filesystem(
            f"s3://{s3_bucket}/k.txt", s3=S3Config(endpoint_url=proxy.endpoint, max_attempts=3)
        )
        with fs.open_input_stream(path) as f:
            assert f.read() == b"payload"
        assert proxy.requests_seen == 4  # 2 throttled HEADs, then HEAD and GET
    # Out of attempts: a clear error, after exactly max_attempts requests. A HEAD answer has
    # no body, so only its status names the cause; a listing's answer carries the code.
    with ThrottlingProxy(s3_endpoint, failures=100) as proxy:
        cfg = S3Config(endpoint_url=proxy.endpoint, max_attempts=2)
        with pytest.raises(StorageError, match="throttling.*HTTP 503.*2 attempts"):
            storage.read_bytes(f"s3://{s3_bucket}/k.txt", s3=cfg)
        assert proxy.requests_seen == 2
        with pytest.raises(StorageError, match="throttling.*SlowDown.*2 attempts"):
            storage.list_files(f"s3://{s3_bucket}/", s3=cfg)
        assert proxy.requests_seen == 4


def test_unknown_profile_is_a_clear_error(s3_endpoint):
    with pytest.raises(StorageError, match="profile 'no-such-profile'"):
        storage.read_bytes("s3://b/k", s3=S3Config(profile="no-such-profile"))
