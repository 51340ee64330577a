"""Convert any supported dataset into sharded Parquet with the image bytes inside.

Output (local folder or ``s3://`` prefix)::

    <output>/train-00000.parquet, train-00001.parquet, ..., val-00000.parquet, ...
    <output>/stats.txt   stats.json   stats.png

Each shard holds up to ``shard_rows`` images with the ``emotion.data.records.sample_schema``
columns (encoded image bytes, width/height from the image header, boxes, multi-hot
labels, VAD, split); the label list and label-set name are in the schema metadata.
Images that cannot be read are left out and listed under ``skipped`` in the statistics,
so one bad file does not stop a conversion of 70k images.

``read_prepared`` loads shards back as one Arrow table (``split`` filter optional);
``decode_row`` turns one row into pixels and numpy annotations.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from emotion import storage
from emotion.data import read_dataset
from emotion.data.records import LABEL_SET_METADATA_KEY, image_size_of, row_to_sample, samples_to_table
from emotion.data.stats import StatsAccumulator, format_stats, plot_stats
from emotion.images import decode_image
from emotion.schema import LABELS_METADATA_KEY

SHARD_SUFFIX = ".parquet"


def prepare_dataset(
    fmt: str,
    root: str,
    output_uri: str,
    shard_rows: int = 1000,
    splits: Sequence[str] | None = None,
    max_images_per_split: int | None = None,
    reader_options: Mapping[str, Any] | None = None,
    num_threads: int = 8,
    overwrite: bool = False,
    plot: bool = True,
) -> dict[str, Any]:
    """Read dataset ``fmt`` at ``root`` and write Parquet shards + statistics to ``output_uri``.

    Returns ``{"output_uri", "shards": [uri, ...], "stats": <report dict>}``.
    ``num_threads`` threads fetch image bytes (I/O bound, useful on S3).
    An output that already holds shards is an error unless ``overwrite``.
    """
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
    options = dict(reader_options or {})
    if splits is not None:
        options["splits"] = list(splits)
    dataset = read_dataset(fmt, root, **options)
    _clear_output(output_uri, overwrite)
    stats = StatsAccumulator(dataset.labels, dataset.label_set)
    shards = []
    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        for split, samples in dataset.splits.items():
            chosen = samples[:max_images_per_split] if max_images_per_split is not None else samples
            for index, chunk in enumerate(_chunks(chosen, shard_rows)):
                rows = [row for row in pool.map(_with_bytes, chunk) if _keep(row, stats)]
                if not rows:
                    continue
                uri = storage.join(output_uri, f"{split}-{index:05d}{SHARD_SUFFIX}")
                _write_table(samples_to_table(rows, dataset.labels, dataset.label_set), uri)
                shards.append(uri)
                for row in rows:
                    stats.add(row)
    report = stats.result()
    storage.write_bytes(storage.join(output_uri, "stats.txt"), format_stats(report).encode())
    storage.write_bytes(storage.join(output_uri, "stats.json"), json.dumps(report, indent=1).encode())
    if plot:
        storage.write_bytes(storage.join(output_uri, "stats.png"), plot_stats(report))
    return {"output_uri": str(output_uri), "shards": shards, "stats": report}


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _with_bytes(sample: Mapping[str, Any]) -> dict[str, Any]:
    """The sample with its bytes and true (upright) size, or with an ``error`` reason."""
    row = dict(sample)
    try:
        data = row["image_bytes"] if row.get("image_bytes") is not None else storage.read_bytes(row["image_uri"])
        row["width"], row["height"] = image_size_of(data)
        row["image_bytes"] = data
    except FileNotFoundError as exc:
        row["error"] = f"missing: {exc}"
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's ways of saying "not an image"
        row["error"] = f"unreadable image: {exc}"
    return row


def _keep(row: Mapping[str, Any], stats: StatsAccumulator) -> bool:
    if "error" in row:
        stats.skip(row["image_uri"], row["error"])
        return False
    return True


def _write_table(table: pa.Table, uri: str) -> None:
    filesystem, path = storage.get_filesystem(uri)
    if isinstance(filesystem, pafs.LocalFileSystem):
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    # Image bytes are already compressed: one row group per shard, no further codec work.
    pq.write_table(table, path, filesystem=filesystem, row_group_size=max(1, table.num_rows), compression="snappy")


def list_shards(uri: str) -> list[str]:
    """Parquet shard URIs under a prepared dataset's folder, sorted."""
    try:
        return storage.list_files(uri, suffixes=(SHARD_SUFFIX,), recursive=False)
    except FileNotFoundError:
        return []


