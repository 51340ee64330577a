"""Several datasets trained as one: each source's labels placed in one label space.

A training job over several face datasets (``data: faces``) names them under
``data.sources``; each is an ordinary dataset config (``format``, ``root``, splits,
reader ``options``) plus a sampling ``weight``. The job's label space is one label set
(FER+'s 8 classes); a source's classes are placed in it by name (``canonical_name``:
``angry`` = ``anger``).

A class the source does not have (FER2013's 7 classes have no ``contempt``) is NaN in its
training rows: the loss leaves that class out of the row's softmax
(``emotion.training.targets``), so the row never says "not contempt". Validation rows
keep 0 there: a face of a 7-class set that the model calls ``contempt`` is wrong.

``weight`` is how many times a source's training rows appear in one epoch: 2.0 twice,
0.5 a fixed half (drawn once per run from the seed), 0 never (a source scored on its
``val_split`` only: a held-out dataset). ``select`` says whether a source's validation
split counts toward the score the best checkpoint is chosen by: a held-out dataset that
should stay unseen by every choice made in training is scored with ``select: false``.

``folds`` (``{count: K, held_out: i}``) cross-validates a source that has one labelled
split only (SFEW's train): its ``train_split`` is cut into K folds, stratified by class and
fixed by each image's class and file name (the same folds in every run, on every machine);
fold ``i`` is the source's validation set and the other K - 1 are its training rows. With
``weight: 0`` the held-out fold is scored alone, so a run without the source scores the very
faces a run with it does. K runs, one per ``held_out``, give the cross-validated score.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import hashlib
import os

import numpy as np

from emotion.data.records import class_indices
from emotion.labels import canonical_name
from emotion.settings import SourceData


def fold_numbers(samples: Sequence[Mapping[str, Any]], count: int) -> np.ndarray:
    """int64 [N]: the fold of each single-label sample. Within each class the samples are
    ordered by a hash of their class and file name and dealt round-robin, so every fold
    holds each class's share and a sample's fold depends on nothing but the data."""
    classes = [int(class_indices(np.asarray(s["labels"]))[0]) for s in samples]
    keys = [hashlib.sha1(f"{c}/{os.path.basename(s['image_uri'])}".encode()).hexdigest()
            for c, s in zip(classes, samples)]
    out = np.empty(len(samples), dtype=np.int64)
    for c in sorted(set(classes)):
        members = sorted((i for i in range(len(samples)) if classes[i] == c), key=lambda i: (keys[i], i))
        out[members] = np.arange(len(members)) % count
    return out


def label_positions(source_labels: Sequence[str], labels: Sequence[str], source: str) -> np.ndarray:
    """int64 [k]: where each of a source's k classes sits among the job's ``labels``; a
    class with no place there is an error naming the source."""
    index = {canonical_name(name): i for i, name in enumerate(labels)}
    positions = []
    for name in source_labels:
        if canonical_name(name) not in index:
            raise ValueError(f"data.sources.{source}: class {name!r} is not in the label space {list(labels)}")
        positions.append(index[canonical_name(name)])
    return np.asarray(positions, dtype=np.int64)


def to_label_space(rows: np.ndarray, positions: np.ndarray, num_labels: int, missing: float) -> np.ndarray:
    """float32 [N, k] label rows of a source -> [N, K] rows of the job's label space, with
    ``missing`` (NaN for training, 0 for validation) at the classes the source lacks."""
    rows = np.asarray(rows, dtype=np.float32).reshape(len(rows), len(positions))
    out = np.full((len(rows), num_labels), missing, dtype=np.float32)
    out[:, positions] = rows
    return out


def repeat_plan(count: int, weight: float, seed: int) -> np.ndarray:
    """Row indices of one epoch of a source with ``count`` rows at sampling ``weight``:
    ``floor(weight)`` copies of every row and a seeded draw of the fraction left."""
    whole = int(np.floor(weight))
    extra = int(round((weight - whole) * count))
    drawn = np.random.default_rng(seed).permutation(count)[:extra]
    return np.concatenate([np.tile(np.arange(count), whole), np.sort(drawn)]).astype(np.int64)


def source_samples(name: str, source: SourceData, labels: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """``{"train": [...], "val": [...]}``: the rows of source ``name`` (``data.sources.<name>``,
    checked when the config was parsed) it trains on (when trained) and is
    scored on (its val_split or held-out fold), its labels placed in the job's label space
    (NaN at its missing classes in the training rows, 0 in the validation rows)."""
    from emotion.data import read_dataset

    read_train = source.trained or source.folds is not None
    splits = [s for s in (source.train_split if read_train else None, source.val_split) if s]
    sample_set = read_dataset(source.format, source.root, **{**source.options, "splits": sorted(set(splits))})
    positions = label_positions(sample_set.labels, labels, name)
    by_split: dict[str, list[dict[str, Any]]] = {}
    for split in splits:
        by_split[split] = [s for s in sample_set.samples() if s["split"] == split]
        if not by_split[split]:
            raise ValueError(f"data.sources.{name}: split {split!r} has no images under {source.root}")
    roles: dict[str, list[dict[str, Any]]] = {}
    if source.folds is not None:
        rows = by_split[source.train_split]
        fold = fold_numbers(rows, source.folds.count)
        roles["val"] = [r for r, f in zip(rows, fold) if f == source.folds.held_out]
        if source.trained:
            roles["train"] = [r for r, f in zip(rows, fold) if f != source.folds.held_out]
    else:
        if source.trained:
            roles["train"] = by_split[source.train_split]
        if source.val_split:
            roles["val"] = by_split[source.val_split]
    return {role: [{**s, "labels": to_label_space(s["labels"], positions, len(labels),
                                                  float("nan") if role == "train" else 0.0)} for s in rows]
            for role, rows in roles.items()}
