"""One storage layer over local paths and ``s3://`` URIs.

Everything that reads or writes data (tagging inputs and outputs, datasets, checkpoints,
weights) goes through these functions, so a job runs unchanged on a laptop folder, on
AWS S3 or on an S3-compatible store (MinIO, Ceph, moto).

Credentials follow the standard AWS chain and nothing else: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` (/ ``AWS_SESSION_TOKEN``), ``AWS_PROFILE`` and the shared
config files, then an instance, task or pod role. The endpoint of an S3-compatible store
comes from ``S3Config.endpoint_url``, else ``AWS_ENDPOINT_URL_S3``, else
``AWS_ENDPOINT_URL``. Throttling and 5xx answers are retried with exponential backoff
(boto3 ``adaptive`` mode, PyArrow's ``AwsStandardS3RetryStrategy``).

Secrets never appear in logs, in ``repr(S3Config)`` or in exception messages.

Ray workers read the same environment variables, but they inherit the environment of
``ray start`` (or get ``runtime_env={"env_vars": ...}``): set them before the cluster
starts, or pass them in the runtime environment.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import re
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyarrow.fs as pafs

logger = logging.getLogger(__name__)

S3_SCHEME = "s3://"
_FILE_SCHEME = "file://"
_GLOB_CHARS = "*?["
# Timeouts in seconds; a stalled connection then counts as a retryable failure.
_CONNECT_TIMEOUT_S = 10.0
_READ_TIMEOUT_S = 60.0

# Error codes S3 (and S3-compatible stores) answer with, grouped by what they mean.
_ACCESS_DENIED_CODES = {
    "AccessDenied",
    "AllAccessDisabled",
    "ExpiredToken",
    "Forbidden",
    "InvalidAccessKeyId",
    "InvalidToken",
    "SignatureDoesNotMatch",
    "TokenRefreshRequired",
    "403",
}
_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404"}
_THROTTLING_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ServiceUnavailable",
    "503",
}


class StorageError(OSError):
    """A storage operation failed; the message names the URI, bucket and endpoint."""


@dataclass(frozen=True)
class S3Config:
    """How to reach S3 or an S3-compatible store.

    Every field is optional: ``None`` means "use the standard AWS environment".
    Explicit keys are for stores whose keys come from a config system; prefer the
    environment, a profile or a role. They are excluded from ``repr``.
    """

    endpoint_url: str | None = None
    region: str | None = None
    max_attempts: int = 10
    profile: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"S3Config.max_attempts must be >= 1, got {self.max_attempts}")
        if self.endpoint_url is not None and not re.match(r"^https?://", self.endpoint_url):
            raise ValueError(
                f"S3Config.endpoint_url must start with http:// or https://, got {self.endpoint_url!r}"
            )
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("S3Config needs both access_key_id and secret_access_key, or neither")


# --------------------------------------------------------------------------- URIs


def is_s3(uri: str | os.PathLike) -> bool:
    """True for ``s3://bucket/key`` URIs."""
    return isinstance(uri, str) and uri.startswith(S3_SCHEME)


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``; the key may be empty."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI has no bucket: {uri!r}")
    if any(c in bucket for c in _GLOB_CHARS):
        raise ValueError(f"glob characters are not allowed in the bucket name: {uri!r}")
    return bucket, key


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or an ``s3://`` URI."""
    if is_s3(base):
        out = base.rstrip("/")
        for part in parts:
            out = f"{out}/{part.strip('/')}"
        return out
    return os.path.join(_local_path(base), *parts)


def _local_path(uri: str | os.PathLike) -> str:
    text = os.fspath(uri)
    if text.startswith(_FILE_SCHEME):
        text = text[len(_FILE_SCHEME) :]
    return os.path.abspath(os.path.expanduser(text))


def _has_glob(text: str) -> bool:
    return any(c in text for c in _GLOB_CHARS)


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Glob over ``/``-separated paths: ``*`` and ``?`` stay within one path segment,
    ``**`` spans any number of segments (``a/**/b`` also matches ``a/b``)."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
                i += 1
            else:
                # fnmatch already translates one bracket expression correctly.
                out.append(fnmatch.translate(pattern[i : end + 1])[4:-3])
                i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _literal_prefix(pattern: str) -> str:
    """The part of ``pattern`` before its first glob character."""
    cut = min((pattern.find(c) for c in _GLOB_CHARS if c in pattern), default=len(pattern))
    return pattern[:cut]


