"""Dataset samples -> training rows: one row per labelled person, with the crops the
model reads, cut exactly as the predictor cuts them at tagging time.

A row is a dict of arrays (a Ray Data / numpy batch):

* ``crop_<level>``: uint8 [N, S, S, 3] for each level the model asks for (``head``,
  ``body``, ``context``; S = the model's ``input_size``);
* ``labels``: float32 [N, K] multi-hot; ``vad``: float32 [N, 3] (NaN when unknown);
* ``image_uri``: object [N] (for error messages and debugging).

Crops come from ``emotion.crops.person_crops`` after the same shrink to ``max_side`` the
predictor applies (``emotion.predictor.decode_one``), so a model trains on exactly the crops
it sees at tagging time. A body box that is unknown is derived from the face, as at
tagging time. People whose needed box is unknown (a NaN face box with a head level) and
single-label people without a class are left out and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from emotion.boxes import usable_people
from emotion.crops import CropSpec, person_crops
from emotion.images import DEFAULT_MAX_PIXELS, decode_one

__all__ = ["CropSpec", "RowCounts", "build_crop_spec", "person_rows", "working_image"]


@dataclass
class RowCounts:
    """People kept and left out (with why) while making rows."""

    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def working_image(sample: Mapping[str, Any], max_side: int) -> tuple[np.ndarray, float]:
    """The image shrunk as the predictor shrinks it, and the scale back to the original."""
    data = sample.get("image_bytes")
    if data is None:
        from emotion import storage

        data = storage.read_bytes(sample["image_uri"])
    pixels, scale, _, _ = decode_one(bytes(data), max_side, max_pixels=DEFAULT_MAX_PIXELS)
    return pixels, scale


def person_rows(samples: Iterable[Mapping[str, Any]], spec: CropSpec, counts: RowCounts | None = None, *,
                num_labels: int = 0, multi_label: bool = False) -> dict[str, np.ndarray]:
    """Training rows (see module doc) of every labelled person in ``samples``.

    ``samples`` are sample dicts (``emotion.data.records``) with boxes in original pixels;
    a missing ``image_bytes`` is read from ``image_uri``. Unreadable images raise (a
    training set should be clean: ``emotion data prepare`` lists and leaves out bad files).
    ``num_labels`` fixes the label width (0: from the first sample); single-label
    (``multi_label=False``) people without a class are left out.
    """
    counts = counts if counts is not None else RowCounts()
    size = spec.size
    crops: dict[str, list[np.ndarray]] = {level: [] for level in spec.levels}
    labels, vad, uris = [], [], []
    for sample in samples:
        width = num_labels or np.shape(sample["labels"])[-1]
        sample_labels = np.asarray(sample["labels"], dtype=np.float32).reshape(-1, width)
        if len(sample_labels) == 0:
            continue
        pixels, scale = working_image(sample, spec.max_side)
        faces = np.asarray(sample["face_boxes"], dtype=np.float32).reshape(-1, 4) / scale
        bodies = np.asarray(sample["person_boxes"], dtype=np.float32).reshape(-1, 4) / scale
        people_vad = np.asarray(sample.get("vad") if sample.get("vad") is not None
                                else np.full((len(sample_labels), 3), np.nan), dtype=np.float32).reshape(-1, 3)
        keep, bodies, skipped = usable_people(sample_labels, faces, bodies, lambda: pixels.shape[:2],
                                              multi_label=multi_label, needs_face="head" in spec.levels)
        for reason in skipped:
            counts.skip(reason)
        if not keep:
            continue
        for level, cut in person_crops(pixels, faces[keep], bodies[keep], spec).items():
            crops[level].append(cut)
        labels += [sample_labels[p] for p in keep]
        vad += [people_vad[p] if p < len(people_vad) else np.full(3, np.nan, np.float32) for p in keep]
        uris += [str(sample["image_uri"])] * len(keep)
        counts.kept += len(keep)
    k = num_labels or (len(labels[0]) if labels else 0)
    out: dict[str, np.ndarray] = {
        f"crop_{level}": (np.concatenate(crops[level]) if crops[level] else np.zeros((0, size, size, 3), np.uint8))
        for level in spec.levels}
    out["labels"] = np.asarray(labels, dtype=np.float32).reshape(-1, k)
    out["vad"] = np.asarray(vad, dtype=np.float32).reshape(-1, 3)
    out["image_uri"] = np.asarray(uris, dtype=object)
    return out


def build_crop_spec(model: Any, head_expand: float, max_side: int) -> CropSpec:
    """The crops ``model`` (an EmotionModel) reads, cut with a box source's margin."""
    return CropSpec(levels=tuple(model.input_levels), size=int(model.input_size), head_expand=float(head_expand),
                    max_side=int(max_side))
