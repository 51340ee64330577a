"""Dataset samples -> whole-image training rows, for single-stage models (DSCT) that find
the people themselves: one row per image, with every labelled person's box and labels.

A row is a dict of arrays (a Ray Data / numpy batch), P = ``max_people``:

* ``crop_context``: uint8 [N, S, S, 3], the whole image resized to a square, cut by
  ``emotion.crops.context_window`` after the predictor's shrink to ``max_side``: exactly
  what the model reads at tagging time;
* ``boxes``: float32 [N, P, 4], each person's body box as normalised (cx, cy, w, h) of the
  image, NaN rows after the last person;
* ``people_labels``: float32 [N, P, K] multi-hot, zero rows after the last person;
* ``num_people``: int32 [N];
* ``labels``: float32 [N, K], the union of the image's people's labels (what the training
  loop counts images by, and the class prior);
* ``image_uri``: object [N].

A person's box is the dataset's body box; where that is unknown it is derived from the
face box as tagging does (``emotion.boxes.body_box_from_face``); a person with neither is
left out and counted. An image annotated with no people is kept (it teaches the model what
an empty scene looks like); an image whose people were all left out is dropped, since it
is not an empty scene. People beyond ``max_people`` (the model's subject
queries) are left out and counted.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from emotion.boxes import usable_people
from emotion.crops import CropSpec, context_window
from emotion.training.rows import RowCounts, working_image


def xyxy_to_cxcywh(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """Absolute (x1, y1, x2, y2) [n, 4] -> normalised (cx, cy, w, h), clipped to the image."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    x1, x2 = np.clip(boxes[:, 0], 0, width), np.clip(boxes[:, 2], 0, width)
    y1, y2 = np.clip(boxes[:, 1], 0, height), np.clip(boxes[:, 3], 0, height)
    return np.stack([(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height], axis=1)


def image_rows(samples: Iterable[Mapping[str, Any]], spec: CropSpec, counts: RowCounts | None = None, *,
               num_labels: int = 0, multi_label: bool = False, max_people: int = 8) -> dict[str, np.ndarray]:
    """Training rows (module doc) of every image in ``samples`` (sample dicts of
    ``emotion.data.records``, boxes in original pixels)."""
    counts = counts if counts is not None else RowCounts()
    size, p_max = spec.size, int(max_people)
    images, boxes, people_labels, num_people, labels, uris = [], [], [], [], [], []
    for sample in samples:
        k = num_labels or np.shape(sample["labels"])[-1]
        sample_labels = np.asarray(sample["labels"], dtype=np.float32).reshape(-1, k)
        pixels, scale = working_image(sample, spec.max_side)
        height, width = pixels.shape[:2]
        faces = np.asarray(sample["face_boxes"], dtype=np.float32).reshape(-1, 4) / scale
        bodies = np.array(sample["person_boxes"], dtype=np.float32).reshape(-1, 4) / scale
        keep, bodies, skipped = usable_people(sample_labels, faces, bodies, lambda: (height, width),
                                              multi_label=multi_label)
        for reason in skipped:
            counts.skip(reason)
        for p in keep[p_max:]:
            counts.skip("more people than subject queries")
        keep = keep[:p_max]
        if len(sample_labels) and not keep:
            counts.skip("image without a usable person")  # not an empty scene: its people lack boxes
            continue
        row_boxes = np.full((p_max, 4), np.nan, np.float32)
        row_labels = np.zeros((p_max, k), np.float32)
        if keep:
            row_boxes[:len(keep)] = xyxy_to_cxcywh(bodies[keep], width, height)
            row_labels[:len(keep)] = sample_labels[keep]
        images.append(context_window(pixels, size))
        boxes.append(row_boxes)
        people_labels.append(row_labels)
        num_people.append(len(keep))
        labels.append(row_labels.max(axis=0) if keep else np.zeros(k, np.float32))
        uris.append(str(sample["image_uri"]))
        counts.kept += len(keep)
    k = num_labels or (labels[0].shape[0] if labels else 0)
    return {
        "crop_context": np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
        "boxes": np.stack(boxes) if boxes else np.zeros((0, p_max, 4), np.float32),
        "people_labels": np.stack(people_labels) if people_labels else np.zeros((0, p_max, k), np.float32),
        "num_people": np.asarray(num_people, dtype=np.int32),
        "labels": np.asarray(labels, dtype=np.float32).reshape(-1, k),
        "image_uri": np.asarray(uris, dtype=object),
    }
