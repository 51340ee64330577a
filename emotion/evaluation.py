"""Evaluate an emotion model on a labelled dataset (the ``emotion eval`` command).

Both kinds of dataset run through the loop and the report that validation during
training uses (``metrics.score_batches``, ``metrics.evaluation_report``):

* class folders (``evaluate_image_folder``): every image through the predictor, detector
  included, and the scores of its most confident person;
* annotated people (``evaluate_dataset``): crops cut from the dataset's boxes as for
  training (``emotion.training.rows``), scored by ``predict_rows`` exactly as validation
  scores them;
* whole images (``evaluate_scenes``): for models that find people themselves (DSCT), or
  any predictor judged end to end: every image through the predictor, each annotated
  person matched to the predicted body box with the highest IoU (the DSCT protocol,
  ``emotion.models.dsct.evaluation``), plus the boxes' detection AP50.

Dataset classes are matched to the model's labels by name, synonyms included
(``emotion.labels``: a ``happy`` folder is a model's ``Happiness``).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping, Sequence

import numpy as np

from emotion import metrics, storage
from emotion.images import IMAGE_SUFFIXES
from emotion.labels import remap, remap_scores
from emotion.predictor import EmotionPredictor
from emotion.schema import first_row_mask, split_rows
from emotion.score_weights import weighted_scores
from emotion.settings import DataSettings, reader_options
from emotion.tagging.reads import read_source

log = logging.getLogger(__name__)


def predict_rows(model: Any, batch: Mapping[str, np.ndarray]) -> Mapping[str, Any]:
    """``model.predict`` (an EmotionModel) on the crops of a batch of training rows
    (``crop_<level>`` columns, ``emotion.training.rows``)."""
    return model.predict({level: batch[f"crop_{level}"] for level in model.input_levels})


def _require_known(classes: Sequence[str], labels: Sequence[str]) -> None:
    """Raise naming the dataset classes that ``labels`` lacks (synonyms match)."""
    names = sorted(set(classes))
    unknown = [name for name, at in zip(names, remap(names, labels)) if at < 0]
    if unknown:
        raise ValueError(f"dataset classes {unknown} are not in the model's label set {list(labels)}")


def _class_targets(classes: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """One-hot [N, K] in ``labels`` order of each sample's class name."""
    _require_known(classes, labels)
    names = sorted(set(classes))
    at = dict(zip(names, remap(names, labels).tolist()))
    return np.eye(len(labels), dtype=np.float32)[[at[name] for name in classes]]


# -- class folders, through the predictor --------------------------------------------------
def list_image_folder(root: str, split: str | None = None, limit_per_class: int | None = None) -> tuple[list[str], list[str]]:
    """``root[/split]/<class>/*`` -> (image URIs, class names), sorted for determinism."""
    base = f"{root.rstrip('/')}/{split}" if split else root.rstrip("/")
    files = storage.list_files(base, suffixes=IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images under {base!r}; expected {base}/<class>/<image> "
                                f"(looked for {', '.join(IMAGE_SUFFIXES)})")
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
    read = [read_source(path) for path in paths]
    return [data for data, _ in read], [error for _, error in read]


def first_person_scores(predictor: EmotionPredictor, paths: Sequence[str]) -> np.ndarray:
    """Scores [N, K] of each image's most confident person; a NaN row where the image
    has none (no face found, unreadable or undecodable file)."""
    paths = list(paths)
    payloads, read_errors = _read_files(paths)
    return first_person_scores_of(predictor, paths, payloads, read_errors)


def first_person_scores_of(predictor: EmotionPredictor, sources: Sequence[str], payloads: Sequence[bytes | None],
                           read_errors: Sequence[str | None] | None = None) -> np.ndarray:
    """``first_person_scores`` of images already read: ``payloads`` the bytes of
    ``sources`` (distinct names), None with its ``read_errors`` entry for one not read."""
    sources = list(sources)
    scores = np.full((len(sources), len(predictor.spec.labels)), np.nan, dtype=np.float32)
    table = predictor(predictor.decode(sources, payloads, read_errors=read_errors))
    first = table.filter(first_row_mask(table)).to_pydict()
    row_of = {src: i for i, src in enumerate(sources)}
    for src, row in zip(first["source"], first["scores"]):
        if row is not None:
            scores[row_of[src]] = row
    return scores


