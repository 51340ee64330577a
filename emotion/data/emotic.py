"""EMOTIC (Kosti et al., PAMI 2019): ``Annotations.mat`` and the mat2py CSV conversion.

Layout of the released ``Annotations.mat`` (MATLAB v5; what ``scipy.io.loadmat`` sees):

* variables ``train``, ``val``, ``test``: 1 x N struct arrays, one entry per image, fields
  ``filename`` (``'abc.jpg'``), ``folder`` (``'mscoco/images'``, relative to the
  ``emotic/`` image folder), ``image_size`` (struct ``n_col`` = width, ``n_row`` = height),
  ``original_database`` (struct), ``person`` (1 x M struct array);
* ``person`` in **train**: ``body_bbox`` [x1 y1 x2 y2], ``annotations_categories``
  (1 x 1 struct, field ``categories``: cell of names), ``annotations_continuous``
  (1 x 1 struct ``valence``, ``arousal``, ``dominance``, scale 1-10), ``gender``, ``age``;
* ``person`` in **val/test** (several annotators): ``body_bbox``,
  ``annotations_categories`` (1 x A struct, one per annotator), ``combined_categories``
  (cell of names), ``annotations_continuous`` (1 x A), ``combined_continuous``
  (1 x 1 struct), ``gender``, ``age``.

Labels of val/test people: ``combined_categories`` when the file has it (the labels the
official code and every public EMOTIC implementation, e.g. mat2py, evaluate with), else
the **union** of the annotators' categories. VAD: ``combined_continuous`` when present,
else the mean over annotators. People with no category at all are dropped (as mat2py
does); VAD may be NaN.

Extensions read when present (written by ``emotion.data.synthetic``; the original 2017
release had ``head_bbox`` too): a person field ``head_bbox`` or ``face_bbox`` becomes
``face_boxes`` (else NaN rows), and top-level variables ``categories`` (cell of names)
and ``label_set`` (string) replace the 26 EMOTIC categories.

Files are found as in the official download: ``<root>/Annotations/Annotations.mat`` with
images under ``<root>/emotic/<folder>/<filename>``, or ``<root>/Annotations.mat`` with
images under ``<root>/<folder>/<filename>``; ``annotations_uri`` and ``images_root``
override either.

CSV conversion (mat2py from github.com/Tandon-A/emotic): ``<root>/{train,val,test}.csv``,
one row per person, columns ``Folder, Filename, Image Size, BBox, Categorical_Labels,
Continuous_Labels, Gender, Age`` with list cells written as Python lists
(``"[x1, y1, x2, y2]"``, ``"['Peace', 'Happiness']"``, ``"[6, 5, 7]"``; val/test rows
hold the combined labels). Variants with one 0/1 column per category name instead of
``Categorical_Labels`` are read too. Images are under ``images_root`` (default ``root``;
for mat2py's own layout pass ``<data_dir>/emotic``).
"""

from __future__ import annotations

import ast
import csv
import io
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import scipy.io

from emotion import storage
from emotion.data.records import SampleSet, make_sample
from emotion.labels import EMOTIC_CATEGORIES, names_to_multi_hot

SPLITS: tuple[str, ...] = ("train", "val", "test")


# ---------------------------------------------------------------- reading Annotations.mat


def locate_emotic(root: str, annotations_uri: str | None = None, images_root: str | None = None) -> tuple[bytes, str]:
    """Read the annotation file and decide where images live; returns (mat bytes, images root)."""
    if annotations_uri is not None:
        return storage.read_bytes(annotations_uri), images_root or root
    candidates = [
        (storage.join(root, "Annotations", "Annotations.mat"), storage.join(root, "emotic")),
        (storage.join(root, "Annotations.mat"), root),
    ]
    for mat_uri, default_images in candidates:
        try:
            data = storage.read_bytes(mat_uri)
        except FileNotFoundError:
            continue
        return data, images_root or default_images
    raise FileNotFoundError(
        f"no EMOTIC annotations under {root}: expected Annotations/Annotations.mat or Annotations.mat "
        "(or pass annotations_uri=...)"
    )


