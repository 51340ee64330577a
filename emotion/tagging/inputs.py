"""What a tagging input holds, listed as it is read: a plan made on the driver, shards
listed in order by whoever runs them.

An input is a local folder, an ``s3://`` prefix, a glob over either, or a Parquet/CSV
manifest with a path column (``samples``: the embedded demo set). ``plan_inputs`` looks
at it once, cheaply:

* a small input (at most ``inline_max`` entries) is listed whole, on the driver, and the
  job knows its exact size before it starts (pool sizing, progress);
* a larger one becomes a list of ``Shard``: a folder's own files plus one shard per
  sub-folder (or the same over an S3 prefix, by ``/``-delimited prefixes), or the whole
  manifest read in row batches. ``iter_shard`` lists one shard as a stream of chunks, so
  the tasks that run it produce work within seconds and no process ever holds the
  whole listing.

Entries are ``(uri, size)``; ``size`` is the listed size in bytes where the listing gives
it (S3), else -1. A folder walk lists every entry that is not a folder (a FIFO, socket or
device named ``*.jpg`` too): such a file becomes an error row when it is read, never a
silent gap.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from emotion import storage
from emotion.images import IMAGE_SUFFIXES
from emotion.tagging.samples import sample_sources

MANIFEST_SUFFIXES = (".parquet", ".csv")
Entry = tuple[str, int]

# Entries per chunk a shard yields: one S3 listing page.
CHUNK = 1000


@dataclass(frozen=True)
class Shard:
    """A piece of an input that one task lists, in a fixed order.

    ``kind``: ``local`` (a folder), ``s3`` (a prefix ending in ``/`` or a bucket root),
    ``manifest`` (a Parquet/CSV file). ``recursive``: go into sub-folders. ``pattern``: a
    glob's regular expression the full path must match (``None``: image suffixes).
    ``depth``: for a glob without ``**``, how many folder levels below ``root`` may hold
    matches (``None``: any).
    """

    kind: str
    root: str
    recursive: bool = True
    pattern: Optional[str] = None
    depth: Optional[int] = None


@dataclass
class InputPlan:
    """How a job reads its input: ``entries`` (the whole input, when small) or ``shards``.

    ``total``: the number of entries when known before listing (small inputs, Parquet
    manifests), else ``None``.
    """

    source: str
    entries: Optional[list[Entry]] = None
    shards: list[Shard] = field(default_factory=list)
    total: Optional[int] = None


def is_manifest(uri: str) -> bool:
    return uri.lower().endswith(MANIFEST_SUFFIXES) and not storage.is_glob(uri)


def plan_inputs(input_uri: str, path_column: str, inline_max: int) -> InputPlan:
    """The plan for ``input_uri`` (module doc). Raises ``FileNotFoundError`` when the input
    holds no image, ``KeyError`` for a manifest without ``path_column``."""
    if input_uri == "samples":
        entries = [(uri, -1) for uri in sample_sources()]
        return InputPlan(input_uri, entries=entries, total=len(entries))
    shards = _whole_input(input_uri)
    probe: list[Entry] = []
    seen: set[str] = set()
    for chunk in _iter_shards(shards, path_column):
        for uri, size in chunk:
            if uri not in seen:  # a manifest may name a file twice: it is tagged once
                seen.add(uri)
                probe.append((uri, size))
        if len(probe) > inline_max:
            break
    if not probe:
        if not is_manifest(input_uri) and not storage.is_glob(input_uri):
            # A URI that names one file or object (not a folder or prefix).
            found = storage.list_entries(input_uri, suffixes=IMAGE_SUFFIXES)
            if found:
                return InputPlan(input_uri, entries=found, total=len(found))
        raise FileNotFoundError(f"no images found under {input_uri!r} (looked for {', '.join(IMAGE_SUFFIXES)})")
    if len(probe) <= inline_max:
        entries = probe if is_manifest(input_uri) else sorted(probe)
        return InputPlan(input_uri, entries=entries, total=len(entries))
    return InputPlan(input_uri, shards=_split(shards), total=_manifest_rows(input_uri))


def list_inputs(input_uri: str, path_column: str = "path") -> list[Entry]:
    """Every entry of ``input_uri``, listed here: sorted, except a manifest's, which keeps
    its rows' order (and any path it repeats)."""
    if input_uri == "samples":
        return [(uri, -1) for uri in sample_sources()]
    entries = [e for chunk in _iter_shards(_whole_input(input_uri), path_column) for e in chunk]
    if not entries:
        return plan_inputs(input_uri, path_column, inline_max=0).entries or []
    return entries if is_manifest(input_uri) else sorted(entries)


def list_sources(input_uri: str, path_column: str = "path") -> list[str]:
    """The image URIs of ``list_inputs``, without their sizes."""
    return [uri for uri, _ in list_inputs(input_uri, path_column)]