def _suffix_filter(suffixes: Iterable[str] | None):
    if suffixes is None:
        return lambda name: True
    wanted = tuple(s.lower() for s in ([suffixes] if isinstance(suffixes, str) else suffixes))
    return lambda name: name.lower().endswith(wanted)


# --------------------------------------------------------------- configuration


@dataclass(frozen=True)
class _Resolved:
    """S3Config with the environment applied; the cache key for clients."""

    endpoint_url: str | None
    region: str | None
    max_attempts: int
    profile: str | None
    access_key_id: str | None = field(repr=False)
    secret_access_key: str | None = field(repr=False)
    session_token: str | None = field(repr=False)
    # A digest of the credential-related environment: a client made before the
    # environment changed (new keys, another profile) must not be reused.
    env_fingerprint: str = field(repr=False, default="")

    @property
    def where(self) -> str:
        return f"endpoint {self.endpoint_url}" if self.endpoint_url else "AWS S3"


def _resolve(s3: S3Config | None) -> _Resolved:
    cfg = s3 or S3Config()
    endpoint = (
        cfg.endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or None
    )
    region = cfg.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region is None and endpoint is not None:
        # S3-compatible stores ignore the region but SigV4 signing needs one.
        region = "us-east-1"
    return _Resolved(
        endpoint_url=endpoint.rstrip("/") if endpoint else None,
        region=region,
        max_attempts=cfg.max_attempts,
        profile=cfg.profile,
        access_key_id=cfg.access_key_id,
        secret_access_key=cfg.secret_access_key,
        session_token=cfg.session_token,
        env_fingerprint=_credential_env_fingerprint(),
    )


_CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_EC2_METADATA_DISABLED",
)


def _credential_env_fingerprint() -> str:
    text = "\0".join(os.environ.get(name, "") for name in _CREDENTIAL_ENV)
    return hashlib.sha256(text.encode()).hexdigest()


def _secrets(res: _Resolved) -> list[str]:
    values = [res.secret_access_key, res.session_token]
    values += [os.environ.get("AWS_SECRET_ACCESS_KEY"), os.environ.get("AWS_SESSION_TOKEN")]
    return [v for v in values if v and len(v) >= 4]


def _redact(text: str, res: _Resolved) -> str:
    for secret in _secrets(res):
        text = text.replace(secret, "***")
    return text


_lock = threading.Lock()
_clients: dict[_Resolved, Any] = {}
_filesystems: dict[tuple[_Resolved, str | None], pafs.S3FileSystem] = {}


def _boto3_client(res: _Resolved):
    """A cached boto3 S3 client (clients are thread-safe; creating one is slow)."""
    with _lock:
        client = _clients.get(res)
        if client is not None:
            return client
        import boto3
        from botocore.config import Config

        config = Config(
            retries={"total_max_attempts": res.max_attempts, "mode": "adaptive"},
            connect_timeout=_CONNECT_TIMEOUT_S,
            read_timeout=_READ_TIMEOUT_S,
            # S3-compatible stores rarely have per-bucket DNS names.
            s3={"addressing_style": "path"} if res.endpoint_url else None,
        )
        from botocore.exceptions import ProfileNotFound

        try:
            session = boto3.session.Session(profile_name=res.profile)
        except ProfileNotFound:
            raise StorageError(f"AWS profile {res.profile!r} is not configured") from None
        client = session.client(
            "s3",
            endpoint_url=res.endpoint_url,
            region_name=res.region,
            aws_access_key_id=res.access_key_id,
            aws_secret_access_key=res.secret_access_key,
            aws_session_token=res.session_token,
            config=config,
        )
        logger.debug(
            "created S3 client for %s, region %s, max_attempts %d",
            res.where,
            res.region,
            res.max_attempts,
        )
        _clients[res] = client
        return client


def _pyarrow_credentials(res: _Resolved) -> dict[str, str]:
    if res.access_key_id:
        creds = {"access_key": res.access_key_id, "secret_key": res.secret_access_key}
        if res.session_token:
            creds["session_token"] = res.session_token
        return creds
    if res.profile:
        # The C++ SDK reads AWS_PROFILE but takes no profile argument: let boto3 resolve
        # the profile (SSO, credential_process, ...) and hand over the keys.
        import boto3

        found = boto3.session.Session(profile_name=res.profile).get_credentials()
        if found is None:
            raise StorageError(f"AWS profile {res.profile!r} has no credentials")
        frozen = found.get_frozen_credentials()
        creds = {"access_key": frozen.access_key, "secret_key": frozen.secret_key}
        if frozen.token:
            creds["session_token"] = frozen.token
        return creds
    return {}  # the SDK's default chain: env, shared files, instance/pod role


