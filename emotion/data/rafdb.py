"""RAF-DB basic (Li et al., CVPR 2017): 7 expression classes, train/test.

Layout: ``<root>/EmoLabel/list_patition_label.txt`` (sic) with lines ``train_00001.jpg 5``
(labels 1..7 = ``RAFDB_CLASSES``), images in ``<root>/Image/aligned/train_00001_aligned.jpg``
(100 x 100 aligned faces: the whole image is the face box) or, when the aligned file is
absent, ``<root>/Image/original/train_00001.jpg`` (face box unknown: NaN, detected later).
The split is the file-name prefix (``train``/``test``).
"""

from __future__ import annotations

import posixpath
from typing import Sequence

from emotion import storage
from emotion.data.records import (SampleSet, check_declared_size, make_sample, one_hot, probe_image_size,
                                  relative_parts, whole_image_box)
from emotion.labels import RAFDB_CLASSES

PARTITION_FILE = ("EmoLabel", "list_patition_label.txt")
ALIGNED_SIZE = (100, 100)


def read_partition(uri: str) -> list[tuple[str, int]]:
    """[(image name, class index 0..6)] from ``list_patition_label.txt``."""
    rows = []
    text = storage.read_bytes(uri).decode("utf-8-sig")
    for line_number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit() or not 1 <= int(fields[1]) <= len(RAFDB_CLASSES):
            raise ValueError(f"{uri} line {line_number}: expected '<name>.jpg <1..7>', got {line!r}")
        rows.append((fields[0], int(fields[1]) - 1))
    return rows


def _names_under(folder: str) -> set[str]:
    try:
        return {relative_parts(folder, uri)[-1] for uri in storage.list_files(folder, recursive=True)}
    except FileNotFoundError:
        return set()


def read_rafdb(
    root: str,
    splits: Sequence[str] | None = None,
    aligned_size: tuple[int, int] | None = ALIGNED_SIZE,
) -> SampleSet:
    """Read RAF-DB basic. ``aligned_size`` is the aligned images' (width, height)
    (100 x 100 in the release; the first aligned image is checked); None reads each
    header instead."""
    entries = read_partition(storage.join(root, *PARTITION_FILE))
    aligned_dir, original_dir = storage.join(root, "Image", "aligned"), storage.join(root, "Image", "original")
    aligned, original = _names_under(aligned_dir), _names_under(original_dir)
    result = SampleSet(label_set="rafdb", labels=RAFDB_CLASSES)
    missing = []
    checked = False  # the declared aligned_size, against the first aligned image
    for name, label in entries:
        split = name.split("_", 1)[0]
        if splits is not None and split not in splits:
            continue
        stem, ext = posixpath.splitext(name)
        aligned_name = f"{stem}_aligned{ext}"
        target = one_hot([label], len(RAFDB_CLASSES))
        if aligned_name in aligned:
            uri = storage.join(aligned_dir, aligned_name)
            if aligned_size is not None and not checked:
                check_declared_size(uri, aligned_size, "aligned_size")
                checked = True
            width, height = aligned_size if aligned_size is not None else probe_image_size(uri)
            sample = make_sample(uri, split, target, "rafdb", face_boxes=whole_image_box(width, height), width=width, height=height)
        elif name in original:
            sample = make_sample(storage.join(original_dir, name), split, target, "rafdb")
        else:
            missing.append(name)
            continue
        result.splits.setdefault(split, []).append(sample)
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} RAF-DB image(s) listed in {'/'.join(PARTITION_FILE)} are in neither Image/aligned "
            f"nor Image/original under {root}, e.g. {missing[:3]}"
        )
    return result
