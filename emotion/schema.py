"""The output schema of tagging and serving: one row per detected person.

Images with no person give one row with ``person_index`` null; images that failed give
one row with ``error`` set. So every input image appears in the output. The label set
is stored in the Parquet file metadata under ``emotion.labels`` (JSON list).
"""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

import pyarrow as pa

LEVEL_NAMES: tuple[str, ...] = ("head", "body", "context", "vocabulary")
LABELS_METADATA_KEY = b"emotion.labels"
MODEL_METADATA_KEY = b"emotion.model"


def image_id_for(source: str, source_bytes: bytes | None = None) -> str:
    """Stable id of an image: the first 32 hex digits of SHA-256 of its source URI's bytes
    (``source_bytes`` when the name is not valid UTF-8; see ``emotion.tagging.sources``)."""
    return hashlib.sha256(source_bytes if source_bytes else source.encode("utf-8")).hexdigest()[:32]


def box_type() -> pa.DataType:
    return pa.list_(pa.float32(), 4)


def output_schema(labels: Sequence[str], model_id: str = "") -> pa.Schema:
    """Arrow schema of tagging output for a model with these ``labels``."""
    k = len(labels)
    scores = pa.list_(pa.float32(), k)
    level_scores = pa.struct([pa.field(name, scores) for name in LEVEL_NAMES])
    fields = [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_bytes", pa.binary()),  # the name's bytes when not valid UTF-8 (emotion.tagging.sources)
        pa.field("person_index", pa.int32()),
        pa.field("face_box", box_type()),
        pa.field("body_box", box_type()),
        pa.field("detector_score", pa.float32()),
        pa.field("emotions", pa.list_(pa.string())),
        pa.field("scores", scores),
        pa.field("level_scores", level_scores),
        pa.field("refined", pa.bool_()),
        pa.field("dropped_levels", pa.list_(pa.string())),
        pa.field("image_width", pa.int32()),
        pa.field("image_height", pa.int32()),
        pa.field("model", pa.string()),
        pa.field("error", pa.string()),
    ]
    metadata = {LABELS_METADATA_KEY: json.dumps(list(labels)).encode(), MODEL_METADATA_KEY: model_id.encode()}
    return pa.schema(fields, metadata=metadata)


def labels_from_schema(schema: pa.Schema) -> list[str]:
    """Read the label set back from a table's or file's schema metadata."""
    meta = schema.metadata or {}
    if LABELS_METADATA_KEY not in meta:
        raise KeyError("schema has no emotion.labels metadata: not an emotion tagging output")
    return json.loads(meta[LABELS_METADATA_KEY])