def _s3_filesystem(res: _Resolved, bucket: str | None) -> pafs.S3FileSystem:
    region = res.region
    if region is None and res.endpoint_url is None and bucket:
        try:
            region = pafs.resolve_s3_region(bucket)
        except OSError:
            region = None  # let the SDK pick; the request will say what is wrong
    key = (res, region)
    with _lock:
        fs = _filesystems.get(key)
        if fs is not None:
            return fs
        kwargs: dict[str, Any] = dict(
            region=region,
            connect_timeout=_CONNECT_TIMEOUT_S,
            request_timeout=_READ_TIMEOUT_S,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=res.max_attempts),
        )
        if res.endpoint_url:
            scheme, _, host = res.endpoint_url.partition("://")
            kwargs.update(endpoint_override=host, scheme=scheme)
        fs = pafs.S3FileSystem(**kwargs, **_pyarrow_credentials(res))
        _filesystems[key] = fs
        return fs


# ------------------------------------------------------------------- errors


def _translate(err: Exception, uri: str, res: _Resolved, action: str) -> Exception:
    """Turn a botocore exception into a FileNotFoundError or a StorageError."""
    from botocore.exceptions import (
        ClientError,
        ConnectionError as BotoConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    bucket = split_s3(uri)[0] if is_s3(uri) else "?"
    if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
        msg = (
            f"no usable AWS credentials to {action} {uri} at {res.where}: set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run with an "
            "instance/pod role"
        )
        return StorageError(_redact(msg, res))
    if isinstance(err, BotoConnectionError):
        return StorageError(_redact(f"cannot reach {res.where} to {action} {uri}: {err}", res))
    if not isinstance(err, ClientError):
        return StorageError(_redact(f"failed to {action} {uri} at {res.where}: {err}", res))

    code = str(err.response.get("Error", {}).get("Code", ""))
    status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    detail = err.response.get("Error", {}).get("Message") or ""
    if code == "NoSuchBucket":
        msg = f"bucket {bucket!r} does not exist at {res.where} (while trying to {action} {uri})"
    elif code in _NOT_FOUND_CODES:
        return FileNotFoundError(_redact(f"no such object: {uri} (at {res.where})", res))
    elif code in _ACCESS_DENIED_CODES or status == 403:
        msg = (
            f"access denied to bucket {bucket!r} at {res.where} (while trying to {action} "
            f"{uri}): the credentials are invalid or lack permission ({code or status}). "
            "Credentials come from the standard AWS chain: AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an instance/pod role"
        )
    elif code in _THROTTLING_CODES or status in (429, 503):
        msg = (
            f"{res.where} kept throttling requests to {action} {uri} ({code or status}) "
            f"after {res.max_attempts} attempts; lower the request rate or raise "
            "S3Config.max_attempts"
        )
    else:
        msg = f"failed to {action} {uri} at {res.where}: {code or status} {detail}".rstrip()
    return StorageError(_redact(msg, res))


def _call(res: _Resolved, uri: str, action: str, fn, *args, **kwargs):
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(*args, **kwargs)
    except (ClientError, BotoCoreError) as err:
        translated = _translate(err, uri, res, action)
        if isinstance(translated, FileNotFoundError) and is_s3(uri):
            # A HEAD answer has no body, so a missing bucket also reads "404":
            # ask the bucket itself to tell the two apart.
            check_bucket(uri, _config_of(res))
        raise translated from err


def check_bucket(uri: str, s3: S3Config | None = None) -> None:
    """Raise a clear StorageError now if the URI's bucket is missing or not accessible.

    Jobs call this before handing a filesystem to Ray Data, whose errors are vaguer.
    """
    res = _resolve(s3)
    bucket, _ = split_s3(uri)
    client = _boto3_client(res)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        # ListObjectsV2 answers with an error body (HeadBucket cannot: HEAD has no body).
        client.list_objects_v2(Bucket=bucket, MaxKeys=1)
    except (ClientError, BotoCoreError) as err:
        translated = _translate(err, uri, res, "list")
        if isinstance(translated, FileNotFoundError):
            translated = StorageError(f"bucket {bucket!r} not found at {res.where}")
        raise translated from err


# ------------------------------------------------------------------ public API


def get_filesystem(
    uri: str | os.PathLike, s3: S3Config | None = None
) -> tuple[pafs.FileSystem, str]:
    """A PyArrow filesystem and the path inside it, for ``pyarrow.parquet`` and Ray Data.

    ``s3://bucket/key`` -> ``(S3FileSystem, "bucket/key")``; a local path ->
    ``(LocalFileSystem, absolute path)``. No request is made.
    """
    if is_s3(uri):
        bucket, key = split_s3(uri)
        return _s3_filesystem(_resolve(s3), bucket), f"{bucket}/{key}".rstrip("/")
    return pafs.LocalFileSystem(), _local_path(uri)


def list_files(
    uri: str | os.PathLike,
    suffixes: Iterable[str] | str | None = None,
    recursive: bool = True,
    s3: S3Config | None = None,
) -> list[str]:
    """Files under a folder/prefix, or matching a glob, as sorted full URIs.

    ``uri`` is a local folder, a local file, an ``s3://bucket/prefix``, or a glob over
    either (``*`` and ``?`` within one path segment, ``**`` across segments).
    ``suffixes`` (case-insensitive, e.g. ``(".jpg", ".png")``) filters file names.
    ``recursive=False`` lists only the folder's direct children (ignored for globs,
    whose pattern says how deep to go).
    """
    return [name for name, _ in list_entries(uri, suffixes, recursive, s3)]


def list_entries(
    uri: str | os.PathLike,
    suffixes: Iterable[str] | str | None = None,
    recursive: bool = True,
    s3: S3Config | None = None,
) -> list[tuple[str, int]]:
    """Like ``list_files``, with each file's size in bytes where the listing gives it
    for free (S3 listings do), else -1 (local files: stat when read, not here: a stat per
    file over a network file system costs more than the listing)."""
    keep = _suffix_filter(suffixes)
    if is_s3(uri):
        found = _list_s3(uri, recursive, _resolve(s3))
    else:
        found = [(name, -1) for name in _list_local(os.fspath(uri), recursive)]
    return sorted((f, size) for f, size in found if keep(f))


def _list_local(uri: str, recursive: bool) -> list[str]:
    text = uri[len(_FILE_SCHEME) :] if uri.startswith(_FILE_SCHEME) else uri
    if _has_glob(text):
        pattern = os.path.abspath(os.path.expanduser(text))
        base = os.path.dirname(_literal_prefix(pattern)) or "/"
        if not os.path.isdir(base):
            raise FileNotFoundError(f"no such directory: {base} (from pattern {uri!r})")
        regex = _glob_to_regex(pattern)
        # Without '**' the pattern fixes the depth: do not walk deeper than that.
        max_depth = None if "**" in pattern else pattern.count("/") - base.rstrip("/").count("/")
        return [p for p in _walk_files(base, True, max_depth) if regex.match(p)]
    path = _local_path(text)
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no such file or directory: {path}")
    return list(_walk_files(path, recursive, None))


def _walk_files(base: str, recursive: bool, max_depth: int | None) -> Iterable[str]:
    base_depth = base.rstrip("/").count("/")
    for root, dirs, files in os.walk(base):
        depth = root.rstrip("/").count("/") - base_depth + 1
        for name in files:
            yield os.path.join(root, name)
        if not recursive or (max_depth is not None and depth >= max_depth):
            dirs[:] = []


def _list_s3(uri: str, recursive: bool, res: _Resolved) -> list[tuple[str, int]]:
    bucket, key = split_s3(uri)
    client = _boto3_client(res)
    if _has_glob(key):
        regex = _glob_to_regex(key)
        keys = _list_keys(client, res, uri, bucket, _literal_prefix(key), delimiter=None)
        return [(f"{S3_SCHEME}{bucket}/{k}", size) for k, size in keys if regex.match(k)]
    prefix = key.rstrip("/") + "/" if key else ""
    keys = _list_keys(client, res, uri, bucket, prefix, delimiter=None if recursive else "/")
    if not keys and key and not key.endswith("/") and exists(uri, _config_of(res)):
        return [(uri, -1)]  # the URI names one object
    return [(f"{S3_SCHEME}{bucket}/{k}", size) for k, size in keys]


def _list_keys(client, res: _Resolved, uri: str, bucket: str, prefix: str, delimiter) -> list[tuple[str, int]]:
    """All (key, size) under ``prefix``; the paginator follows ListObjectsV2 continuation tokens."""
    paginator = client.get_paginator("list_objects_v2")
    params = {"Bucket": bucket, "Prefix": prefix}
    if delimiter:
        params["Delimiter"] = delimiter
    keys: list[tuple[str, int]] = []

    def collect() -> None:
        for page in paginator.paginate(**params):
            keys.extend((o["Key"], int(o.get("Size", -1))) for o in page.get("Contents", ())
                        if not o["Key"].endswith("/"))

    _call(res, uri, "list", collect)
    return keys


def _config_of(res: _Resolved) -> S3Config:
    return S3Config(
        endpoint_url=res.endpoint_url,
        region=res.region,
        max_attempts=res.max_attempts,
        profile=res.profile,
        access_key_id=res.access_key_id,
        secret_access_key=res.secret_access_key,
        session_token=res.session_token,
    )


class FileTooLargeError(StorageError):
    """A file is larger than the caller's ``max_bytes``; it was not read."""


def read_bytes(uri: str | os.PathLike, s3: S3Config | None = None, *, max_bytes: int | None = None,
               known_size: int = -1) -> bytes:
    """The whole content of a local file or an S3 object.

    ``max_bytes``: refuse (``FileTooLargeError``) a file larger than this before reading
    it: its size comes from ``known_size`` (e.g. a listing), else a stat (local) or a
    HEAD request (S3). At most ``max_bytes`` are ever read, even if the file grows.
    """
    if not is_s3(uri):
        path = _local_path(uri)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such file: {path}")
        with open(path, "rb") as f:
            if max_bytes is not None:
                _check_size(uri, os.fstat(f.fileno()).st_size, max_bytes)
                data = f.read(max_bytes + 1)
                _check_size(uri, len(data), max_bytes)
                return data
            return f.read()
    res = _resolve(s3)
    bucket, key = split_s3(uri)
    client = _boto3_client(res)
    extra: dict[str, str] = {}
    if max_bytes is not None:
        if known_size < 0:
            head = _call(res, uri, "check", client.head_object, Bucket=bucket, Key=key)
            known_size = int(head.get("ContentLength", -1))
        _check_size(uri, known_size, max_bytes)
        extra["Range"] = f"bytes=0-{max_bytes}"  # one byte past the cap shows growth

    def get() -> bytes:
        return client.get_object(Bucket=bucket, Key=key, **extra)["Body"].read()

    data = _call(res, uri, "read", get)
    if max_bytes is not None:
        _check_size(uri, len(data), max_bytes)
    return data


def _check_size(uri: str | os.PathLike, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise FileTooLargeError(f"{os.fspath(uri)} is {size} bytes, above the limit of {max_bytes} bytes")


def write_bytes(uri: str | os.PathLike, data: bytes, s3: S3Config | None = None) -> None:
    """Write ``data`` to a local file (atomically, creating folders) or an S3 object."""
    if not is_s3(uri):
        path = Path(_local_path(uri))
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write-then-rename: readers never see a half-written file.
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.part"
        try:
            with open(tmp, "xb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return
    res = _resolve(s3)
    bucket, key = split_s3(uri)
    if not key or key.endswith("/"):
        raise ValueError(f"cannot write bytes to a bucket or prefix: {uri!r}")
    client = _boto3_client(res)
    _call(res, uri, "write", client.put_object, Bucket=bucket, Key=key, Body=data)


def copy_to_local(
    uri: str | os.PathLike, dest_path: str | os.PathLike, s3: S3Config | None = None
) -> Path:
    """Copy a local file or S3 object to ``dest_path`` (folders created); returns it."""
    dest = Path(dest_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not is_s3(uri):
        src = _local_path(uri)
        if not os.path.isfile(src):
            raise FileNotFoundError(f"no such file: {src}")
        shutil.copyfile(src, dest)
        return dest
    res = _resolve(s3)
    bucket, key = split_s3(uri)
    client = _boto3_client(res)
    # download_file streams in parts, so large checkpoints need not fit in memory.
    _call(res, uri, "download", client.download_file, bucket, key, str(dest))
    return dest


def upload_file(
    local_path: str | os.PathLike, uri: str | os.PathLike, s3: S3Config | None = None
) -> None:
    """Copy a local file to a local path or an S3 object (multipart when large)."""
    src = _local_path(local_path)
    if not os.path.isfile(src):
        raise FileNotFoundError(f"no such file: {src}")
    if not is_s3(uri):
        dest = Path(_local_path(uri))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        return
    res = _resolve(s3)
    bucket, key = split_s3(uri)
    if not key or key.endswith("/"):
        raise ValueError(f"upload target must name an object, got {uri!r}")
    client = _boto3_client(res)
    _call(res, uri, "upload", client.upload_file, src, bucket, key)


def exists(uri: str | os.PathLike, s3: S3Config | None = None) -> bool:
    """True if a local file/folder, an S3 object, or a non-empty S3 prefix exists.

    A missing bucket is an error (StorageError), not ``False``: it is almost always a
    typo or a missing setup step.
    """
    if not is_s3(uri):
        return os.path.exists(_local_path(uri))
    res = _resolve(s3)
    bucket, key = split_s3(uri)
    client = _boto3_client(res)
    if key and not key.endswith("/"):
        try:
            _call(res, uri, "check", client.head_object, Bucket=bucket, Key=key)
            return True
        except FileNotFoundError:
            pass  # maybe a "folder": fall through to a prefix listing
    prefix = key.rstrip("/") + "/" if key else ""
    page = _call(
        res, uri, "check", client.list_objects_v2, Bucket=bucket, Prefix=prefix, MaxKeys=1
    )
    return not key or page.get("KeyCount", 0) > 0


def create_exclusive(uri: str | os.PathLike, data: bytes, s3: S3Config | None = None) -> bool:
    """Write ``data`` only if nothing is there yet; True if this call created it.

    Local files use ``O_EXCL``; S3 uses a conditional PUT (``If-None-Match: *``), which AWS
    S3 and most compatible stores honour. A store that ignores the condition overwrites:
    callers that need certainty read the object back.
    """
    if not is_s3(uri):
        path = Path(_local_path(uri))
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(path, "xb") as f:
                f.write(data)
        except FileExistsError:
            return False
        return True
    res = _resolve(s3)
    bucket, key = split_s3(uri)
    client = _boto3_client(res)
    from botocore.exceptions import ClientError

    try:
        client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except ClientError as err:
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status in (409, 412) or err.response.get("Error", {}).get("Code") in ("PreconditionFailed",
                                                                                  "ConditionalRequestConflict"):
            return False
        raise _translate(err, uri, res, "write") from err
    return True


def delete(uri: str | os.PathLike, s3: S3Config | None = None) -> None:
    """Remove a local file or an S3 object; a missing one is not an error."""
    if not is_s3(uri):
        Path(_local_path(uri)).unlink(missing_ok=True)
        return
    res = _resolve(s3)
    bucket, key = split_s3(uri)
    _call(res, uri, "delete", _boto3_client(res).delete_object, Bucket=bucket, Key=key)


def move(src: str | os.PathLike, dest: str | os.PathLike, s3: S3Config | None = None) -> None:
    """Move a file within one store (a rename locally; copy then delete on S3)."""
    if is_s3(src) != is_s3(dest):
        raise ValueError(f"cannot move between a local path and S3: {src!r} -> {dest!r}")
    if not is_s3(src):
        target = Path(_local_path(dest))
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(_local_path(src), target)
        return
    res = _resolve(s3)
    (src_bucket, src_key), (bucket, key) = split_s3(src), split_s3(dest)
    client = _boto3_client(res)
    _call(res, src, "copy", client.copy_object, Bucket=bucket, Key=key,
          CopySource={"Bucket": src_bucket, "Key": src_key})
    _call(res, src, "delete", client.delete_object, Bucket=src_bucket, Key=src_key)


def makedirs(uri: str | os.PathLike, s3: S3Config | None = None) -> None:
    """Create a local folder and its parents; a no-op on S3, which has no folders."""
    if not is_s3(uri):
        Path(_local_path(uri)).mkdir(parents=True, exist_ok=True)


def build_s3_config(cfg: Mapping[str, Any] | None) -> S3Config | None:
    """An S3Config from a plain mapping (Hydra ``storage`` group): ``endpoint_url``,
    ``region``, ``max_attempts``, ``profile``; ``None``/empty -> environment only."""
    if not cfg:
        return None
    known = {"endpoint_url", "region", "max_attempts", "profile"}
    unknown = set(cfg) - known
    if unknown:
        raise ValueError(
            f"unknown storage setting(s) {sorted(unknown)}; known: {sorted(known)}. "
            "Credentials come from the AWS environment, a profile or a role, not from config"
        )
    values = {k: cfg.get(k) for k in known if cfg.get(k) is not None}
    return S3Config(**values)