def read_emotic(
    root: str,
    splits: Sequence[str] | None = None,
    annotations_uri: str | None = None,
    images_root: str | None = None,
    drop_unlabelled: bool = True,
) -> SampleSet:
    """Read EMOTIC (or an EMOTIC-format dataset) from ``Annotations.mat``.

    Returns one sample per image with all its labelled people (see module docstring).
    ``splits`` defaults to those of train/val/test present in the file.
    """
    data, images = locate_emotic(root, annotations_uri, images_root)
    mat = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True, struct_as_record=False, chars_as_strings=True)
    labels = tuple(_strings(mat["categories"])) if "categories" in mat else EMOTIC_CATEGORIES
    label_set = str(mat["label_set"]) if "label_set" in mat else "emotic"
    wanted = list(splits) if splits is not None else [s for s in SPLITS if s in mat]
    result = SampleSet(label_set=label_set, labels=labels)
    for split in wanted:
        if split not in mat:
            raise KeyError(f"Annotations.mat has no split {split!r}; it has {[k for k in mat if not k.startswith('__')]}")
        rows = []
        for entry in _items(mat[split]):
            sample = _image_sample(entry, split, images, labels, label_set, drop_unlabelled)
            if sample is not None:
                rows.append(sample)
        result.splits[split] = rows
    return result


def _image_sample(entry: Any, split: str, images_root: str, labels: Sequence[str], label_set: str, drop_unlabelled: bool) -> dict | None:
    filename, folder = str(entry.filename), str(entry.folder)
    uri = storage.join(images_root, folder, filename)
    width, height = _image_size(getattr(entry, "image_size", None))
    bodies, faces, multi_hot, vads = [], [], [], []
    for person in _items(getattr(entry, "person", None)):
        names = _person_categories(person)
        if not names and drop_unlabelled:
            continue
        bodies.append(_clip_box(_box(getattr(person, "body_bbox", None)), width, height))
        face = getattr(person, "head_bbox", getattr(person, "face_bbox", None))
        faces.append(_clip_box(_box(face), width, height))
        multi_hot.append(names_to_multi_hot(names, labels, where=f"{split} image {folder}/{filename}"))
        vads.append(_person_vad(person))
    if not multi_hot and drop_unlabelled:
        return None
    k = len(labels)
    return make_sample(
        uri,
        split,
        np.stack(multi_hot) if multi_hot else np.zeros((0, k), np.float32),
        label_set,
        person_boxes=np.stack(bodies) if bodies else np.zeros((0, 4), np.float32),
        face_boxes=np.stack(faces) if faces else np.zeros((0, 4), np.float32),
        vad=np.stack(vads) if vads else np.zeros((0, 3), np.float32),
        width=width,
        height=height,
    )


def _person_categories(person: Any) -> list[str]:
    # val/test carry the annotators' consensus in combined_categories: prefer it.
    combined = getattr(person, "combined_categories", None)
    if combined is not None:
        names = _strings(combined)
        if names:
            return _unique(names)
    names: list[str] = []
    for annotator in _items(getattr(person, "annotations_categories", None)):
        names.extend(_strings(getattr(annotator, "categories", annotator)))
    return _unique(names)


