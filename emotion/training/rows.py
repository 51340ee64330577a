"""Dataset samples -> training rows: one row per labelled person, with the crops the
model reads, cut exactly as the predictor cuts them at tagging time.

A row is a dict of arrays (a Ray Data / numpy batch):

* ``crop_<level>``: uint8 [N, S, S, 3] for each level the model asks for (``head``,
  ``body``, ``context``; S = the model's ``input_size``);
* ``labels``: float32 [N, K] multi-hot; ``vad``: float32 [N, 3] (NaN when unknown);
* ``image_uri``: object [N] (for error messages and debugging).

Crops: head = the face box made square and expanded by ``head_expand`` (the predictor's
``square_box``), body = the person box (or, when unknown, the box the predictor derives
from the face), context = the whole image; each resized with ``crop_resize``.
People whose needed box is unknown (a NaN face box with a head level) and single-label
people without a class are left out and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from emotion.boxes import body_box_from_face
from emotion.crops import context_window, crop_resize, square_box
from emotion.images import decode_image
from emotion.models.protocol import LEVELS


@dataclass(frozen=True)
class CropSpec:
    """What to cut for a model: its levels, crop side and the head-box margin."""

    levels: tuple[str, ...]
    size: int
    head_expand: float = 1.0
    num_labels: int = 0
    multi_label: bool = False

    def __post_init__(self) -> None:
        unknown = [level for level in self.levels if level not in LEVELS]
        if unknown or not self.levels:
            raise ValueError(f"crop levels must be a non-empty subset of {list(LEVELS)}, got {list(self.levels)}")


@dataclass
class RowCounts:
    """People kept and left out (with why) while making rows."""

    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def _image_pixels(sample: Mapping[str, Any]) -> np.ndarray:
    data = sample.get("image_bytes")
    if data is None:
        from emotion import storage

        data = storage.read_bytes(sample["image_uri"])
    return decode_image(bytes(data)).pixels


def person_rows(samples: Iterable[Mapping[str, Any]], spec: CropSpec, counts: RowCounts | None = None) -> dict[str, np.ndarray]:
    """Training rows (see module doc) of every labelled person in ``samples``.

    ``samples`` are sample dicts (``emotion.data.records``); a missing ``image_bytes`` is
    read from ``image_uri``. Unreadable images raise (a training set should be clean:
    ``emotion data prepare`` lists and leaves out bad files).
    """
    counts = counts if counts is not None else RowCounts()
    size = spec.size
    crops: dict[str, list[np.ndarray]] = {level: [] for level in spec.levels}
    labels, vad, uris = [], [], []
    for sample in samples:
        sample_labels = np.asarray(sample["labels"], dtype=np.float32).reshape(-1, spec.num_labels or np.shape(sample["labels"])[-1])
        if len(sample_labels) == 0:
            continue
        pixels = _image_pixels(sample)
        faces = np.asarray(sample["face_boxes"], dtype=np.float32).reshape(-1, 4)
        bodies = np.asarray(sample["person_boxes"], dtype=np.float32).reshape(-1, 4)
        people_vad = np.asarray(sample.get("vad") if sample.get("vad") is not None else np.full((len(sample_labels), 3), np.nan),
                                dtype=np.float32).reshape(-1, 3)
        context = context_window(pixels, size) if "context" in spec.levels else None
        for p, target in enumerate(sample_labels):
            if not spec.multi_label and target.max() <= 0:
                counts.skip("no class")
                continue
            face_known = bool(np.isfinite(faces[p]).all())
            if "head" in spec.levels and not face_known:
                counts.skip("unknown face box")
                continue
            body = bodies[p]
            if "body" in spec.levels and not np.isfinite(body).all():
                if not face_known:
                    counts.skip("unknown body and face boxes")
                    continue
                body = body_box_from_face(faces[p:p + 1], pixels.shape[:2])[0]
            for level in spec.levels:
                if level == "head":
                    crops[level].append(crop_resize(pixels, square_box(faces[p:p + 1], spec.head_expand)[0], size))
                elif level == "body":
                    crops[level].append(crop_resize(pixels, body, size))
                else:
                    crops[level].append(context)
            labels.append(target)
            vad.append(people_vad[p] if p < len(people_vad) else np.full(3, np.nan, np.float32))
            uris.append(str(sample["image_uri"]))
            counts.kept += 1
    k = spec.num_labels or (len(labels[0]) if labels else 0)
    out: dict[str, np.ndarray] = {f"crop_{level}": np.asarray(crops[level], dtype=np.uint8).reshape(-1, size, size, 3)
                                  for level in spec.levels}
    out["labels"] = np.asarray(labels, dtype=np.float32).reshape(-1, k)
    out["vad"] = np.asarray(vad, dtype=np.float32).reshape(-1, 3)
    out["image_uri"] = np.asarray(uris, dtype=object)
    return out


def concat_rows(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate row batches column by column (all parts must share their columns)."""
    if not parts:
        raise ValueError("no row batches to concatenate")
    return {key: np.concatenate([np.asarray(part[key]) for part in parts]) for key in parts[0]}


def build_crop_spec(model: Any, head_expand: float = 1.0) -> CropSpec:
    """The crops ``model`` (an EmotionModel) reads: its levels, input size and labels."""
    return CropSpec(levels=tuple(model.input_levels), size=int(model.input_size), head_expand=float(head_expand),
                    num_labels=len(model.labels), multi_label=bool(model.multi_label))
