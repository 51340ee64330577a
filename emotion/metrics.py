"""Evaluation metrics, in NumPy only: accuracy and confusion for single-label sets
(CAER-S, FER2013, RAF-DB), average precision for multi-label ones (EMOTIC), and the
mean absolute error of valence/arousal/dominance.

``evaluation_report`` turns a model's scores into the report that validation during
training and ``emotion eval`` both give; ``score_batches`` is the loop both run a model
through to get those scores.

Average precision follows scikit-learn's ``average_precision_score`` (the definition
used for EMOTIC): AP = sum over score thresholds of (R_n - R_{n-1}) * P_n, with tied
scores forming one threshold and no interpolation of precision.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np


def _labels_pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred must be 1-D of equal length, got shapes {y_true.shape} and {y_pred.shape}")
    if y_true.size == 0:
        raise ValueError("no samples: y_true and y_pred are empty")
    return y_true, y_pred


def accuracy(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    """Fraction of samples whose predicted class equals the true class."""
    y_true, y_pred = _labels_pair(y_true, y_pred)
    return float(np.mean(y_true == y_pred))


def _check_classes(name: str, values: np.ndarray, num_classes: int) -> None:
    if not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class indices, got dtype {values.dtype}")
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(f"{name} has class indices outside [0, {num_classes}): "
                         f"min {values.min()}, max {values.max()}")


def confusion_matrix(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                     num_classes: int) -> np.ndarray:
    """int64 [K, K]: entry (i, j) counts samples of true class i predicted as class j."""
    y_true, y_pred = _labels_pair(y_true, y_pred)
    _check_classes("y_true", y_true, num_classes)
    _check_classes("y_pred", y_pred, num_classes)
    counts = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def average_precision(y_true_binary: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the precision-recall curve, scikit-learn style; nan without positives."""
    y_true = np.asarray(y_true_binary)
    scores = np.asarray(scores, dtype=np.float64)
    if y_true.ndim != 1 or y_true.shape != scores.shape:
        raise ValueError(f"y_true_binary and scores must be 1-D of equal length, got {y_true.shape} and {scores.shape}")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true_binary must hold only 0/1 (or False/True)")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain nan or inf")
    y_true = y_true.astype(np.int64)
    if y_true.sum() == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    scores, y_true = scores[order], y_true[order]
    # Last index of each run of equal scores: one threshold per distinct score.
    threshold_ends = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    true_positives = np.cumsum(y_true)[threshold_ends]
    predicted_positives = threshold_ends + 1
    precision = true_positives / predicted_positives
    recall = true_positives / true_positives[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def mean_average_precision(y_true: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean over classes of per-class AP for multi-label targets.

    Args:
        y_true: [N, K] binary; scores: [N, K] real.

    Returns:
        (mAP over the classes that have positives, per-class AP [K] with nan for the others).
    """
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    if y_true.ndim != 2 or y_true.shape != scores.shape:
        raise ValueError(f"y_true and scores must both be [N, K], got {y_true.shape} and {scores.shape}")
    per_class = np.array([average_precision(y_true[:, k], scores[:, k]) for k in range(y_true.shape[1])])
    valid = ~np.isnan(per_class)
    mean = float(per_class[valid].mean()) if valid.any() else float("nan")
    return mean, per_class


def vad_error(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Mean absolute error per dimension (valence, arousal, dominance): [N, D] -> [D]."""
    true, pred = np.asarray(true, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    if true.ndim != 2 or true.shape != pred.shape or true.shape[0] == 0:
        raise ValueError(f"true and pred must both be non-empty [N, D], got {true.shape} and {pred.shape}")
    return np.abs(true - pred).mean(axis=0)


def classification_report(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                          labels: Sequence[str]) -> dict[str, Any]:
    """JSON-serialisable summary of single-label predictions.

    A negative ``y_pred`` marks a sample the model gave no prediction for (no face
    found, unreadable file): it counts as wrong.

    Returns:
        ``accuracy``: correct / samples; ``per_class``: {label: correct / samples of that
        class, or None when the class has no samples}; ``confusion``: list of K rows of K
        ints (rows true, columns predicted, both in ``labels`` order) over the samples
        with a prediction.
    """
    y_true, y_pred = _labels_pair(y_true, y_pred)
    k = len(labels)
    _check_classes("y_true", y_true, k)
    predicted = y_pred >= 0
    confusion = (confusion_matrix(y_true[predicted], y_pred[predicted], k) if predicted.any()
                 else np.zeros((k, k), dtype=np.int64))
    support = np.bincount(y_true, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.diag(confusion) / support
    return {
        "accuracy": accuracy(y_true, y_pred),
        "per_class": {label: (None if np.isnan(value) else float(value)) for label, value in zip(labels, recall)},
        "confusion": confusion.tolist(),
    }


def expected_calibration_error(scores: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of single-label ``scores`` [N, K] (probabilities)
    against class indices ``y_true`` [N] (Guo et al., 2017): the top score's gap to the
    accuracy of the faces it was given for, averaged over ``bins`` equal-width confidence
    bins weighted by their share of the faces. 0 is perfectly calibrated."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        return float("nan")
    return calibration_error(scores.max(axis=1), scores.argmax(axis=1) == np.asarray(y_true), bins)


def calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """``expected_calibration_error`` from each prediction's top score [N] and whether it
    was right [N]."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=bool)
    if len(confidence) == 0:
        return float("nan")
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    gap = 0.0
    for b in np.unique(which):
        members = which == b
        gap += members.sum() * abs(correct[members].mean() - confidence[members].mean())
    return float(gap / len(confidence))


def evaluation_report(scores: np.ndarray, targets: np.ndarray, labels: Sequence[str], multi_label: bool,
                      vad_true: np.ndarray | None = None, vad_pred: np.ndarray | None = None) -> dict[str, Any]:
    """The metrics of a model's scores against the targets: the one report of validation
    during training and of ``emotion eval``.

    Args:
        scores: [N, K] in ``labels`` order. A row holding NaN is a sample the model gave
            no prediction for: it counts as wrong (single-label) or ranks below every
            scored sample in each class (multi-label).
        targets: [N, K] multi-hot; for single-label sets the class is the arg-max.
        labels: the K class names.
        multi_label: average precision (True) or accuracy (False).
        vad_true, vad_pred: [N, 3] valence/arousal/dominance, NaN where unknown.

    Returns:
        ``n``; single-label: ``accuracy``, ``per_class`` (recall), ``mean_recall`` (their
        mean over the classes present), ``confusion`` (see ``classification_report``) and
        ``ece`` (``expected_calibration_error`` over the scored samples); multi-label: ``mAP`` and ``per_class_ap`` {label: AP,
        or None for a class without positives}; ``vad_mae`` (one error per dimension)
        when some sample has both true and predicted VAD.
    """
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets)
    if scores.shape != targets.shape or scores.ndim != 2 or len(scores) == 0 or scores.shape[1] != len(labels):
        raise ValueError(f"scores and targets must both be non-empty [N, {len(labels)}] (one column per label), "
                         f"got {scores.shape} and {targets.shape}")
    predicted = ~np.isnan(scores).any(axis=1)
    out: dict[str, Any] = {"n": int(len(scores))}
    if multi_label:
        lowest = scores[predicted].min() - 1.0 if predicted.any() else 0.0
        ranked = np.where(predicted[:, None], scores, lowest)
        mean_ap, per_class = mean_average_precision((targets > 0.5).astype(np.int64), ranked)
        out["mAP"] = mean_ap
        out["per_class_ap"] = {name: (None if np.isnan(v) else float(v)) for name, v in zip(labels, per_class)}
    else:
        y_true = np.nan_to_num(targets, nan=-1.0).argmax(axis=1)
        y_pred = np.where(predicted, np.nan_to_num(scores).argmax(axis=1), -1)
        out.update(classification_report(y_true, y_pred, list(labels)))
        recalls = [v for v in out["per_class"].values() if v is not None]
        out["mean_recall"] = float(np.mean(recalls)) if recalls else float("nan")
        out["ece"] = expected_calibration_error(scores[predicted], y_true[predicted])
    if vad_true is not None and vad_pred is not None:
        vad_true, vad_pred = np.asarray(vad_true, dtype=np.float64), np.asarray(vad_pred, dtype=np.float64)
        known = np.isfinite(vad_true).all(axis=1) & np.isfinite(vad_pred).all(axis=1)
        if known.any():
            out["vad_mae"] = [float(v) for v in vad_error(vad_true[known], vad_pred[known])]
    return out


def score_batches(predict: Callable[[Mapping[str, Any]], Mapping[str, Any]], batches: Iterable[Mapping[str, Any]],
                  num_labels: int, *, rank: int = 0, world_size: int = 1) -> dict[str, np.ndarray]:
    """Run ``predict`` over ``batches``; returns what ``evaluation_report`` reads.

    Each batch holds ``labels`` [B, K] (the targets) and optionally ``vad`` [B, 3];
    ``predict(batch)`` returns ``scores`` [B, K] (NaN rows: no prediction) and
    optionally ``vad`` [B, 3]. With ``world_size`` > 1 a rank scores only the batches
    with ``index % world_size == rank``; the caller gathers the ranks' results.

    Returns:
        ``scores`` and ``targets`` float32 [N, K]; ``vad_true`` and ``vad_pred`` float32
        [N, 3], NaN where unknown.
    """
    parts: dict[str, list[np.ndarray]] = {"scores": [], "targets": [], "vad_true": [], "vad_pred": []}
    for index, batch in enumerate(batches):
        if index % world_size != rank:
            continue
        targets = np.asarray(batch["labels"], dtype=np.float32)
        n = len(targets)
        out = predict(batch)
        scores = np.asarray(out["scores"], dtype=np.float32)
        if scores.shape != (n, num_labels):
            raise ValueError(f"predict returned shape {scores.shape} for a batch of {n} (expected {(n, num_labels)})")
        unknown = np.full((n, 3), np.nan, dtype=np.float32)
        parts["scores"].append(scores)
        parts["targets"].append(targets)
        parts["vad_true"].append(np.asarray(batch["vad"], np.float32).reshape(n, 3) if "vad" in batch else unknown)
        parts["vad_pred"].append(np.asarray(out["vad"], np.float32).reshape(n, 3) if "vad" in out else unknown)
    widths = {"scores": num_labels, "targets": num_labels, "vad_true": 3, "vad_pred": 3}
    return {key: np.concatenate(arrays) if arrays else np.zeros((0, widths[key]), np.float32)
            for key, arrays in parts.items()}


def evaluate_classifier(predict_fn: Callable[[Sequence[Any]], np.ndarray], images: Sequence[Any],
                        labels: Sequence[int] | np.ndarray, label_names: Sequence[str],
                        batch_size: int = 256) -> dict[str, Any]:
    """``evaluation_report`` of a single-label classifier given as a plain function:
    ``predict_fn(images[i:j])`` returns class scores [B, K]; ``labels`` are class indices."""
    labels = np.asarray(labels)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    _check_classes("labels", labels, len(label_names))
    targets = np.eye(len(label_names), dtype=np.float32)[labels]
    batches = ({"images": images[start:start + batch_size], "labels": targets[start:start + batch_size]}
               for start in range(0, len(images), batch_size))
    scored = score_batches(lambda batch: {"scores": predict_fn(batch["images"])}, batches, len(label_names))
    return evaluation_report(scored["scores"], scored["targets"], label_names, multi_label=False)