def _person_vad(person: Any) -> np.ndarray:
    combined = getattr(person, "combined_continuous", None)
    annotators = _items(combined) if combined is not None else _items(getattr(person, "annotations_continuous", None))
    values = [[_scalar(getattr(a, name, None)) for name in ("valence", "arousal", "dominance")] for a in annotators]
    if not values:
        return np.full(3, np.nan, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        return np.nanmean(np.asarray(values, dtype=np.float64), axis=0).astype(np.float32)


def _image_size(size: Any) -> tuple[int, int]:
    if size is None:
        return -1, -1
    width, height = _scalar(getattr(size, "n_col", None)), _scalar(getattr(size, "n_row", None))
    if np.isnan(width) or np.isnan(height):
        return -1, -1
    return int(width), int(height)


def _clip_box(box: np.ndarray, width: int, height: int) -> np.ndarray:
    if np.isnan(box).any():
        return box
    x1, x2 = sorted((box[0], box[2]))
    y1, y2 = sorted((box[1], box[3]))
    if width > 0 and height > 0:
        # Some EMOTIC boxes reach past the image border (mat2py clips them the same way).
        x1, x2 = np.clip([x1, x2], 0, width)
        y1, y2 = np.clip([y1, y2], 0, height)
    return np.array([x1, y1, x2, y2], dtype=np.float32)


def _box(value: Any) -> np.ndarray:
    if value is None:
        return np.full(4, np.nan, dtype=np.float32)
    array = np.asarray(value, dtype=np.float64).ravel()
    if array.size != 4:
        return np.full(4, np.nan, dtype=np.float32)
    return array.astype(np.float32)


def _items(value: Any) -> list[Any]:
    """A loadmat value (struct array, squeezed single struct, or empty) as a list."""
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        return list(value.ravel()) if value.dtype == object else ([] if value.size == 0 else [value])
    return [value]


def _strings(value: Any) -> list[str]:
    """All strings inside a loadmat cell / char array / string (flattened)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "U":
            return [str(v) for v in value.ravel() if str(v)]
        if value.dtype == object:
            return [name for item in value.ravel() for name in _strings(item)]
        return []
    if hasattr(value, "categories"):
        return _strings(value.categories)
    return []


def _scalar(value: Any) -> float:
    if value is None:
        return float("nan")
    array = np.asarray(value, dtype=np.float64).ravel() if not isinstance(value, str) else np.array([])
    return float(array[0]) if array.size else float("nan")


def _unique(names: Iterable[str]) -> list[str]:
    return list(OrderedDict.fromkeys(n.strip() for n in names if n.strip()))


# ---------------------------------------------------------------- reading the CSV conversion


def read_emotic_csv(
    root: str,
    splits: Sequence[str] | None = None,
    images_root: str | None = None,
    labels: Sequence[str] = EMOTIC_CATEGORIES,
    label_set: str = "emotic",
) -> SampleSet:
    """Read the mat2py CSV conversion (``<root>/<split>.csv``, one row per person).

    Rows of one image (same Folder and Filename) become one sample, people in file order.
    """
    images = images_root or root
    wanted = list(splits) if splits is not None else list(SPLITS)
    result = SampleSet(label_set=label_set, labels=tuple(labels))
    for split in wanted:
        uri = storage.join(root, f"{split}.csv")
        try:
            text = storage.read_bytes(uri).decode("utf-8-sig")
        except FileNotFoundError:
            if splits is not None:
                raise FileNotFoundError(f"EMOTIC CSV for split {split!r} not found: {uri}") from None
            continue
        result.splits[split] = _csv_samples(text, uri, split, images, result.labels, label_set)
    if not result.splits:
        raise FileNotFoundError(f"no EMOTIC CSV files ({', '.join(s + '.csv' for s in wanted)}) under {root}")
    return result


def _csv_samples(text: str, uri: str, split: str, images_root: str, labels: Sequence[str], label_set: str) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text))
    columns = set(reader.fieldnames or [])
    one_hot_columns = all(name in columns for name in labels)
    missing = [c for c in ("Folder", "Filename", "BBox") if c not in columns]
    if missing or not (one_hot_columns or "Categorical_Labels" in columns):
        raise ValueError(
            f"{uri}: not an EMOTIC CSV; missing columns {missing or ['Categorical_Labels or one column per category']}"
        )
    people: "OrderedDict[tuple[str, str], list[dict]]" = OrderedDict()
    for line_number, row in enumerate(reader, start=2):
        where = f"{uri} line {line_number}"
        if one_hot_columns:
            multi_hot = np.array([float(row[name] or 0) for name in labels], dtype=np.float32)
        else:
            multi_hot = names_to_multi_hot(_literal_list(row["Categorical_Labels"], where), labels, where=where)
        box = np.asarray(_literal_list(row["BBox"], where), dtype=np.float32)
        if box.size != 4:
            raise ValueError(f"{where}: BBox must have 4 numbers, got {row['BBox']!r}")
        vad_values = _literal_list(row.get("Continuous_Labels") or "[]", where)
        vad = np.asarray(vad_values, dtype=np.float32) if len(vad_values) == 3 else np.full(3, np.nan, np.float32)
        size = _literal_list(row.get("Image Size") or "[]", where)
        key = (row["Folder"], row["Filename"])
        people.setdefault(key, []).append({"box": box, "labels": multi_hot, "vad": vad, "size": size})
    samples = []
    for (folder, filename), persons in people.items():
        size = persons[0]["size"]
        width, height = (int(size[0]), int(size[1])) if len(size) == 2 else (-1, -1)
        samples.append(
            make_sample(
                storage.join(images_root, folder, filename),
                split,
                np.stack([p["labels"] for p in persons]),
                label_set,
                person_boxes=np.stack([p["box"] for p in persons]),
                vad=np.stack([p["vad"] for p in persons]),
                width=width,
                height=height,
            )
        )
    return samples


def _literal_list(text: str, where: str) -> list:
    try:
        value = ast.literal_eval(text.strip()) if text and text.strip() else []
    except (ValueError, SyntaxError):
        raise ValueError(f"{where}: cannot parse list cell {text!r}") from None
    if isinstance(value, (str, int, float)):
        return [value]
    return list(value)


# ---------------------------------------------------------------- writing Annotations.mat


@dataclass
class EmoticPerson:
    """One person to write: body box, categories per annotator, VAD per annotator."""

    body_bbox: Sequence[float]
    categories: Sequence[Sequence[str]]  # one list of names per annotator
    continuous: Sequence[Sequence[float]] = ()  # one (valence, arousal, dominance) per annotator
    head_bbox: Sequence[float] | None = None
    gender: str = "Unknown"
    age: str = "Adult"
    extra: Mapping[str, Any] = field(default_factory=dict)  # more person fields, written as they are


@dataclass
class EmoticImage:
    filename: str
    folder: str
    width: int
    height: int
    people: Sequence[EmoticPerson]
    database: str = "synthetic"


def write_emotic_annotations(
    path: str | os.PathLike | io.BytesIO,
    splits: Mapping[str, Sequence[EmoticImage]],
    categories: Sequence[str] | None = None,
    label_set: str | None = None,
) -> None:
    """Write ``Annotations.mat`` in the released EMOTIC layout (see module docstring).

    train people get one annotator (``annotations_categories`` 1 x 1 struct); val/test
    people get 1 x A annotator structs plus ``combined_categories`` (union) and
    ``combined_continuous`` (mean). Extra person fields (``head_bbox``, ``extra``) go
    after the standard ones, so positional readers such as mat2py still work.
    ``categories``/``label_set`` are written as top-level variables when given.
    """
    variables: dict[str, Any] = {}
    for split, images in splits.items():
        variables[split] = _struct_array([_image_record(img, combined=(split != "train")) for img in images])
    if categories is not None:
        variables["categories"] = _cell(categories)
    if label_set is not None:
        variables["label_set"] = label_set
    scipy.io.savemat(path, variables, do_compression=True, oned_as="row")


def _image_record(image: EmoticImage, combined: bool) -> dict[str, Any]:
    people = [_person_record(p, combined) for p in image.people]
    return {
        "filename": image.filename,
        "folder": image.folder,
        "image_size": _struct_array([{"n_col": float(image.width), "n_row": float(image.height)}]),
        "original_database": _struct_array([{"name": image.database}]),
        "person": _struct_array(people),
    }


def _person_record(person: EmoticPerson, combined: bool) -> dict[str, Any]:
    annotator_cats = [_struct_array([{"categories": _cell(names)}]) for names in person.categories]
    continuous = list(person.continuous) or [(np.nan, np.nan, np.nan)]
    annotator_cont = [{"valence": float(v), "arousal": float(a), "dominance": float(d)} for v, a, d in continuous]
    record: dict[str, Any] = {"body_bbox": np.asarray(person.body_bbox, dtype=np.float64).reshape(1, 4)}
    if not combined:
        record["annotations_categories"] = annotator_cats[0]
        record["annotations_continuous"] = _struct_array(annotator_cont[:1])
    else:
        union = _unique(name for names in person.categories for name in names)
        mean = np.nanmean(np.asarray(continuous, dtype=np.float64), axis=0) if len(continuous) else [np.nan] * 3
        record["annotations_categories"] = _struct_array([{"categories": _cell(n)} for n in person.categories])
        record["combined_categories"] = _cell(union)
        record["annotations_continuous"] = _struct_array(annotator_cont)
        record["combined_continuous"] = _struct_array(
            [{"valence": float(mean[0]), "arousal": float(mean[1]), "dominance": float(mean[2])}]
        )
    record["gender"] = person.gender
    record["age"] = person.age
    if person.head_bbox is not None:
        record["head_bbox"] = np.asarray(person.head_bbox, dtype=np.float64).reshape(1, 4)
    record.update(person.extra)
    return record


def _cell(names: Iterable[str]) -> np.ndarray:
    names = list(names)
    cell = np.empty((1, len(names)), dtype=object)
    for i, name in enumerate(names):
        cell[0, i] = str(name)
    return cell


def _struct_array(records: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """1 x n MATLAB struct array (all records share the first record's fields)."""
    names = list(records[0].keys()) if records else []
    array = np.empty((1, len(records)), dtype=[(name, object) for name in names] or [("empty", object)])
    for i, record in enumerate(records):
        for name in names:
            array[0, i][name] = record[name]
    return array
