"""The one record form every dataset reader yields, and its Arrow schema.

A *sample* is one image with its annotated people, as a plain dict (Arrow-friendly):

=============== ====================== ================================================
key             type                   meaning
=============== ====================== ================================================
image_uri       str                    local path or ``s3://`` URI of the image file
image_bytes     bytes or None          the encoded file; None until loaded
                                       (``load_image_bytes`` or ``prepare_dataset``)
split           str                    "train", "val", "test", ...
width, height   int                    image size in pixels; -1 when not known yet
person_boxes    float32 [n, 4]         body boxes x1, y1, x2, y2 in pixels; NaN row = unknown
face_boxes      float32 [n, 4]         face/head boxes, same convention; NaN row = unknown
labels          float32 [n, K]         multi-hot over the label set (see below)
vad             float32 [n, 3]         valence, arousal, dominance (EMOTIC scale 1-10); NaN = none
label_set       str                    name of the label set (``emotion.labels.LABEL_SETS``)
=============== ====================== ================================================

Design choices:

* ``n`` is the number of annotated people and all per-person arrays share it. A dataset
  whose label belongs to the whole image (CAER-S, RAF-DB, FER folders) has ``n = 1``: its
  one subject. A box that the format does not give is a NaN row, which tells the loading
  pipeline to detect it (CAER-S faces) rather than that nobody is there. ``n = 0`` only
  for an image with no annotated person.
* Labels are **multi-hot [n, K] for every dataset**. Multi-label sets (EMOTIC) use it as is;
  single-label sets (CAER-S, RAF-DB, FER) have exactly one 1 per row, and
  ``class_indices`` gives the int64 class index back. One representation means one
  collate function, one Parquet schema and one loss switch (sigmoid vs softmax, chosen
  by the label set, never by the data layout).
* Boxes are float32 pixels of the original image, never normalised, so they survive any
  resize done later by the pipeline with a single scale factor.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
from PIL import Image

from emotion import storage
from emotion.schema import LABELS_METADATA_KEY

LABEL_SET_METADATA_KEY = b"emotion.label_set"


def make_sample(
    image_uri: str,
    split: str,
    labels: np.ndarray,
    label_set: str,
    person_boxes: np.ndarray | None = None,
    face_boxes: np.ndarray | None = None,
    vad: np.ndarray | None = None,
    width: int = -1,
    height: int = -1,
    image_bytes: bytes | None = None,
) -> dict[str, Any]:
    """Build a sample dict, filling unknown boxes/VAD with NaN rows and checking shapes."""
    labels = np.asarray(labels, dtype=np.float32)
    if labels.ndim != 2:
        raise ValueError(f"{image_uri}: labels must be [n, K], got shape {labels.shape}")
    n = labels.shape[0]
    return {
        "image_uri": str(image_uri),
        "image_bytes": image_bytes,
        "split": str(split),
        "width": int(width),
        "height": int(height),
        "person_boxes": _rows(person_boxes, n, 4, image_uri, "person_boxes"),
        "face_boxes": _rows(face_boxes, n, 4, image_uri, "face_boxes"),
        "labels": labels,
        "vad": _rows(vad, n, 3, image_uri, "vad"),
        "label_set": str(label_set),
    }


def _rows(values: np.ndarray | None, n: int, width: int, where: str, name: str) -> np.ndarray:
    if values is None:
        return np.full((n, width), np.nan, dtype=np.float32)
    array = np.asarray(values, dtype=np.float32).reshape(-1, width) if np.size(values) else np.zeros((0, width), np.float32)
    if array.shape[0] != n:
        raise ValueError(f"{where}: {name} has {array.shape[0]} rows but there are {n} labelled people")
    return array


def class_indices(labels: np.ndarray) -> np.ndarray:
    """int64 [n] class index of single-label multi-hot rows (argmax; -1 for an all-zero row)."""
    labels = np.asarray(labels)
    index = labels.argmax(axis=-1).astype(np.int64)
    index[labels.max(axis=-1) <= 0] = -1
    return index


def one_hot(indices: Sequence[int], num_classes: int) -> np.ndarray:
    """float32 [n, K] one-hot rows of class indices."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= num_classes):
        raise ValueError(f"class index out of range 0..{num_classes - 1}: {indices.tolist()}")
    out = np.zeros((indices.size, num_classes), dtype=np.float32)
    out[np.arange(indices.size), indices] = 1.0
    return out


def whole_image_box(width: int, height: int) -> np.ndarray:
    """float32 [1, 4] box covering a ``width`` x ``height`` image (faces of face datasets);
    a NaN row when the size is unknown (-1)."""
    if width <= 0 or height <= 0:
        return np.full((1, 4), np.nan, dtype=np.float32)
    return np.array([[0.0, 0.0, float(width), float(height)]], dtype=np.float32)


@dataclass
class SampleSet:
    """What a reader returns: samples per split plus the label set they are labelled in."""

    label_set: str
    labels: tuple[str, ...]
    splits: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def samples(self, split: str | None = None) -> Iterator[dict[str, Any]]:
        """All samples of ``split`` (every split, in order, when None)."""
        if split is not None and split not in self.splits:
            raise KeyError(f"no split {split!r}; this dataset has {sorted(self.splits)}")
        names = [split] if split is not None else list(self.splits)
        for name in names:
            yield from self.splits[name]

    def __len__(self) -> int:
        return sum(len(rows) for rows in self.splits.values())

    def counts(self) -> dict[str, int]:
        """{split: number of images}."""
        return {name: len(rows) for name, rows in self.splits.items()}


# ---------------------------------------------------------------- URIs and bytes


