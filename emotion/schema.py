"""The output schema of tagging and serving: one row per detected person.

Images with no person give one row with ``person_index`` null; images that failed give
one row with ``error`` set. So every input image appears in the output, and each image's
first row (``first_row_mask``) has ``person_index`` 0 or null. The label set is stored in
the Parquet file metadata under ``emotion.labels`` (JSON list), the model id under
``emotion.model`` and, in tagging output, the crop settings under ``emotion.recipe`` (JSON
object, ``PredictorConfig.crop_recipe``).

``output_table`` builds a table in this schema from the predictor's columns;
``split_rows`` splits one back into a table per image.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

LEVEL_NAMES: tuple[str, ...] = ("head", "body", "context", "vocabulary")
LABELS_METADATA_KEY = b"emotion.labels"
MODEL_METADATA_KEY = b"emotion.model"
RECIPE_METADATA_KEY = b"emotion.recipe"


def image_id_for(source: str, source_bytes: bytes | None = None) -> str:
    """Stable id of an image: the first 32 hex digits of SHA-256 of its source URI's bytes
    (``source_bytes`` when the name is not valid UTF-8; see ``emotion.tagging.sources``)."""
    return hashlib.sha256(source_bytes if source_bytes else source.encode("utf-8")).hexdigest()[:32]


def box_type() -> pa.DataType:
    return pa.list_(pa.float32(), 4)


def output_schema(labels: Sequence[str], model_id: str = "",
                  recipe: Mapping[str, object] | None = None) -> pa.Schema:
    """Arrow schema of tagging output for a model with these ``labels``; ``recipe`` (the
    run's crop settings) is recorded in the metadata when given."""
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
    if recipe is not None:
        metadata[RECIPE_METADATA_KEY] = json.dumps(dict(recipe), sort_keys=True).encode()
    return pa.schema(fields, metadata=metadata)


def labels_from_schema(schema: pa.Schema) -> list[str]:
    """Read the label set back from a table's or file's schema metadata."""
    meta = schema.metadata or {}
    if LABELS_METADATA_KEY not in meta:
        raise KeyError("schema has no emotion.labels metadata: not an emotion tagging output")
    return json.loads(meta[LABELS_METADATA_KEY])


def has_error(value: object) -> bool:
    """Error cells are non-empty strings; "" / None / NaN (after Arrow round trips) mean none."""
    return isinstance(value, str) and value != ""


def first_row_mask(table: pa.Table) -> np.ndarray:
    """bool [rows]: each image's first row (``person_index`` 0, or null for an image with
    nobody in it or an error), so counting images never depends on row order."""
    person = table.column("person_index").to_numpy(zero_copy_only=False)
    return np.nan_to_num(person.astype(float), nan=0.0) == 0


def output_table(people: Mapping[str, Any], labels: Sequence[str], model_id: str, scores: np.ndarray,
                 level_scores: np.ndarray, refined: np.ndarray, dropped: Sequence[Sequence[str] | None],
                 emotions: Sequence[Sequence[str]]) -> pa.Table:
    """The output table of person rows (``EmotionPredictor.detect``'s columns) and their
    scores: ``scores`` float32 [N, K] and ``level_scores`` [N, len(LEVEL_NAMES), K] (NaN
    where not scored), ``refined`` bool [N], ``dropped`` and ``emotions`` one list per row.
    Boxes and scores are null for rows without a person; a box the model does not give
    (NaN) is null too."""
    labels = list(labels)
    n = len(people["source"])
    has_person = np.asarray(people["person_index"]) >= 0
    ok = np.array([not has_error(e) for e in people["error"]], dtype=bool)
    scored = has_person & ok

    def boxes(col: str) -> pa.Array:
        array = np.asarray(people[col], dtype=np.float32).reshape(-1, 4)
        unknown = ~has_person | np.isnan(array).any(axis=1)
        return pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), 4, mask=pa.array(unknown))

    def per_label(values: np.ndarray, mask: np.ndarray) -> pa.Array:
        flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1))
        return pa.FixedSizeListArray.from_arrays(flat, len(labels), mask=pa.array(mask))

    level_arrays = []
    for j, _ in enumerate(LEVEL_NAMES):
        column = level_scores[:, j]
        level_arrays.append(per_label(column, ~scored | np.isnan(column).all(axis=1)))
    level_struct = pa.StructArray.from_arrays(level_arrays, names=list(LEVEL_NAMES), mask=pa.array(~scored))
    sources = [str(s) for s in people["source"]]
    raw_names = people.get("source_bytes")
    raw_names = [bytes(b) if b is not None and len(b) else None for b in raw_names] if raw_names is not None \
        else [None] * n
    schema = output_schema(labels, model_id)
    columns = {
        "image_id": pa.array([image_id_for(s, b) for s, b in zip(sources, raw_names)], pa.string()),
        "source": pa.array(sources, pa.string()),
        "source_bytes": pa.array(raw_names, pa.binary()),
        "person_index": pa.array(np.asarray(people["person_index"], dtype=np.int32), mask=~has_person),
        "face_box": boxes("face_box"),
        "body_box": boxes("body_box"),
        "detector_score": pa.array(np.asarray(people["detector_score"], dtype=np.float32), mask=~has_person),
        "emotions": pa.array(emotions, pa.list_(pa.string())),
        "scores": per_label(scores, ~scored),
        "level_scores": level_struct,
        "refined": pa.array(refined, pa.bool_()),
        "dropped_levels": pa.array(dropped, pa.list_(pa.string())),
        "image_width": pa.array(np.asarray(people["image_width"], dtype=np.int32)),
        "image_height": pa.array(np.asarray(people["image_height"], dtype=np.int32)),
        "model": pa.array([model_id] * n, pa.string()),
        "error": pa.array([str(e) if has_error(e) else None for e in people["error"]], pa.string()),
    }
    return pa.table([columns[f.name] for f in schema], schema=schema)


def split_rows(table: pa.Table, image_index: np.ndarray, n_images: int) -> list[pa.Table]:
    """Rows -> one table per image, by each row's image index."""
    image_index = np.asarray(image_index)
    return [table.take(pa.array(np.flatnonzero(image_index == i))) for i in range(n_images)]
