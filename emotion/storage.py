"""One storage layer over local paths and ``s3://`` URIs.

Everything that reads or writes data (tagging inputs and outputs, datasets, checkpoints,
weights) goes through these functions, so a job runs unchanged on a laptop folder, on
AWS S3 or on an S3-compatible store (MinIO, Ceph, moto).

The work is the libraries': ``pyarrow.fs`` reads, writes, lists (``FileSelector``),
moves and deletes (``get_filesystem`` gives the same ``S3FileSystem`` to
``pyarrow.parquet`` and Ray Data); boto3 pages through huge S3 listings and sends the
conditional create; botocore resolves credentials and classifies its errors; fsspec
translates globs. What this module adds:

* one credentials path (``_credentials``) for PyArrow and boto3 alike, and one error
  translation (``_translate``): a missing object is a ``FileNotFoundError`` naming the
  URI; a missing bucket, denied access or bad credentials, throttling and an unreachable
  endpoint are a ``StorageError`` naming the URI, the bucket and the endpoint;
* globs (``*`` and ``?`` within one path segment, ``**`` for whole segments) over a listing;
* the ``max_bytes`` cap of ``read_bytes`` (checked against the size PyArrow learns when it
  opens the file, a HEAD request on S3, before anything is read);
* atomic writes: a local file is written to a temporary name in its folder, then renamed;
  an S3 object appears whole or not at all (see ``_write``);
* local listings use ``os.scandir`` (``walk_local``): PyArrow decodes file names as UTF-8
  and fails on the whole folder when one name is not, and lists a tree in one call; S3
  listings stream page by page (``iter_s3_objects``, boto3's paginator), where PyArrow
  returns a whole listing at once;
* local reads open regular files only (``read_bytes``): a FIFO, socket or device is
  refused before it is read, where opening a FIFO would block forever.

Credentials follow the standard AWS chain and nothing else: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` (/ ``AWS_SESSION_TOKEN``), ``AWS_PROFILE`` and the shared
config files, then an instance, task or pod role. The endpoint of an S3-compatible store
comes from ``S3Config.endpoint_url``, else ``AWS_ENDPOINT_URL_S3``, else
``AWS_ENDPOINT_URL``. Throttling and 5xx answers are retried with exponential backoff
(PyArrow's ``AwsStandardS3RetryStrategy``; boto3 ``adaptive`` mode), up to
``S3Config.max_attempts`` requests; connections time out (10 s to connect, 60 s per
request), so a stalled store is a retried failure, never a hang.

Secrets never appear in logs, in ``repr(S3Config)`` or in exception messages.

Ray workers read the same environment variables, but they inherit the environment of
``ray start`` (or get ``runtime_env={"env_vars": ...}``): set them before the cluster
starts, or pass them in the runtime environment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import logging
import os
import re
import shutil
import stat
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Mapping

import pyarrow.fs as pafs

logger = logging.getLogger(__name__)

S3_SCHEME = "s3://"
_FILE_SCHEME = "file://"
_GLOB_CHARS = re.compile(r"[*?[]")
_CONNECT_TIMEOUT_S = 10.0
_READ_TIMEOUT_S = 60.0
# Streamed copies (copy_to_local, upload_file) move this much per read and write.
_CHUNK_BYTES = 8 * 1024 * 1024
_LOCAL = pafs.LocalFileSystem()

# S3 error codes (those of S3-compatible stores too), grouped by what they mean. PyArrow
# names them in the AWS SDK's spelling (ACCESS_DENIED), which _error_fields turns back.
_ACCESS_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "ExpiredToken", "Forbidden", "InvalidAccessKeyId",
                        "InvalidClientTokenId", "InvalidToken", "MissingAuthenticationToken",
                        "SignatureDoesNotMatch", "TokenRefreshRequired"}
_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "ResourceNotFound", "404"}
_THROTTLING_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                     "TooManyRequestsException", "ServiceUnavailable"}
# "When reading ...: AWS Error ACCESS_DENIED during HeadObject operation: No response body."
_PYARROW_AWS_ERROR = re.compile(r"AWS Error (\w+)(?: \(HTTP status (\d+)\))? during \w+ operation: ?(.*)", re.S)


class StorageError(OSError):
    """A storage operation failed; the message names the URI, bucket and endpoint."""


class FileTooLargeError(StorageError):
    """A file is larger than the caller's ``max_bytes``; it was not read."""