def iter_shard(shard: Shard, path_column: str) -> Iterator[list[Entry]]:
    """List one shard as chunks of at most ``CHUNK`` entries, in a fixed order."""
    if shard.kind == "manifest":
        yield from _iter_manifest(shard.root, path_column)
    elif shard.kind == "s3":
        keep = _keep(shard, prefix=storage.S3_SCHEME)
        for page in storage.iter_s3_objects(shard.root, recursive=shard.recursive):
            yield [(uri, size) for uri, size in page if keep(uri)]
    else:
        keep = _keep(shard)
        chunk: list[Entry] = []
        for path in storage.walk_local(shard.root, shard.recursive, shard.depth):
            if keep(path):
                chunk.append((path, -1))
                if len(chunk) >= CHUNK:
                    yield chunk
                    chunk = []
        if chunk:
            yield chunk


def _iter_shards(shards: list[Shard], path_column: str) -> Iterator[list[Entry]]:
    for shard in shards:
        yield from iter_shard(shard, path_column)


def _keep(shard: Shard, prefix: str = ""):
    """The file filter of a shard: a glob's pattern (manifests excluded) or the image suffixes."""
    if shard.pattern is None:
        suffixes = IMAGE_SUFFIXES
        return lambda uri: uri.lower().endswith(suffixes)
    regex = re.compile(shard.pattern)
    return lambda uri: bool(regex.match(uri[len(prefix):])) and not uri.lower().endswith(MANIFEST_SUFFIXES)


# -- planning ----------------------------------------------------------------------------
def _whole_input(input_uri: str) -> list[Shard]:
    """The input as one shard (listed in order by one task)."""
    if is_manifest(input_uri):
        return [Shard("manifest", input_uri, recursive=False)]
    if storage.is_s3(input_uri):
        bucket, key = storage.split_s3(input_uri)
        if storage.is_glob(key):
            base, regex, depth = storage.split_glob(f"{bucket}/{key}")
            return [Shard("s3", f"{storage.S3_SCHEME}{base}/", recursive=depth != 1, pattern=regex.pattern,
                          depth=depth)]
        return [Shard("s3", f"{storage.S3_SCHEME}{bucket}/{key.rstrip('/')}/" if key else
                      f"{storage.S3_SCHEME}{bucket}/")]
    text = input_uri[len("file://"):] if input_uri.startswith("file://") else input_uri
    if storage.is_glob(text):
        base, regex, depth = storage.split_glob(os.path.abspath(os.path.expanduser(text)))
        if not os.path.isdir(base):
            raise FileNotFoundError(f"no such directory: {base} (from pattern {input_uri!r})")
        return [Shard("local", base, recursive=True, pattern=regex.pattern, depth=depth)]
    path = os.path.abspath(os.path.expanduser(text))
    if os.path.isfile(path):
        return []  # one file: plan_inputs lists it
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no such file or directory: {path}")
    return [Shard("local", path)]


def _split(shards: list[Shard]) -> list[Shard]:
    """A large input's shards: each folder (prefix) below the root on its own, the root's
    own files in one more. A manifest stays one shard (it is read in row batches, and a
    path it repeats must be seen by the same task to be tagged once)."""
    out: list[Shard] = []
    for shard in shards:
        if shard.kind == "manifest" or not shard.recursive or shard.depth == 1:
            out.append(shard)
            continue
        below = None if shard.depth is None else shard.depth - 1
        out.append(Shard(shard.kind, shard.root, recursive=False, pattern=shard.pattern, depth=1))
        if shard.kind == "s3":
            folders = storage.iter_s3_prefixes(shard.root)
        else:
            folders = storage.local_subfolders(shard.root)
        out += [Shard(shard.kind, folder, recursive=True, pattern=shard.pattern, depth=below) for folder in folders]
    return out


def _manifest_rows(uri: str) -> Optional[int]:
    """A Parquet manifest's row count from its footer; ``None`` for CSV or other inputs."""
    if not is_manifest(uri) or not uri.lower().endswith(".parquet"):
        return None
    fs, path = storage.get_filesystem(uri)
    return pq.ParquetFile(fs.open_input_file(path)).metadata.num_rows


# -- manifests ---------------------------------------------------------------------------
def _iter_manifest(uri: str, path_column: str) -> Iterator[list[Entry]]:
    """A manifest's paths in row batches; relative paths are relative to its folder."""
    base = uri.rsplit("/", 1)[0]
    for batch in _manifest_batches(uri, path_column):
        paths = [p for p in batch.to_pylist() if p]
        yield [(p if storage.is_s3(p) or p.startswith("/") else f"{base}/{p}", -1) for p in paths]


def _manifest_batches(uri: str, path_column: str) -> Iterator[pa.Array]:
    fs, path = storage.get_filesystem(uri)
    if uri.lower().endswith(".csv"):
        import pyarrow.csv as pacsv

        with fs.open_input_stream(path) as f:
            reader = pacsv.open_csv(f, convert_options=pacsv.ConvertOptions(
                column_types={path_column: pa.string()}))
            _check_column(uri, path_column, reader.schema.names)
            for batch in reader:
                yield batch.column(path_column)
        return
    with fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        _check_column(uri, path_column, parquet.schema_arrow.names)
        for batch in parquet.iter_batches(batch_size=CHUNK, columns=[path_column]):
            yield batch.column(0).cast(pa.string())


def _check_column(uri: str, path_column: str, names: list[str]) -> None:
    if path_column not in names:
        raise KeyError(f"manifest {uri!r} has no {path_column!r} column (columns: {names})")
