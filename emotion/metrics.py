"""Evaluation metrics, in NumPy only: accuracy and confusion for single-label sets
(CAER-S, FER2013, RAF-DB), average precision for multi-label ones (EMOTIC), and the
mean absolute error of valence/arousal/dominance.

Average precision follows scikit-learn's ``average_precision_score`` (the definition
used for EMOTIC): AP = sum over score thresholds of (R_n - R_{n-1}) * P_n, with tied
scores forming one threshold and no interpolation of precision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


def confusion_matrix(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                     num_classes: int) -> np.ndarray:
    """int64 [K, K]: entry (i, j) counts samples of true class i predicted as class j."""
    y_true, y_pred = _labels_pair(y_true, y_pred)
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        if not np.issubdtype(values.dtype, np.integer):
            raise TypeError(f"{name} must hold integer class indices, got dtype {values.dtype}")
        if values.min() < 0 or values.max() >= num_classes:
            raise ValueError(f"{name} has class indices outside [0, {num_classes}): "
                             f"min {values.min()}, max {values.max()}")
    counts = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def per_class_accuracy(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                       labels: Sequence[str]) -> dict[str, float]:
    """Recall of each class, keyed by name: correct / samples of that class (nan if none)."""
    confusion = confusion_matrix(y_true, y_pred, len(labels))
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.diag(confusion) / support
    return {label: float(value) for label, value in zip(labels, recall)}


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

    Returns:
        ``accuracy``: float; ``per_class``: {label: recall, or None when the class has
        no samples}; ``confusion``: list of K rows of K ints (rows true, columns
        predicted, both in ``labels`` order).
    """
    confusion = confusion_matrix(y_true, y_pred, len(labels))
    recalls = per_class_accuracy(y_true, y_pred, labels)
    return {
        "accuracy": accuracy(y_true, y_pred),
        "per_class": {label: (None if np.isnan(value) else value) for label, value in recalls.items()},
        "confusion": confusion.tolist(),
    }


def evaluate_classifier(predict_fn: Callable[[Sequence[Any]], np.ndarray], images: Sequence[Any],
                        labels: Sequence[int] | np.ndarray, label_names: Sequence[str],
                        batch_size: int = 256) -> dict[str, Any]:
    """Run ``predict_fn`` over ``images`` in batches and report against ``labels``.

    ``predict_fn(batch)`` returns class scores [B, K] (arg-maxed here) or class
    indices [B]. Returns ``classification_report``.
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    predictions = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        output = np.asarray(predict_fn(batch))
        if output.ndim == 2:
            output = output.argmax(axis=1)
        if output.shape != (len(batch),):
            raise ValueError(f"predict_fn returned shape {output.shape} for a batch of {len(batch)}")
        predictions.append(output)
    return classification_report(np.asarray(labels), np.concatenate(predictions), label_names)