def relative_parts(root: str, uri: str) -> tuple[str, ...]:
    """Path components of ``uri`` below ``root`` (both local paths or both URIs)."""
    root_s, uri_s = str(root), str(uri)
    if not storage.is_s3(root_s):
        root_s = os.path.abspath(root_s.removeprefix("file://"))
        uri_s = os.path.abspath(uri_s.removeprefix("file://"))
        rel = os.path.relpath(uri_s, root_s)
        if rel.startswith(".."):
            raise ValueError(f"{uri} is not under {root}")
        return tuple(p for p in rel.split(os.sep) if p)
    prefix = root_s.rstrip("/") + "/"
    if not uri_s.startswith(prefix):
        raise ValueError(f"{uri} is not under {root}")
    return tuple(p for p in uri_s[len(prefix):].split("/") if p)


def load_image_bytes(sample: dict[str, Any]) -> dict[str, Any]:
    """Fill ``image_bytes`` from ``image_uri`` (in place; returns the sample)."""
    if sample.get("image_bytes") is None:
        sample["image_bytes"] = storage.read_bytes(sample["image_uri"])
    return sample


def image_size_of(data: bytes) -> tuple[int, int]:
    """(width, height) from an encoded image's header, without decoding the pixels.

    EXIF orientation is applied, so the size is that of the upright image (what
    ``emotion.images.decode_image`` returns and what box coordinates refer to).
    """
    with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
        orientation = img.getexif().get(0x0112, 1)
    # Orientations 5-8 rotate by 90 degrees: width and height swap.
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def probe_image_size(uri: str) -> tuple[int, int]:
    """(width, height) of the image at ``uri`` from its header (local files read only
    the first 64 KiB); (-1, -1) when it is not a readable image, which ``prepare_dataset``
    then reports as skipped."""
    try:
        if not storage.is_s3(uri):
            with open(str(uri).removeprefix("file://"), "rb") as handle:
                head = handle.read(1 << 16)
            try:
                return image_size_of(head)
            except (OSError, SyntaxError, ValueError):  # header past 64 KiB (large EXIF): read it all
                pass
        return image_size_of(storage.read_bytes(uri))
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError):  # PIL's ways of saying "not an image"
        return -1, -1


def check_declared_size(uri: str, image_size: tuple[int, int], option: str) -> None:
    """Raise when the image at ``uri`` is not ``image_size`` (width, height), the size a
    reader's ``option`` declares for every image so that headers are not read: boxes of
    that size on a larger image would cut one corner of it."""
    actual = probe_image_size(uri)
    if tuple(actual) != tuple(int(v) for v in image_size):
        raise ValueError(f"{uri} is {actual[0]}x{actual[1]} pixels, but {option} declares "
                         f"{image_size[0]}x{image_size[1]} for every image: set {option}=null "
                         "to read each image's size")


# ---------------------------------------------------------------- Arrow


def sample_schema(labels: Sequence[str], label_set: str) -> pa.Schema:
    """Arrow schema of samples (also the prepared Parquet schema), label set in metadata."""
    k = len(labels)
    metadata = {LABELS_METADATA_KEY: json.dumps(list(labels)).encode(), LABEL_SET_METADATA_KEY: label_set.encode()}
    return pa.schema(
        [
            pa.field("image_uri", pa.string(), nullable=False),
            pa.field("image_bytes", pa.binary()),
            pa.field("split", pa.string(), nullable=False),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("person_boxes", pa.list_(pa.list_(pa.float32(), 4))),
            pa.field("face_boxes", pa.list_(pa.list_(pa.float32(), 4))),
            pa.field("labels", pa.list_(pa.list_(pa.float32(), k))),
            pa.field("vad", pa.list_(pa.list_(pa.float32(), 3))),
            pa.field("label_set", pa.string()),
        ],
        metadata=metadata,
    )


def samples_to_table(samples: Iterable[Mapping[str, Any]], labels: Sequence[str], label_set: str) -> pa.Table:
    """Arrow table of samples with ``sample_schema``; NaN in boxes stays NaN (not null)."""
    schema = sample_schema(labels, label_set)
    rows = list(samples)
    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    for row in rows:
        for name in schema.names:
            value = row.get(name)
            if isinstance(value, np.ndarray):
                value = value.tolist()
            columns[name].append(value)
    return pa.Table.from_pydict(columns, schema=schema)


def row_to_sample(row: Mapping[str, Any], num_labels: int | None = None) -> dict[str, Any]:
    """A sample dict (numpy arrays) from an Arrow row (``table.to_pylist()`` item or a
    Ray Data row whose nested lists may be numpy object arrays)."""
    k = num_labels if num_labels is not None else _row_width(row.get("labels"))
    return {
        "image_uri": row["image_uri"],
        "image_bytes": row.get("image_bytes"),
        "split": row.get("split", ""),
        "width": int(row["width"]) if row.get("width") is not None else -1,
        "height": int(row["height"]) if row.get("height") is not None else -1,
        "person_boxes": _nested_to_array(row.get("person_boxes"), 4),
        "face_boxes": _nested_to_array(row.get("face_boxes"), 4),
        "labels": _nested_to_array(row.get("labels"), k),
        "vad": _nested_to_array(row.get("vad"), 3),
        "label_set": row.get("label_set", ""),
    }


def _row_width(value: Any) -> int:
    rows = [] if value is None else list(value)
    if not rows:
        raise ValueError("cannot tell the number of classes from an empty labels cell: pass num_labels")
    return len(rows[0])


def _nested_to_array(value: Any, width: int) -> np.ndarray:
    if value is None:
        return np.zeros((0, width), dtype=np.float32)
    rows = [np.asarray(r, dtype=np.float32).reshape(width) for r in value]
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, width), dtype=np.float32)