class NotARegularFileError(OSError):
    """A path names a FIFO, socket, device or folder: nothing that can be read whole."""


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


# --------------------------------------------------------------------------- URIs


def is_s3(uri: str | os.PathLike) -> bool:
    """True for ``s3://bucket/key`` URIs."""
    return isinstance(uri, str) and uri.startswith(S3_SCHEME)


def is_glob(uri: str) -> bool:
    """True when ``uri`` holds a glob character (``*``, ``?``, ``[``)."""
    return _GLOB_CHARS.search(uri) is not None


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``; the key may be empty."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI has no bucket: {uri!r}")
    if is_glob(bucket):
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


def split_glob(pattern: str) -> tuple[str, re.Pattern[str], int | None]:
    """A ``/``-separated glob (a local absolute path, or ``bucket/key`` on S3) -> (the folder
    or prefix to list, the regular expression whole paths must match, how many folder
    levels below and including that folder may hold matches: ``None`` with ``**``).

    ``*`` and ``?`` match within one path segment; ``**``, a whole segment, matches any
    number of them (``a/**/b`` also matches ``a/b``)."""
    base = _GLOB_CHARS.split(pattern, maxsplit=1)[0].rpartition("/")[0]
    rest = pattern[len(base) + 1 :]
    from fsspec.utils import glob_translate  # fsspec only when a glob is used

    try:
        regex = re.compile(glob_translate(pattern))
    except ValueError as err:  # '**' inside a segment, e.g. 'photos/**.jpg'
        raise ValueError(f"invalid glob {pattern!r}: {err} (e.g. photos/**/*.jpg)") from None
    return base or "/", regex, None if "**" in rest else rest.count("/") + 1


def _suffix_filter(suffixes: Iterable[str] | str | None):
    if suffixes is None:
        return lambda name: True
    wanted = tuple(s.lower() for s in ([suffixes] if isinstance(suffixes, str) else suffixes))
    return lambda name: name.lower().endswith(wanted)


# ---------------------------------------------------- settings, credentials, clients


@dataclass(frozen=True)
class _Resolved:
    """An S3Config with the environment applied (endpoint, region), and a digest of the
    credential environment: the cache key of filesystems and clients, so that one made
    before the environment changed (new keys, another profile) is not reused."""

    s3: S3Config
    env_fingerprint: str = field(repr=False)

    @property
    def where(self) -> str:
        return f"endpoint {self.s3.endpoint_url}" if self.s3.endpoint_url else "AWS S3"


_CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                   "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_EC2_METADATA_DISABLED")


def _resolve(s3: S3Config | None) -> _Resolved:
    cfg = s3 or S3Config()
    endpoint = cfg.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = cfg.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region is None and endpoint:
        region = "us-east-1"  # S3-compatible stores ignore the region, but SigV4 signing needs one
    fingerprint = "\0".join(os.environ.get(name, "") for name in _CREDENTIAL_ENV)
    return _Resolved(dataclasses.replace(cfg, endpoint_url=endpoint.rstrip("/") if endpoint else None, region=region),
                     hashlib.sha256(fingerprint.encode()).hexdigest())


def _redact(text: str, res: _Resolved) -> str:
    secrets = [res.s3.secret_access_key, res.s3.session_token,
               os.environ.get("AWS_SECRET_ACCESS_KEY"), os.environ.get("AWS_SESSION_TOKEN")]
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


_lock = threading.Lock()
_clients: dict[_Resolved, Any] = {}
_filesystems: dict[tuple[_Resolved, str | None], pafs.S3FileSystem] = {}
_regions: dict[str, str | None] = {}


