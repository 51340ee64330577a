"""DSCT's evaluation protocol (as the DSCT paper evaluates), in NumPy.

**Recognition.** Each ground-truth person is matched to the predicted box with the
highest IoU, among *all* of the image's candidates (every subject query; pass
``min_score`` to restrict to confident ones), and that candidate's emotion scores are
the person's. Ties go to the higher person score (candidates are taken in score order).
A person whom no candidate overlaps (IoU 0, or no candidates) has no prediction: a NaN
row, which ``emotion.metrics.evaluation_report`` counts as wrong (accuracy) or ranks
below every scored person (AP). The report over all people is the project's usual one:
mean per-class AP for multi-label sets (EMOTIC), accuracy for single-label (CAER-S).

Using every query by default follows the protocol as described (the best-overlapping
box, whatever its score): recognition is scored apart from detection, which AP50 scores.

**Detection.** ``detection_ap50``: VOC-style AP of the person boxes at IoU 0.5. All
candidates of all images ranked by person score; each, in turn, takes the ground truth
it overlaps most in its image; it is a true positive if that IoU >= 0.5 and that person
was not taken by a higher-scored candidate, else a false positive (a duplicate is a
false positive). AP is the area under the precision envelope (all-point interpolation,
VOC 2010+).

Inputs: ``predictions``, one dict per image, as ``postprocess.postprocess`` gives:
``boxes`` [Q, 4] absolute (x1, y1, x2, y2), ``scores`` [Q], ``emotion_probs`` [Q, K]
(tensors or arrays). ``ground_truth``, one dict per image: ``boxes`` [N, 4] absolute
(x1, y1, x2, y2) in the same pixels, ``labels`` [N, K] multi-hot (N may be 0).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from emotion.boxes import box_iou
from emotion.metrics import evaluation_report


def _array(value: Any, dtype: type = np.float64) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def _boxes(value: Any) -> np.ndarray:
    return _array(value, np.float32).reshape(-1, 4)


def _ranked(prediction: Mapping[str, Any], min_score: float | None) -> np.ndarray:
    """Indices of an image's candidates with score >= min_score, highest score first."""
    scores = _array(prediction["scores"]).reshape(-1)
    order = np.argsort(-scores, kind="mergesort")
    if min_score is not None:
        order = order[scores[order] >= min_score]
    return order


def match_people(pred_boxes: Any, pred_scores: Any, gt_boxes: Any,
                 min_score: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For each ground-truth person, the candidate with the highest IoU.

    Args:
        pred_boxes: [Q, 4] xyxy; pred_scores: [Q]; gt_boxes: [N, 4] xyxy (same units).
        min_score: consider only candidates scoring at least this (None: all).

    Returns:
        (index int64 [N] into the candidates, -1 where none overlaps; IoU float32 [N]).
    """
    gt = _boxes(gt_boxes)
    order = _ranked({"scores": pred_scores}, min_score)
    index = np.full(len(gt), -1, dtype=np.int64)
    best = np.zeros(len(gt), dtype=np.float32)
    if len(gt) == 0 or len(order) == 0:
        return index, best
    iou = box_iou(gt, _boxes(pred_boxes)[order])  # [N, Q'] in score order
    column = iou.argmax(axis=1)  # first of equals = higher score
    best = iou[np.arange(len(gt)), column]
    index = np.where(best > 0, order[column], -1)
    return index.astype(np.int64), best.astype(np.float32)


def person_scores(predictions: Sequence[Mapping[str, Any]], ground_truth: Sequence[Mapping[str, Any]],
                  num_labels: int, min_score: float | None = None) -> dict[str, np.ndarray]:
    """Every ground-truth person's emotion scores under the DSCT protocol (module doc).

    Returns ``scores`` float64 [P, K] (NaN rows: no prediction), ``targets`` [P, K],
    ``iou`` [P] (of the matched candidate), ``image_index`` int64 [P].
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} predictions for {len(ground_truth)} images")
    scores, targets, ious, images = [], [], [], []
    for i, (pred, gt) in enumerate(zip(predictions, ground_truth)):
        gt_boxes = _boxes(gt["boxes"])
        labels = _array(gt["labels"]).reshape(len(gt_boxes), num_labels)
        index, iou = match_people(pred["boxes"], pred["scores"], gt_boxes, min_score)
        probs = _array(pred["emotion_probs"]).reshape(-1, num_labels)
        rows = np.full((len(gt_boxes), num_labels), np.nan)
        rows[index >= 0] = probs[index[index >= 0]]
        scores.append(rows)
        targets.append(labels)
        ious.append(iou)
        images.append(np.full(len(gt_boxes), i, dtype=np.int64))
    return {"scores": np.concatenate(scores) if scores else np.zeros((0, num_labels)),
            "targets": np.concatenate(targets) if targets else np.zeros((0, num_labels)),
            "iou": np.concatenate(ious) if ious else np.zeros(0, np.float32),
            "image_index": np.concatenate(images) if images else np.zeros(0, np.int64)}


