"""Class-per-folder image datasets: ``<root>/<split>/<class>/<image>`` (FER2013 and the like).

Each image is one face labelled with its folder's class; the whole image is the face, so
``face_boxes`` is [[0, 0, width, height]] and the body box is unknown (NaN). Image sizes
come from ``image_size`` when every image has the same one (FER2013: 48 x 48), else
from each file's header.

Folder names are matched to the label set by name, lower-cased with synonyms
(``happy`` = ``Happiness``), so ``read_image_folder(root, label_set="caer")`` also reads
folders named ``happy``/``sad``. Without a label set the classes are the sorted folder names.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from emotion import storage
from emotion.data.records import (SampleSet, check_declared_size, make_sample, one_hot, probe_image_size,
                                  relative_parts, whole_image_box)
from emotion.labels import canonical_name, get_label_set, index_by_name
from emotion.images import IMAGE_SUFFIXES



def list_class_images(root: str, splits: Sequence[str] | None = None) -> dict[str, list[tuple[str, str]]]:
    """{split: [(class folder name, image uri), ...]} for ``<root>/<split>/<class>/<image>``,
    sorted by URI. Files at other depths are ignored."""
    found: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for uri in storage.list_files(root, suffixes=IMAGE_SUFFIXES, recursive=True):
        parts = relative_parts(root, uri)
        if len(parts) != 3 or parts[-1].startswith("."):
            continue
        split, class_name, _ = parts
        if splits is None or split in splits:
            found[split].append((class_name, uri))
    if splits is not None:
        missing = [s for s in splits if s not in found]
        if missing:
            raise FileNotFoundError(f"no images in split folder(s) {missing} under {root} (layout <split>/<class>/<image>)")
    if not found:
        raise FileNotFoundError(f"no images under {root} in the layout <split>/<class>/<image>")
    return dict(found)


def class_index(class_names: Sequence[str], labels: Sequence[str], root: str) -> dict[str, int]:
    """{folder name: label index}; a folder that names no class of ``labels`` is an error."""
    index = index_by_name(labels)
    mapping = {}
    for name in class_names:
        position = index.get(canonical_name(name))
        if position is None:
            raise ValueError(f"class folder {name!r} under {root} is not in the label set {list(labels)}")
        mapping[name] = position
    return mapping


def read_image_folder(
    root: str,
    label_set: str | None = None,
    labels: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    image_size: tuple[int, int] | None = None,
) -> SampleSet:
    """Read ``<root>/<split>/<class>/<image>``; one sample (one face) per image.

    ``label_set`` names a registered set (e.g. "fer") or ``labels`` gives the classes;
    with neither, the sorted folder names are the classes (label set "image_folder").
    ``image_size`` (width, height) skips reading headers when all images share it; the
    first image of each split is still read, and another size there is an error (a folder
    of larger faces read as FER2013's 48 x 48 would be cut from one corner).
    """
    by_split = list_class_images(root, splits)
    folder_names = sorted({name for rows in by_split.values() for name, _ in rows})
    if labels is None:
        labels = get_label_set(label_set) if label_set else tuple(folder_names)
    name = label_set or "image_folder"
    mapping = class_index(folder_names, labels, root)
    result = SampleSet(label_set=name, labels=tuple(labels))
    for split, rows in by_split.items():
        if image_size is not None and rows:
            check_declared_size(rows[0][1], image_size, "data.options.image_size")
        samples = []
        for class_name, uri in rows:
            width, height = image_size if image_size is not None else probe_image_size(uri)
            samples.append(
                make_sample(
                    uri, split, one_hot([mapping[class_name]], len(labels)), name,
                    face_boxes=whole_image_box(width, height), width=width, height=height,
                )  # fmt: skip
            )
        result.splits[split] = samples
    return result