def _credentials(res: _Resolved) -> dict[str, str]:
    """The one credentials path, for PyArrow and boto3: explicit keys, else a profile's
    keys, else ``{}`` for the SDK's default chain (env, shared files, instance/pod role),
    once botocore has found some there.

    PyArrow's C++ SDK silently sends unsigned requests when the chain is empty, and takes
    no profile argument: botocore resolves profiles (SSO, credential_process, ...) and
    tells whether the default chain holds anything. Role credentials are not copied out
    of the default chain, so the SDK keeps refreshing them.
    """
    cfg = res.s3
    key, secret, token = cfg.access_key_id, cfg.secret_access_key, cfg.session_token
    if not key:
        import boto3
        from botocore.exceptions import ProfileNotFound

        try:
            found = boto3.session.Session(profile_name=cfg.profile).get_credentials()
        except ProfileNotFound:
            raise StorageError(f"AWS profile {cfg.profile!r} is not configured") from None
        if found is None and cfg.profile:
            raise StorageError(f"AWS profile {cfg.profile!r} has no credentials")
        if found is None:
            raise StorageError(
                f"no usable AWS credentials for {res.where}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run with an instance/pod role"
            )
        if not cfg.profile:
            return {}
        key, secret, token = found.get_frozen_credentials()
    return {"access_key": key, "secret_key": secret, **({"session_token": token} if token else {})}


def _s3_filesystem(res: _Resolved, bucket: str | None) -> pafs.S3FileSystem:
    region = res.s3.region
    if region is None and res.s3.endpoint_url is None and bucket:
        if bucket not in _regions:
            try:
                _regions[bucket] = pafs.resolve_s3_region(bucket)
            except OSError:
                _regions[bucket] = None  # let the SDK pick; the request will say what is wrong
        region = _regions[bucket]
    key = (res, region)
    with _lock:
        fs = _filesystems.get(key)
    if fs is not None:
        return fs
    kwargs: dict[str, Any] = {}
    if res.s3.endpoint_url:
        scheme, _, host = res.s3.endpoint_url.partition("://")
        kwargs.update(endpoint_override=host, scheme=scheme)
    # Delayed open: an object up to 10 MiB is sent as one PutObject when the stream
    # closes, instead of CreateMultipartUpload + UploadPart + CompleteMultipartUpload.
    fs = pafs.S3FileSystem(
        region=region, connect_timeout=_CONNECT_TIMEOUT_S, request_timeout=_READ_TIMEOUT_S,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=res.s3.max_attempts),
        allow_delayed_open=True, **_credentials(res), **kwargs)
    logger.debug("created S3 filesystem for %s, region %s, max_attempts %d", res.where, region,
                 res.s3.max_attempts)
    with _lock:
        return _filesystems.setdefault(key, fs)


def _boto3_client(res: _Resolved):
    """A cached boto3 S3 client, for what PyArrow cannot do: page through a listing, send
    a conditional PUT."""
    with _lock:
        client = _clients.get(res)
    if client is not None:
        return client
    import boto3
    from botocore.config import Config

    creds = _credentials(res)
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=res.s3.endpoint_url,
        region_name=res.s3.region,
        aws_access_key_id=creds.get("access_key"),
        aws_secret_access_key=creds.get("secret_key"),
        aws_session_token=creds.get("session_token"),
        config=Config(
            retries={"total_max_attempts": res.s3.max_attempts, "mode": "adaptive"},
            connect_timeout=_CONNECT_TIMEOUT_S,
            read_timeout=_READ_TIMEOUT_S,
            # S3-compatible stores rarely have per-bucket DNS names.
            s3={"addressing_style": "path"} if res.s3.endpoint_url else None,
        ),
    )
    with _lock:
        return _clients.setdefault(res, client)


def _fs(uri: str | os.PathLike, s3: S3Config | None) -> tuple[pafs.FileSystem, Any, _Resolved | None]:
    """(filesystem, path in it, resolved S3 settings or None for a local path).

    Local paths go to PyArrow as bytes (``os.fsencode``): a name that is not UTF-8 then
    still works, where PyArrow would reject the ``str`` form.
    """
    if is_s3(uri):
        res = _resolve(s3)
        bucket, key = split_s3(uri)
        return _s3_filesystem(res, bucket), f"{bucket}/{key}".rstrip("/"), res
    return _LOCAL, os.fsencode(_local_path(uri)), None


