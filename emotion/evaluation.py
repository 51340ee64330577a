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


def _read_files(paths: Sequence[str]) -> tuple[list[bytes | None], list[str | None]]:
    """(each file's bytes, why it could not be read): a file gone since the listing or
    one we may not read becomes that image's error, as a decode failure does, instead of
    ending the whole evaluation."""
    payloads: list[bytes | None] = []
    errors: list[str | None] = []
    for path in paths:
        try:
            payloads.append(storage.read_bytes(path))
            errors.append(None)
        except Exception as exc:  # noqa: BLE001 - any read failure is one image's error (as in tagging)
            payloads.append(None)
            errors.append(f"read failed: {type(exc).__name__}: {exc}")
    return payloads, errors


def predict_scores(predictor: EmotionPredictor, paths: Sequence[str], batch_size: int) -> np.ndarray:
    """Score of each image's most confident person ([N, K]; NaN rows where no face/error)."""
    k = len(predictor.model.labels)
    scores = np.full((len(paths), k), np.nan, dtype=np.float32)
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start:start + batch_size])
        payloads, read_errors = _read_files(chunk)
        batch = decode_batch(chunk, payloads, max_side=1280, max_pixels=64_000_000, read_errors=read_errors)
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


# -- datasets with annotated boxes (any emotion.data format, or prepared Parquet) --------
def _dataset_samples(data: Mapping, split: str) -> tuple[tuple[str, ...], list[dict]]:
    """(dataset labels, samples of ``split``) for a data config (``format``, ``root``)."""
    fmt, root = str(data["format"]), str(data["root"])
    if fmt == "prepared":
        from emotion.data.prepare import prepared_labels, read_prepared
        from emotion.data.records import row_to_sample

        table = read_prepared(root, split)
        _, labels = prepared_labels(table)
        return labels, [row_to_sample(row, len(labels)) for row in table.to_pylist()]
    from emotion.data import read_dataset

    options = {**dict(data.get("options") or {}), "splits": [split]}
    sample_set = read_dataset(fmt, root, **options)
    return tuple(sample_set.labels), list(sample_set.samples(split))


def evaluate_dataset(model, data: Mapping, split: str, batch_size: int = 64, limit: int | None = None) -> dict:
    """Metrics of ``model`` (an EmotionModel) on the annotated people of one split.

    People are cropped from their annotated boxes exactly as for training
    (``emotion.training.rows``), so no detector runs. Single-label sets give accuracy,
    per-class recall and the confusion matrix; multi-label sets give mAP and per-class
    AP; VAD error is added when the model predicts ``vad`` and the data has it.
    """
    from emotion.labels import remap_scores
    from emotion.training.families import classification_metrics
    from emotion.training.rows import CropSpec, RowCounts, person_rows

    data_labels, samples = _dataset_samples(data, split)
    if limit:
        samples = samples[: int(limit)]
    model_labels = [canonical_label(x) for x in model.labels]
    present = np.zeros(len(data_labels), dtype=bool)
    for sample in samples:
        present |= np.asarray(sample["labels"]).reshape(-1, len(data_labels)).max(axis=0, initial=0) > 0
    unknown = sorted(x for x, seen in zip(data_labels, present) if seen and canonical_label(x) not in model_labels)
    if unknown:
        raise ValueError(f"dataset classes {unknown} are not in the model's label set {list(model.labels)}")
    spec = CropSpec(levels=tuple(model.input_levels), size=int(model.input_size),
                    head_expand=float(data.get("head_expand", 1.0)), num_labels=len(data_labels),
                    multi_label=bool(model.multi_label))
    counts = RowCounts()
    scores, targets, vad_true, vad_pred = [], [], [], []
    started = time.perf_counter()
    for start in range(0, len(samples), batch_size):
        rows = person_rows(samples[start:start + batch_size], spec, counts)
        if len(rows["labels"]) == 0:
            continue
        out = model.predict({level: rows[f"crop_{level}"] for level in model.input_levels})
        scores.append(np.asarray(out["scores"], dtype=np.float32))
        targets.append(remap_scores(rows["labels"], list(data_labels), list(model.labels)))
        vad_true.append(rows["vad"])
        vad_pred.append(np.asarray(out["vad"], np.float32) if "vad" in out else np.full_like(rows["vad"], np.nan))
    if not scores:
        raise RuntimeError(f"split {split!r} of {data['root']!r} has no person the model can score ({counts.skipped})")
    seconds = time.perf_counter() - started
    report = classification_metrics(np.concatenate(scores), np.concatenate(targets), tuple(model.labels),
                                    bool(model.multi_label), np.concatenate(vad_true), np.concatenate(vad_pred))
    report.pop("score", None)
    report.update({"skipped": counts.skipped, "images": len(samples), "split": split, "root": str(data["root"]),
                   "people_per_second": round(report["n"] / max(seconds, 1e-9), 2)})
    return report


def plot_confusion(confusion: Sequence[Sequence[int]], labels: Sequence[str], title: str = "") -> bytes:
    """PNG bytes of a confusion matrix (rows true, columns predicted), row-normalised
    colours with the counts written in each cell."""
    import io

    import matplotlib

    matplotlib.use("Agg")  # no display: render to memory only
    import matplotlib.pyplot as plt

    counts = np.asarray(confusion, dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.nan_to_num(counts / counts.sum(axis=1, keepdims=True))
    k = len(labels)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.5 + 0.7 * k), max(3.5, 1.2 + 0.6 * k)))
    ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if rates[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()