def _clear_output(uri: str, overwrite: bool) -> None:
    existing = list_shards(uri)
    if existing and not overwrite:
        raise FileExistsError(f"{uri} already holds {len(existing)} Parquet shard(s); pass overwrite=True to replace them")
    for shard in existing:
        filesystem, path = storage.get_filesystem(shard)
        filesystem.delete_file(path)


def read_prepared(uri: str, split: str | None = None, columns: Sequence[str] | None = None) -> pa.Table:
    """All shards under ``uri`` as one table (rows of ``split`` only, when given).

    The schema metadata carries the label list (``emotion.labels``) and the label-set
    name; ``prepared_labels(table)`` reads them back.
    """
    shards = list_shards(uri)
    if not shards:
        raise FileNotFoundError(f"no Parquet shards (*{SHARD_SUFFIX}) under {uri}: run prepare_dataset first")
    filesystem, _ = storage.get_filesystem(shards[0])
    paths = [storage.get_filesystem(shard)[1] for shard in shards]
    schema = pq.read_schema(paths[0], filesystem=filesystem)
    dataset = pads.dataset(paths, schema=schema, format="parquet", filesystem=filesystem)
    table = dataset.to_table(columns=list(columns) if columns else None, filter=(pads.field("split") == split) if split else None)
    return table.replace_schema_metadata(schema.metadata)


def prepared_labels(table: pa.Table) -> tuple[str, tuple[str, ...]]:
    """(label-set name, label list) stored in a prepared table's metadata."""
    metadata = table.schema.metadata or {}
    if LABELS_METADATA_KEY not in metadata:
        raise KeyError("table has no emotion.labels metadata: not a prepared dataset")
    return metadata.get(LABEL_SET_METADATA_KEY, b"").decode(), tuple(json.loads(metadata[LABELS_METADATA_KEY]))


class DecodedSample(NamedTuple):
    """One decoded row: ``pixels`` uint8 [H, W, 3] (upright RGB), boxes float32 [n, 4]
    (NaN rows unknown), ``labels`` float32 [n, K] multi-hot, ``vad`` float32 [n, 3]."""

    pixels: np.ndarray
    person_boxes: np.ndarray
    face_boxes: np.ndarray
    labels: np.ndarray
    vad: np.ndarray


def decode_row(row: Mapping[str, Any], num_labels: int | None = None) -> DecodedSample:
    """Decode a prepared row (``table.to_pylist()`` item or a Ray Data row)."""
    sample = row_to_sample(row, num_labels)
    if sample["image_bytes"] is None:
        raise ValueError(f"row for {sample['image_uri']} has no image bytes: read it from a prepared dataset")
    pixels = decode_image(bytes(sample["image_bytes"])).pixels
    return DecodedSample(pixels, sample["person_boxes"], sample["face_boxes"], sample["labels"], sample["vad"])


def build_prepare(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``prepare_dataset`` from the ``emotion data prepare`` config (``jobs/configs/data_prepare.yaml``)."""
    return prepare_dataset(
        str(cfg["format"]),
        str(cfg["root"]),
        str(cfg["output_uri"]),
        shard_rows=int(cfg["shard_rows"]),
        splits=cfg["splits"],
        max_images_per_split=cfg["max_images_per_split"],
        reader_options=cfg["options"],
        num_threads=int(cfg["num_threads"]),
        overwrite=bool(cfg["overwrite"]),
    )