def get_filesystem(uri: str | os.PathLike, s3: S3Config | None = None) -> tuple[pafs.FileSystem, str]:
    """A PyArrow filesystem and the path inside it, for ``pyarrow.parquet`` and Ray Data.

    ``s3://bucket/key`` -> ``(S3FileSystem, "bucket/key")``; a local path ->
    ``(LocalFileSystem, absolute path)``. Every function here uses the same filesystem
    (one per S3 settings and region, cached). The only request it may make: with neither a
    region nor an endpoint configured, it asks AWS for the bucket's region (once per bucket).
    Raises StorageError when no credentials can be found.
    """
    if is_s3(uri):
        fs, path, _ = _fs(uri, s3)
        return fs, path
    return pafs.LocalFileSystem(), _local_path(uri)


# ------------------------------------------------------------------- errors


def _error_fields(err: BaseException) -> tuple[str, int | None, str]:
    """(S3 error code, HTTP status, detail) of a botocore or PyArrow error."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(err, ClientError):
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        error = err.response.get("Error", {})
        return str(error.get("Code", "")), status, str(error.get("Message") or "")
    if isinstance(err, BotoCoreError):  # raised before any answer came
        return type(err).__name__, None, str(err)
    if isinstance(err, FileNotFoundError):  # PyArrow: "Path does not exist 'bucket/key'"
        return "NoSuchKey", 404, str(err)
    found = _PYARROW_AWS_ERROR.search(str(err))
    if found is None:
        return "", None, str(err)
    name, status, detail = found.groups()
    # The SDK's enum name (NO_SUCH_BUCKET) spells the S3 code (NoSuchBucket) in capitals.
    code = "" if name == "UNKNOWN" else "".join(part.capitalize() for part in name.split("_"))
    return code, int(status) if status else None, detail.strip()


def _is_unreachable(err: BaseException, code: str) -> bool:
    """No answer came: botocore's connection errors (refused, DNS, timeouts, dropped) or
    PyArrow's ``NETWORK_CONNECTION``."""
    from botocore.exceptions import ConnectionError, HTTPClientError

    return isinstance(err, (ConnectionError, HTTPClientError)) or code == "NetworkConnection"


def _bucket_missing(uri: str, res: _Resolved, action: str) -> StorageError:
    bucket = split_s3(uri)[0]
    return StorageError(_redact(
        f"bucket {bucket!r} does not exist at {res.where} (while trying to {action} {uri})", res))


def _translate(err: BaseException, uri: str, res: _Resolved | None, action: str) -> BaseException:
    """The one error translation: a PyArrow (or botocore) error -> FileNotFoundError or
    StorageError naming the URI, bucket and endpoint. Local errors other than a missing
    file are PyArrow's own OSErrors (they name the path) and pass through."""
    if isinstance(err, StorageError):
        return err
    if res is None:
        if isinstance(err, FileNotFoundError):
            return FileNotFoundError(f"no such file or directory: {uri}")
        return err
    bucket = split_s3(uri)[0]
    code, status, detail = _error_fields(err)
    shown = code or f"HTTP {status}"
    if code == "NoSuchBucket":
        return _bucket_missing(uri, res, action)
    if code in _NOT_FOUND_CODES:
        # A HEAD answer has no body, so a missing bucket also reads "404": ask the bucket.
        with contextlib.suppress(OSError):
            if not _bucket_exists(res, bucket):
                return _bucket_missing(uri, res, action)
        return FileNotFoundError(_redact(f"no such object: {uri} (at {res.where})", res))
    if code in _ACCESS_DENIED_CODES or status == 403:
        msg = (
            f"access denied to bucket {bucket!r} at {res.where} (while trying to {action} "
            f"{uri}): the credentials are invalid or lack permission ({shown}). "
            "Credentials come from the standard AWS chain: AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an instance/pod role"
        )
    elif code in _THROTTLING_CODES or status in (429, 503):
        msg = (
            f"{res.where} kept throttling requests to {action} {uri} ({shown}) "
            f"after {res.s3.max_attempts} attempts; lower the request rate or raise "
            "S3Config.max_attempts"
        )
    elif _is_unreachable(err, code):
        msg = f"cannot reach {res.where} to {action} {uri}: {detail}"
    else:
        msg = f"failed to {action} {uri} at {res.where}: " + " ".join(str(x) for x in (code or status, detail) if x)
    return StorageError(_redact(msg, res))