def evaluate_image_folder(predictor: EmotionPredictor, root: str, split: str | None = None,
                          batch_size: int = 256, limit_per_class: int | None = None) -> dict:
    """``metrics.evaluation_report`` of the predictor on a class-folder dataset, plus
    ``no_prediction`` (images without a person or unreadable: they count as wrong),
    ``images_per_second`` and ``root``. A folder holds one class per image, so the
    metrics are single-label (accuracy, per-class accuracy, confusion)."""
    paths, classes = list_image_folder(root, split, limit_per_class)
    labels = list(predictor.spec.labels)
    keep, left_out = _leave_out_unknown([[name] for name in classes], labels)
    paths = [path for path, kept in zip(paths, keep) if kept]
    classes = [name for name, kept in zip(classes, keep) if kept]
    if not paths:
        raise ValueError(f"no class folder under {root!r} is in the model's label set {labels} "
                         f"(folders: {sorted(left_out)})")
    targets = _class_targets(classes, labels)
    batches = ({"paths": paths[start:start + batch_size], "labels": targets[start:start + batch_size]}
               for start in range(0, len(paths), batch_size))
    started = time.perf_counter()
    scored = metrics.score_batches(lambda batch: {"scores": first_person_scores(predictor, batch["paths"])},
                                   batches, len(labels))
    seconds = time.perf_counter() - started
    missing = int(np.isnan(scored["scores"]).any(axis=1).sum())
    if missing == len(paths):
        raise RuntimeError(f"no image under {root!r} got a prediction (all failed to decode or had no face)")
    report = metrics.evaluation_report(scored["scores"], scored["targets"], labels, multi_label=False)
    report.update({"no_prediction": missing, "left_out_classes": left_out,
                   "images_per_second": round(len(paths) / max(seconds, 1e-9), 2), "root": root})
    return report


# -- datasets with annotated boxes (any emotion.data format, or prepared Parquet) --------
def _dataset_samples(data: DataSettings, split: str) -> tuple[tuple[str, ...], list[dict]]:
    """(dataset labels, samples of ``split``) of the ``data`` group (``format``, ``root``,
    the format's reader ``options``)."""
    fmt, root = data.format, data.root
    if fmt == "prepared":
        from emotion.data.prepare import prepared_labels, read_prepared
        from emotion.data.records import row_to_sample

        table = read_prepared(root, split)
        _, labels = prepared_labels(table)
        return labels, [row_to_sample(row, len(labels)) for row in table.to_pylist()]
    from emotion.data import read_dataset

    options = {**reader_options(data), "splits": [split]}
    sample_set = read_dataset(fmt, root, **options)
    return tuple(sample_set.labels), list(sample_set.samples(split))


