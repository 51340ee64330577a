"""Evaluate an emotion predictor on a labelled dataset (the ``emotion eval`` command)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from emotion import metrics, storage
from emotion.predictor import EmotionPredictor, decode_batch

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# Different datasets name the same category differently.
_SYNONYMS = {"happiness": "happy", "sadness": "sad", "anger": "angry", "surprised": "surprise",
             "fearful": "fear", "disgusted": "disgust"}


def canonical_label(name: str) -> str:
    key = name.strip().lower()
    return _SYNONYMS.get(key, key)


def list_image_folder(root: str, split: str | None = None, limit_per_class: int | None = None) -> tuple[list[str], list[str]]:
    """``root[/split]/<class>/*`` -> (image URIs, class names), sorted for determinism."""
    base = f"{root.rstrip('/')}/{split}" if split else root.rstrip("/")
    files = storage.list_files(base, suffixes=IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images under {base!r}; expected {base}/<class>/*.jpg")
    by_class: dict[str, list[str]] = {}
    for uri in files:
        # The class is the folder an image sits in (<root>/<class>/<image>).
        by_class.setdefault(uri.rsplit("/", 2)[-2], []).append(uri)
    paths, classes = [], []
    for name in sorted(by_class):
        chosen = sorted(by_class[name])[:limit_per_class] if limit_per_class else sorted(by_class[name])
        paths += chosen
        classes += [name] * len(chosen)
    return paths, classes


def predict_scores(predictor: EmotionPredictor, paths: Sequence[str], batch_size: int) -> np.ndarray:
    """Score of each image's most confident person ([N, K]; NaN rows where no face/error)."""
    k = len(predictor.model.labels)
    scores = np.full((len(paths), k), np.nan, dtype=np.float32)
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start:start + batch_size])
        batch = decode_batch(chunk, [storage.read_bytes(p) for p in chunk], max_side=1280, max_pixels=64_000_000)
        table = predictor(batch)
        first = table.filter(_first_person_mask(table)).to_pydict()
        row_of = {src: i for i, src in enumerate(chunk)}
        for src, row in zip(first["source"], first["scores"]):
            if row is not None:
                scores[start + row_of[src]] = row
    return scores


def _first_person_mask(table) -> "np.ndarray":
    person = table.column("person_index").to_numpy(zero_copy_only=False)
    return np.nan_to_num(person.astype(float), nan=0.0) == 0


def evaluate_image_folder(predictor: EmotionPredictor, root: str, split: str | None = None,
                          batch_size: int = 256, limit_per_class: int | None = None) -> dict:
    """Accuracy, per-class accuracy and confusion of a single-label model on a folder dataset."""
    paths, classes = list_image_folder(root, split, limit_per_class)
    model_labels = [canonical_label(x) for x in predictor.model.labels]
    unknown = sorted({c for c in classes if canonical_label(c) not in model_labels})
    if unknown:
        raise ValueError(f"dataset classes {unknown} are not in the model's label set {list(predictor.model.labels)}")
    y_true = np.array([model_labels.index(canonical_label(c)) for c in classes])
    started = time.perf_counter()
    scores = predict_scores(predictor, paths, batch_size)
    seconds = time.perf_counter() - started
    missing = np.isnan(scores).any(axis=1)
    if missing.all():
        raise RuntimeError(f"no image under {root!r} got a prediction (all failed to decode or had no face)")
    # Images without a prediction (unreadable, or no face found) count as wrong.
    report = metrics.classification_report(y_true[~missing], scores[~missing].argmax(axis=1),
                                           list(predictor.model.labels))
    report["accuracy"] = float((scores[~missing].argmax(axis=1) == y_true[~missing]).sum() / len(y_true))
    report.update({
        "n": int(len(paths)),
        "no_prediction": int(missing.sum()),
        "images_per_second": round(len(paths) / seconds, 2),
        "root": root,
    })
    return report