@contextlib.contextmanager
def _errors(uri: str | os.PathLike, res: _Resolved | None, action: str) -> Iterator[None]:
    """Translate the OSErrors (and botocore errors) raised inside the block (``_translate``)."""
    try:
        yield
    except Exception as err:
        if not isinstance(err, OSError) and not type(err).__module__.startswith("botocore"):
            raise
        translated = _translate(err, os.fspath(uri), res, action)
        if translated is err:
            raise
        raise translated from err


def check_bucket(uri: str, s3: S3Config | None = None) -> None:
    """Raise a clear StorageError now if the URI's bucket is missing or not accessible.

    Jobs call this before handing a filesystem to Ray Data, whose errors are vaguer. One
    HeadBucket request: 404 means no such bucket, 403 no access (HEAD answers carry no
    error code, but for a bucket the status alone tells the two apart).
    """
    res = _resolve(s3)
    with _errors(uri, res, "check"):
        if not _bucket_exists(res, split_s3(uri)[0]):
            raise _bucket_missing(uri, res, "check")


def _bucket_exists(res: _Resolved, bucket: str) -> bool:
    return _s3_filesystem(res, bucket).get_file_info(bucket).type != pafs.FileType.NotFound


# ------------------------------------------------------------------ listing


def list_files(
    uri: str | os.PathLike,
    suffixes: Iterable[str] | str | None = None,
    recursive: bool = True,
    s3: S3Config | None = None,
) -> list[str]:
    """Files under a folder/prefix, or matching a glob, as sorted full URIs.

    ``uri`` is a local folder, a local file, an ``s3://bucket/prefix``, or a glob over
    either (``split_glob``). ``suffixes`` (case-insensitive, e.g. ``(".jpg", ".png")``)
    filters file names. ``recursive=False`` lists only the folder's direct children
    (ignored for globs, whose pattern says how deep to go).
    """
    return [name for name, _ in list_entries(uri, suffixes, recursive, s3)]


def list_entries(
    uri: str | os.PathLike,
    suffixes: Iterable[str] | str | None = None,
    recursive: bool = True,
    s3: S3Config | None = None,
) -> list[tuple[str, int]]:
    """Like ``list_files``, with each file's size in bytes: S3 sizes come with the listing;
    local sizes are -1 (the listing does not stat, and a stat per file over a network file
    system costs more than the listing; ``read_bytes`` stats the file it opens anyway)."""
    keep = _suffix_filter(suffixes)
    if is_s3(uri):
        found = _list_s3(uri, recursive, _resolve(s3))
    else:
        found = [(name, -1) for name in _list_local(os.fspath(uri), recursive)]
    return sorted((f, size) for f, size in found if keep(f))


def _list_local(uri: str, recursive: bool) -> list[str]:
    text = uri[len(_FILE_SCHEME) :] if uri.startswith(_FILE_SCHEME) else uri
    if is_glob(text):
        base, regex, depth = split_glob(_local_path(text))
        if not os.path.isdir(base):
            raise FileNotFoundError(f"no such directory: {base} (from pattern {uri!r})")
        # Without '**' the pattern fixes the depth: do not walk deeper than that.
        return [p for p in walk_local(base, True, depth) if regex.match(p)]
    path = _local_path(text)
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no such file or directory: {path}")
    return list(walk_local(path, recursive))


