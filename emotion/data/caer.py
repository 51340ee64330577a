"""CAER-S (Lee et al., ICCV 2019): ``<root>/{train,test}/<Class>/<frame>.png``, 7 classes.

Each frame is labelled with one class for its main subject, so a sample has one person
(``n = 1``). The release has no boxes: ``face_boxes`` comes from an optional CSV
(``path,x1,y1,x2,y2``, ``path`` relative to ``root`` like ``train/Anger/0001.png``, or the
image's full URI; a header line is allowed); frames it does not list keep a NaN face row,
which tells the loading pipeline to detect the face. Body boxes are always NaN (unknown).
"""

from __future__ import annotations

import csv
import io
from typing import Sequence

import numpy as np

from emotion import storage
from emotion.data.image_folder import class_index, list_class_images
from emotion.data.records import SampleSet, make_sample, one_hot
from emotion.labels import CAER_CLASSES


def read_face_boxes_csv(uri: str, root: str) -> dict[str, np.ndarray]:
    """{image uri: float32 [4] face box} from a ``path,x1,y1,x2,y2`` CSV."""
    text = storage.read_bytes(uri).decode("utf-8-sig")
    boxes: dict[str, np.ndarray] = {}
    for line_number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 5:
            raise ValueError(f"{uri} line {line_number}: expected path,x1,y1,x2,y2, got {row}")
        try:
            box = np.array([float(v) for v in row[1:]], dtype=np.float32)
        except ValueError:
            if line_number == 1:  # header
                continue
            raise ValueError(f"{uri} line {line_number}: box values are not numbers: {row[1:]}") from None
        path = row[0].strip()
        boxes[path if "://" in path or path.startswith("/") else storage.join(root, path)] = box
    return boxes


def read_caer(
    root: str,
    splits: Sequence[str] | None = None,
    face_boxes_uri: str | None = None,
    labels: Sequence[str] = CAER_CLASSES,
) -> SampleSet:
    """Read CAER-S; ``face_boxes_uri`` names the optional face-box CSV."""
    by_split = list_class_images(root, splits)
    folder_names = sorted({name for rows in by_split.values() for name, _ in rows})
    mapping = class_index(folder_names, labels, root)
    faces = read_face_boxes_csv(face_boxes_uri, root) if face_boxes_uri else {}
    result = SampleSet(label_set="caer", labels=tuple(labels))
    for split, rows in by_split.items():
        result.splits[split] = [
            make_sample(uri, split, one_hot([mapping[name]], len(labels)), "caer", face_boxes=faces.get(uri))
            for name, uri in rows
        ]
    return result