def evaluate_dataset(model, data: DataSettings, split: str, *, max_side: int, batch_size: int = 64,
                     limit: int | None = None, score_weights: np.ndarray | None = None) -> dict:
    """``metrics.evaluation_report`` of ``model`` (an EmotionModel) on the annotated people
    of one split, plus ``skipped`` (people without the boxes the model needs), ``images``,
    ``split``, ``root`` and ``people_per_second``. ``score_weights`` [K] (``emotion.score_weights``)
    weight the scores as the predictor does.

    People are cropped from their annotated boxes exactly as for training (images shrunk
    to ``max_side`` first, as the predictor does), so no detector runs; the metrics are
    multi-label ones when the model is multi-label.
    """
    from emotion.training.rows import RowCounts, build_crop_spec, person_rows

    data_labels, samples = _dataset_samples(data, split)
    if limit:
        samples = samples[: int(limit)]
    labels = list(model.labels)
    left_out: dict[str, int] = {}
    if not model.multi_label:
        names = [[data_labels[int(row.argmax())] for row in np.asarray(sample["labels"]).reshape(-1, len(data_labels))
                  if row.max() > 0] for sample in samples]  # each person's class
        keep, left_out = _leave_out_unknown(names, labels)
        samples = [sample for sample, kept in zip(samples, keep) if kept]
    present = np.zeros(len(data_labels), dtype=bool)
    for sample in samples:
        present |= np.asarray(sample["labels"]).reshape(-1, len(data_labels)).max(axis=0, initial=0) > 0
    _require_known([name for name, seen in zip(data_labels, present) if seen], labels)
    spec = build_crop_spec(model, data.head_expand, max_side)
    counts = RowCounts()

    def row_batches():
        for start in range(0, len(samples), batch_size):
            rows = person_rows(samples[start:start + batch_size], spec, counts, num_labels=len(data_labels),
                               multi_label=bool(model.multi_label))
            if len(rows["labels"]):
                rows["labels"] = remap_scores(rows["labels"], list(data_labels), labels)
                yield rows

    def predict(batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
        outputs = dict(predict_rows(model, batch))
        outputs["scores"] = weighted_scores(outputs["scores"], score_weights)
        return outputs

    started = time.perf_counter()
    scored = metrics.score_batches(predict, row_batches(), len(labels))
    seconds = time.perf_counter() - started
    if len(scored["scores"]) == 0:
        raise RuntimeError(f"split {split!r} of {data.root!r} has no person the model can score ({counts.skipped})")
    report = metrics.evaluation_report(scored["scores"], scored["targets"], labels, bool(model.multi_label),
                                       scored["vad_true"], scored["vad_pred"])
    report.update({"skipped": counts.skipped, "left_out_classes": left_out, "images": len(samples), "split": split,
                   "root": data.root, "people_per_second": round(report["n"] / max(seconds, 1e-9), 2)})
    return report


def _leave_out_unknown(names: Sequence[Sequence[str]], labels: Sequence[str]) -> tuple[list[bool], dict[str, int]]:
    """Single-label data scored by a model with another label set (the 7-class
    mini-Xception on FER+'s 8): which items to keep (every class they are labelled with is
    one the model has, synonyms matched), and how many were left out per class the model
    lacks, rather than scoring them as certain errors. ``names``: each item's class names."""
    known_names = sorted({name for item in names for name in item})
    known = dict(zip(known_names, (remap(known_names, list(labels)) >= 0).tolist()))
    keep, left_out = [], {}
    for item in names:
        missing = [name for name in item if not known[name]]
        for name in missing:
            left_out[name] = left_out.get(name, 0) + 1
        keep.append(not missing)
    if left_out:
        log.warning("left out %s: the model's label set %s has no such class", left_out, list(labels))
    return keep, left_out


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


# -- whole images, people found by the predictor (the DSCT protocol) -----------------------
LEVEL_KEYS = ("head", "body", "context")


def image_predictions(tables: Sequence[Any], num_labels: int) -> dict[str, list[dict[str, np.ndarray]]]:
    """Per-image output tables (``EmotionPredictor.predict_images``) -> per image the
    found people's ``boxes`` (body boxes, original pixels), ``scores`` (detector or person
    score) and ``emotion_probs``: under ``"scores"`` the model's output, and under each
    level name that level's own scores where every row has them (CocoER's levels)."""
    out: dict[str, list[dict[str, np.ndarray]]] = {"scores": [], **{level: [] for level in LEVEL_KEYS}}
    for table in tables:
        rows = [r for r in table.to_pylist() if r["person_index"] is not None]
        boxes = np.array([r["body_box"] for r in rows], np.float64).reshape(-1, 4)
        scores = np.array([r["detector_score"] for r in rows], np.float64)
        emotion = np.array([r["scores"] for r in rows], np.float64).reshape(-1, num_labels)
        out["scores"].append({"boxes": boxes, "scores": scores, "emotion_probs": emotion})
        for level in LEVEL_KEYS:
            values = [(r["level_scores"] or {}).get(level) for r in rows]
            if all(v is not None for v in values):
                out[level].append({"boxes": boxes, "scores": scores,
                                   "emotion_probs": np.array(values, np.float64).reshape(-1, num_labels)})
    return {key: value for key, value in out.items() if len(value) == len(tables)}


def top1_accuracy(scores: np.ndarray, targets: np.ndarray) -> float:
    """Share of people whose highest-scoring class is one of theirs; an unscored (NaN) row
    counts as wrong."""
    scored = ~np.isnan(scores).any(axis=1)
    hit = np.zeros(len(scores), dtype=bool)
    if scored.any():
        hit[scored] = targets[scored, np.argmax(scores[scored], axis=1)] > 0
    return float(hit.mean()) if len(hit) else 0.0


def evaluate_scenes(predictor: EmotionPredictor, data: DataSettings, split: str, *, batch_size: int = 16,
                    limit: int | None = None, levels: bool = False) -> dict:
    """End-to-end report of ``predictor`` on the annotated images of one split: the
    DSCT protocol's ``mAP`` / ``accuracy`` over every annotated person (a person no
    predicted box overlaps counts as wrong), ``top1_accuracy`` (multi-label sets with one
    true class per person), ``ap50`` of the predicted body boxes, ``images``,
    ``images_per_second``. With ``levels``, ``level_reports`` holds the same numbers for
    each level's own scores where the model gives them (CocoER)."""
    from emotion.models.dsct.evaluation import dsct_report, person_scores

    data_labels, samples = _dataset_samples(data, split)
    if limit:
        samples = samples[: int(limit)]
    labels = list(predictor.spec.labels)
    _require_known(list(data_labels), labels)
    skipped: dict[str, int] = {}
    truth = [scene_truth(sample, list(data_labels), labels, bool(predictor.spec.multi_label), skipped)
             for sample in samples]
    if not any(len(t["boxes"]) for t in truth):
        raise ValueError(f"split {split!r} of {data.root!r} has no person with a body or face box: "
                         f"the whole-image protocol needs them ({skipped})")
    tables = []
    read_failures = 0
    started = time.perf_counter()
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        payloads, errors = _read_files([s["image_uri"] for s in chunk])
        read_failures += sum(e is not None for e in errors)
        people = predictor.detect(predictor.decode([s["image_uri"] for s in chunk], payloads, read_errors=errors))
        tables += split_rows(predictor.recognize(people), people["image_index"], len(chunk))
    seconds = time.perf_counter() - started
    predictions = image_predictions(tables, len(labels))

    def one(preds: list[dict[str, np.ndarray]]) -> dict:
        report = dsct_report(preds, truth, labels, bool(predictor.spec.multi_label))
        people = person_scores(preds, truth, len(labels))
        report["top1_accuracy"] = top1_accuracy(people["scores"], people["targets"])
        return report

    report = one(predictions["scores"])
    if levels:
        report["level_reports"] = {level: {k: v for k, v in one(predictions[level]).items() if k != "confusion"}
                                   for level in LEVEL_KEYS if level in predictions}
    report.update({"images": len(samples), "split": split, "root": data.root, "skipped": skipped,
                   "images_not_read": read_failures,
                   "images_per_second": round(len(samples) / max(seconds, 1e-9), 2), "protocol": "dsct"})
    return report


def scene_truth(sample: Mapping[str, Any], data_labels: Sequence[str], labels: Sequence[str], multi_label: bool,
                skipped: dict[str, int]) -> dict[str, np.ndarray]:
    """One image's annotated people as the whole-image protocol scores them, by training's
    rules (``emotion.training.image_rows``): ``boxes`` [n, 4] body boxes in original
    pixels (derived from the face where unknown), ``labels`` [n, K] in ``labels``' order.
    People with neither box, or single-label people without a class, are counted in
    ``skipped`` and left out."""
    from emotion.boxes import usable_people
    from emotion.data.records import probe_image_size

    targets = np.asarray(sample["labels"], np.float32).reshape(len(sample["labels"]), -1)

    def image_hw() -> tuple[int, int]:
        width, height = int(sample.get("width", -1)), int(sample.get("height", -1))
        if width <= 0 or height <= 0:
            width, height = probe_image_size(sample["image_uri"])
        return height, width

    keep, bodies, reasons = usable_people(targets, np.asarray(sample["face_boxes"], np.float64),
                                          np.asarray(sample["person_boxes"], np.float64), image_hw,
                                          multi_label=multi_label)
    for reason in reasons:
        skipped[reason] = skipped.get(reason, 0) + 1
    return {"boxes": bodies[keep], "labels": remap_scores(targets[keep], list(data_labels), list(labels))}