def walk_local(top: str, recursive: bool = True, depth: int | None = None) -> Iterator[str]:
    """Paths of every entry below ``top`` that is not a folder, as a stream: each folder's
    own entries in name order, then its sub-folders' in name order.

    Entries that are not folders include FIFOs, sockets and devices: callers see them and
    ``read_bytes`` refuses them. Symbolic links to folders are not followed (as
    ``os.walk``). ``depth``: how many folder levels, ``top`` being 1, may be listed
    (``None``: all). A folder that cannot be read is skipped.
    """
    stack = [(top, 1)]
    while stack:
        folder, level = stack.pop()
        try:
            with os.scandir(folder) as found:
                entries = sorted(found, key=lambda e: e.name)
        except OSError:
            continue
        subfolders = []
        for entry in entries:
            if _is_folder(entry):
                if not entry.is_symlink():
                    subfolders.append(entry.path)
            else:
                yield entry.path
        if recursive and (depth is None or level < depth):
            stack.extend((path, level + 1) for path in reversed(subfolders))


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def local_subfolders(top: str) -> list[str]:
    """The folders directly in ``top`` (not symbolic links), in name order."""
    with os.scandir(top) as found:
        return sorted(e.path for e in found if _is_folder(e) and not e.is_symlink())


def _list_s3(uri: str, recursive: bool, res: _Resolved) -> list[tuple[str, int]]:
    """One PyArrow listing (it follows ListObjectsV2 pages); a glob filters it."""
    bucket, key = split_s3(uri)
    fs = _s3_filesystem(res, bucket)
    base, regex = f"{bucket}/{key}".rstrip("/"), None
    if is_glob(key):
        base, regex, depth = split_glob(f"{bucket}/{key}")
        recursive = depth != 1  # "dir/*.jpg" needs only one level
    with _errors(uri, res, "list"):
        try:
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=recursive))
        except FileNotFoundError:  # nothing under the prefix (a missing bucket raises NoSuchBucket)
            # ... or the URI names one object.
            infos = [] if regex else [fs.get_file_info(base)]
    files = [(f"{S3_SCHEME}{i.path}", i.size) for i in infos if i.type == pafs.FileType.File]
    return [(u, size) for u, size in files if regex is None or regex.match(u[len(S3_SCHEME) :])]


def iter_s3_objects(prefix_uri: str, recursive: bool = True,
                    s3: S3Config | None = None) -> Iterator[list[tuple[str, int]]]:
    """The objects under an ``s3://bucket/prefix/`` as a stream of listing pages (up to
    1,000 ``(uri, size)`` each, in key order); ``recursive=False``: only the objects
    directly under the prefix. Folder markers (keys ending in ``/``) are left out."""
    bucket, prefix = split_s3(prefix_uri)
    for page in _s3_pages(prefix_uri, s3, Bucket=bucket, Prefix=prefix, **({} if recursive else {"Delimiter": "/"})):
        yield [(f"{S3_SCHEME}{bucket}/{item['Key']}", int(item["Size"])) for item in page.get("Contents", ())
               if not item["Key"].endswith("/")]


def iter_s3_prefixes(prefix_uri: str, s3: S3Config | None = None) -> list[str]:
    """The ``/``-delimited prefixes directly under ``s3://bucket/prefix/`` (its "folders"),
    in key order."""
    bucket, prefix = split_s3(prefix_uri)
    return [f"{S3_SCHEME}{bucket}/{common['Prefix']}"
            for page in _s3_pages(prefix_uri, s3, Bucket=bucket, Prefix=prefix, Delimiter="/")
            for common in page.get("CommonPrefixes", ())]


def _s3_pages(uri: str, s3: S3Config | None, **request: Any) -> Iterator[dict]:
    """ListObjectsV2 pages, one request at a time (boto3's paginator), errors translated."""
    res = _resolve(s3)
    pages = iter(_boto3_client(res).get_paginator("list_objects_v2").paginate(**request))
    while True:
        with _errors(uri, res, "list"):
            page = next(pages, None)
        if page is None:
            return
        yield page


# ------------------------------------------------------------------ reading