def detection_matches(predictions: Sequence[Mapping[str, Any]], ground_truth: Sequence[Mapping[str, Any]],
                      iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, int]:
    """VOC matching of every candidate (module doc).

    Returns (scores [M] in descending order, true_positive bool [M] in that order,
    number of ground-truth people).
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} predictions for {len(ground_truth)} images")
    all_scores, all_tp = [], []
    num_gt = 0
    for pred, gt in zip(predictions, ground_truth):
        gt_boxes = _boxes(gt["boxes"])
        num_gt += len(gt_boxes)
        order = _ranked(pred, None)
        scores = _array(pred["scores"]).reshape(-1)[order]
        tp = np.zeros(len(order), dtype=bool)
        if len(gt_boxes) and len(order):
            iou = box_iou(_boxes(pred["boxes"])[order], gt_boxes)  # [Q, N]
            taken = np.zeros(len(gt_boxes), dtype=bool)
            for j, row in enumerate(iou):  # within an image, in score order
                k = int(row.argmax())
                if row[k] >= iou_threshold and not taken[k]:
                    tp[j] = taken[k] = True
        all_scores.append(scores)
        all_tp.append(tp)
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    tp = np.concatenate(all_tp) if all_tp else np.zeros(0, dtype=bool)
    order = np.argsort(-scores, kind="mergesort")
    return scores[order], tp[order], num_gt


def voc_average_precision(true_positive: np.ndarray, num_gt: int) -> float:
    """All-point interpolated AP of a ranked list of hits (VOC 2010+); nan without ground truth."""
    if num_gt == 0:
        return float("nan")
    tp = np.cumsum(np.asarray(true_positive, dtype=np.float64))
    fp = np.cumsum(1.0 - np.asarray(true_positive, dtype=np.float64))
    recall = np.concatenate(([0.0], tp / num_gt, [1.0]))
    precision = np.concatenate(([0.0], tp / np.maximum(tp + fp, 1e-12), [0.0]))
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # envelope
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def detection_ap50(predictions: Sequence[Mapping[str, Any]], ground_truth: Sequence[Mapping[str, Any]],
                   iou_threshold: float = 0.5) -> float:
    """Person-box AP at IoU ``iou_threshold`` over all images (module doc)."""
    _, tp, num_gt = detection_matches(predictions, ground_truth, iou_threshold)
    return voc_average_precision(tp, num_gt)


def dsct_report(predictions: Sequence[Mapping[str, Any]], ground_truth: Sequence[Mapping[str, Any]],
                labels: Sequence[str], multi_label: bool, min_score: float | None = None,
                iou_threshold: float = 0.5) -> dict[str, Any]:
    """The DSCT evaluation: ``emotion.metrics.evaluation_report`` over all ground-truth
    people (``mAP`` + ``per_class_ap``, or ``accuracy`` + ``per_class`` + ``confusion``;
    ``n`` people) plus ``ap50`` (detection), ``unmatched`` (people no candidate overlaps)
    and ``mean_iou`` (of each person's matched candidate)."""
    people = person_scores(predictions, ground_truth, len(labels), min_score)
    if len(people["scores"]) == 0:
        raise ValueError("no ground-truth people to evaluate")
    report = evaluation_report(people["scores"], people["targets"], labels, multi_label)
    report["ap50"] = detection_ap50(predictions, ground_truth, iou_threshold)
    report["unmatched"] = int(np.isnan(people["scores"]).any(axis=1).sum())
    report["mean_iou"] = float(people["iou"].mean())
    return report