def read_bytes(uri: str | os.PathLike, s3: S3Config | None = None, *, max_bytes: int | None = None,
               known_size: int = -1) -> bytes:
    """The whole content of a local file or an S3 object.

    ``max_bytes``: refuse (``FileTooLargeError``) a file larger than this before reading
    it: its size comes from ``known_size`` (e.g. a listing; then no request is made for a
    file above the cap), else from opening the file (a stat, or on S3 the HEAD request
    PyArrow sends before its GET, even when the size is known: its Python API cannot skip
    it). The file is read as it was when opened (its size then), so never more than
    ``max_bytes`` are read.
    """
    if max_bytes is not None:
        _check_size(uri, known_size, max_bytes)
    fs, path, res = _fs(uri, s3)
    if res is None:
        return _read_local(path, os.fspath(uri), max_bytes)
    with _errors(uri, res, "read"), fs.open_input_file(path) as f:
        if max_bytes is not None:
            _check_size(uri, f.size(), max_bytes)
        return f.read()


_FILE_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
               stat.S_IFBLK: "a block device", stat.S_IFDIR: "a folder"}


def _read_local(path: bytes, uri: str, max_bytes: int | None) -> bytes:
    """A local regular file's bytes. The file is opened without blocking (a FIFO with no
    writer would block ``open`` forever) and checked with ``fstat`` before any read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file or directory: {uri}") from None
    try:
        info = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = _FILE_KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise NotARegularFileError(f"{uri} is {kind}, not a regular file: not read")
    with open(fd, "rb", buffering=0) as f:
        if max_bytes is not None:
            _check_size(uri, info.st_size, max_bytes)
        os.set_blocking(fd, True)
        return f.readall() if max_bytes is None else f.read(info.st_size)


def _check_size(uri: str | os.PathLike, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise FileTooLargeError(f"{os.fspath(uri)} is {size} bytes, above the limit of {max_bytes} bytes")


def exists(uri: str | os.PathLike, s3: S3Config | None = None) -> bool:
    """True if a local file/folder, an S3 object, or a non-empty S3 prefix exists.

    A missing bucket is an error (StorageError), not ``False``: it is almost always a
    typo or a missing setup step.
    """
    fs, path, res = _fs(uri, s3)
    with _errors(uri, res, "check"):
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            return True
        if res is not None and not _bucket_exists(res, split_s3(os.fspath(uri))[0]):
            raise _bucket_missing(os.fspath(uri), res, "check")
    return False


# ------------------------------------------------------------------ writing


def write_bytes(uri: str | os.PathLike, data: bytes, s3: S3Config | None = None) -> None:
    """Write ``data`` to a local file or an S3 object, atomically (see ``_write``);
    local folders are created."""
    _write(uri, [data], s3, "write")


def _write(uri: str | os.PathLike, chunks: Iterable[bytes], s3: S3Config | None, action: str) -> None:
    """The one write path of bytes (``write_bytes``, ``upload_file``).

    Local: the chunks go to a temporary file in the target's folder, which is then renamed
    over the target (``_replacing``): readers never see a half-written file.

    S3: PyArrow's output stream sends nothing the object store shows before ``close()``:
    up to 10 MiB it buffers and sends one PutObject on close; above, it uploads 10 MiB parts
    in the background and sends CompleteMultipartUpload on close only if every part
    succeeded (parts of a failed upload stay invisible until the bucket's lifecycle rule
    removes them). So a failed request leaves the previous object, or none. PyArrow has no
    ``abort()`` in Python, though, and *closes* (completes) a stream that is dropped open:
    when the chunks themselves fail midway (a local read error), the partial object is
    completed by that close and deleted here, so none remains. A source that fails before
    its first chunk leaves the target untouched (nothing is opened).
    """
    fs, path, res = _fs(uri, s3)
    if res is not None:
        key = split_s3(os.fspath(uri))[1]
        if not key or key.endswith("/"):
            raise ValueError(f"cannot {action} to a bucket or prefix: {uri!r}")
    chunks = iter(chunks)
    first = next(chunks, b"")
    if res is None:
        with _replacing(path) as out:
            for chunk in itertools.chain([first], chunks):
                out.write(chunk)
        return
    with _errors(uri, res, action):
        out = fs.open_output_stream(path, compression=None)
        try:
            for chunk in itertools.chain([first], chunks):
                out.write(chunk)
        except BaseException:
            with contextlib.suppress(Exception):
                out.close()  # what PyArrow would do when the stream is dropped ...
                fs.delete_file(path)  # ... so remove what it wrote (only if it closed)
            raise
        out.close()


@contextlib.contextmanager
def _replacing(path: bytes) -> Iterator[BinaryIO]:
    """A file open for writing at ``.NAME.<uuid>.part`` beside local ``path`` (folders
    created), renamed over ``path`` when the block succeeds, removed when it fails."""
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    temp = os.path.join(folder, b".%s.%s.part" % (name, uuid.uuid4().hex.encode()))
    try:
        with open(temp, "wb") as out:
            yield out
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def copy_to_local(uri: str | os.PathLike, dest_path: str | os.PathLike, s3: S3Config | None = None) -> Path:
    """Copy a local file or S3 object to ``dest_path`` (folders created, written atomically,
    streamed in 8 MiB pieces, so large checkpoints need not fit in memory); returns it."""
    fs, path, res = _fs(uri, s3)
    with _errors(uri, res, "download"):
        source = fs.open_input_stream(path)
    with source, _replacing(os.fsencode(_local_path(dest_path))) as out, _errors(uri, res, "download"):
        shutil.copyfileobj(source, out, _CHUNK_BYTES)
    return Path(dest_path)


def upload_file(local_path: str | os.PathLike, uri: str | os.PathLike, s3: S3Config | None = None) -> None:
    """Copy a local file to a local path or an S3 object, streamed in 8 MiB pieces, through
    the same atomic write as ``write_bytes`` (one PutObject up to 10 MiB, else multipart)."""
    with open(_local_path(local_path), "rb") as source:
        _write(uri, iter(functools.partial(source.read, _CHUNK_BYTES), b""), s3, "upload")


def create_exclusive(uri: str | os.PathLike, data: bytes, s3: S3Config | None = None) -> bool:
    """Write ``data`` only if nothing is there yet; True if this call created it.

    Local files use ``O_EXCL``; S3 uses a conditional PUT (``If-None-Match: *``), which AWS
    S3 and most compatible stores honour. A store that ignores the condition overwrites:
    callers that need certainty read the object back.
    """
    if not is_s3(uri):
        path = _local_path(uri)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            with open(path, "xb") as f:
                f.write(data)
        except FileExistsError:
            return False
        return True
    from botocore.exceptions import ClientError

    res = _resolve(s3)
    bucket, key = split_s3(uri)
    with _errors(uri, res, "write"):
        try:
            # boto3, not PyArrow: PyArrow's output stream cannot send a conditional PUT.
            _boto3_client(res).put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except ClientError as err:
            code, status, _ = _error_fields(err)
            if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
    return True


def delete(uri: str | os.PathLike, s3: S3Config | None = None) -> None:
    """Remove a local file or an S3 object; a missing one is not an error (a missing
    bucket is)."""
    fs, path, res = _fs(uri, s3)
    with contextlib.suppress(FileNotFoundError), _errors(uri, res, "delete"):
        fs.delete_file(path)


def move(src: str | os.PathLike, dest: str | os.PathLike, s3: S3Config | None = None) -> None:
    """Move a file within one store (a rename locally; on S3, PyArrow's CopyObject then
    DeleteObject, so up to 5 GiB)."""
    if is_s3(src) != is_s3(dest):
        raise ValueError(f"cannot move between a local path and S3: {src!r} -> {dest!r}")
    fs, src_path, res = _fs(src, s3)
    dest_path = _fs(dest, s3)[1]
    with _errors(src, res, "move"):
        if res is None:
            fs.create_dir(os.path.dirname(dest_path), recursive=True)
        fs.move(src_path, dest_path)


def makedirs(uri: str | os.PathLike, s3: S3Config | None = None) -> None:
    """Create a local folder and its parents; a no-op on S3, which has no folders."""
    if not is_s3(uri):
        os.makedirs(_local_path(uri), exist_ok=True)
