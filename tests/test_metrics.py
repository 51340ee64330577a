"""Metrics against hand-computed cases (and scikit-learn when it happens to be installed)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from emotion.metrics import (
    accuracy,
    average_precision,
    classification_report,
    confusion_matrix,
    evaluate_classifier,
    evaluation_report,
    mean_average_precision,
    score_batches,
    vad_error,
)

pytestmark = pytest.mark.unit

LABELS = ("a", "b", "c")


def test_accuracy_and_confusion():
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 0, 2]
    assert accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    assert confusion_matrix(y_true, y_pred, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_classification_report_is_strict_json():
    # per_class is each class's recall; None for a class without samples (c).
    report = classification_report(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), LABELS)
    assert set(report) == {"accuracy", "per_class", "confusion"}
    assert report["per_class"] == {"a": 0.5, "b": 1.0, "c": None}
    assert report["confusion"] == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    assert json.loads(json.dumps(report, allow_nan=False)) == report


@pytest.mark.parametrize("y_true, scores, expected", [
    # thresholds .9/.8/.7/.1 -> (P, R) = (1, .5), (.5, .5), (2/3, 1), (.5, 1): .5 * 1 + .5 * 2/3
    ([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1], 0.5 + 1 / 3),
    ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.5 + 1 / 3),  # scikit-learn's documented example
    ([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.1], 2 / 3),  # ties form one threshold: P = 2/3 at R = 1
    ([0, 0, 1], [0.9, 0.8, 0.1], 1 / 3),  # the only positive ranked last
    ([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1], 1.0),
    ([1, 1, 1], [0.3, 0.2, 0.1], 1.0),
])
def test_average_precision_hand_computed(y_true, scores, expected):
    assert average_precision(y_true, scores) == pytest.approx(expected, abs=1e-12)


def test_average_precision_nan_without_positives():
    assert math.isnan(average_precision([0, 0, 0], [0.1, 0.5, 0.9]))


def test_mean_average_precision_skips_classes_without_positives():
    y_true = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]])
    scores = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.3], [0.4, 0.7, 0.3], [0.6, 0.2, 0.3]])
    mean, per_class = mean_average_precision(y_true, scores)
    # class a: ranking .9(1) .6(0) .4(1) .2(0) -> .5 + .5 * 2/3; class b: .8(1) .7(0) .2(1) .1(0) -> same
    assert per_class[:2] == pytest.approx([0.5 + 1 / 3, 0.5 + 1 / 3]) and math.isnan(per_class[2])
    assert mean == pytest.approx(0.5 + 1 / 3)


def test_average_precision_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    for _ in range(20):
        y_true = rng.integers(0, 2, size=50)
        scores = np.round(rng.random(50), 1)  # rounding makes many ties
        assert average_precision(y_true, scores) == pytest.approx(
            sklearn_metrics.average_precision_score(y_true, scores), abs=1e-12)


def test_vad_error_per_dimension():
    true = np.array([[5.0, 5.0, 5.0], [1.0, 2.0, 3.0]])
    pred = np.array([[6.0, 5.0, 3.0], [1.0, 4.0, 3.0]])
    np.testing.assert_allclose(vad_error(true, pred), [0.5, 1.0, 1.0])


def test_classification_report_counts_missing_predictions_as_wrong():
    # y_pred -1: no prediction. Accuracy and recall count it wrong; the confusion matrix
    # holds only the samples with a prediction.
    report = classification_report(np.array([0, 0, 1, 1]), np.array([0, -1, 1, -1]), LABELS)
    assert report["accuracy"] == 0.5
    assert report["per_class"] == {"a": 0.5, "b": 0.5, "c": None}
    assert report["confusion"] == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_evaluation_report_single_label():
    scores = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [np.nan] * 3])
    targets = np.eye(3)[[0, 1, 1, 2]]
    report = evaluation_report(scores, targets, LABELS, multi_label=False)
    assert report["n"] == 4 and report["accuracy"] == 0.5  # the NaN row (no prediction) is wrong
    assert report["per_class"] == {"a": 1.0, "b": 0.5, "c": 0.0}
    assert report["confusion"] == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
    assert "mAP" not in report and "vad_mae" not in report
    assert json.loads(json.dumps(report, allow_nan=False)) == report


def test_evaluation_report_multi_label_ranks_missing_rows_last_and_adds_vad():
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]])
    scores = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.3], [0.4, 0.7, 0.3], [0.6, 0.2, 0.3]])
    report = evaluation_report(scores, targets, LABELS, multi_label=True)
    mean, per_class = mean_average_precision(targets, scores)
    assert report["mAP"] == pytest.approx(mean) and report["per_class_ap"]["c"] is None
    assert report["per_class_ap"]["a"] == pytest.approx(per_class[0]) and "accuracy" not in report
    # Without a prediction, the first sample (a positive of a) ranks below every other one.
    missing = scores.copy()
    missing[0] = np.nan
    ranked_last = scores.copy()
    ranked_last[0] = -1.0
    assert evaluation_report(missing, targets, LABELS, True)["mAP"] == pytest.approx(
        mean_average_precision(targets, ranked_last)[0])
    vad_true = np.array([[5.0, 5.0, 5.0], [1.0, 2.0, 3.0], [np.nan] * 3, [0.0, 0.0, 0.0]])
    vad_pred = np.array([[6.0, 5.0, 3.0], [1.0, 4.0, 3.0], [1.0, 1.0, 1.0], [np.nan] * 3])
    with_vad = evaluation_report(scores, targets, LABELS, True, vad_true, vad_pred)
    assert with_vad["vad_mae"] == pytest.approx([0.5, 1.0, 1.0])  # rows missing either side left out


def test_score_batches_collects_and_splits_batches_between_ranks():
    batches = [{"x": np.array([0, 1]), "labels": np.eye(3)[[0, 1]], "vad": np.ones((2, 3))},
               {"x": np.array([2]), "labels": np.eye(3)[[2]]}]

    def predict(batch):
        return {"scores": np.eye(3)[batch["x"]], "vad": np.zeros((len(batch["x"]), 3))}

    scored = score_batches(predict, batches, 3)
    assert scored["scores"].shape == scored["targets"].shape == (3, 3) and scored["scores"].dtype == np.float32
    assert scored["vad_true"][:2].tolist() == [[1.0] * 3] * 2 and np.isnan(scored["vad_true"][2]).all()
    assert (scored["vad_pred"] == 0).all()
    second = score_batches(predict, batches, 3, rank=1, world_size=2)
    assert second["targets"].tolist() == [[0.0, 0.0, 1.0]]
    empty = score_batches(predict, [], 3, rank=0, world_size=2)
    assert empty["scores"].shape == (0, 3) and empty["vad_pred"].shape == (0, 3)


def test_evaluate_classifier_batches_a_scoring_function():
    images = [np.full((2, 2), v, np.uint8) for v in (0, 1, 2, 2, 1)]
    labels = [0, 1, 2, 1, 1]

    def predict_scores(batch):
        return np.eye(3)[[int(image[0, 0]) for image in batch]]

    report = evaluate_classifier(predict_scores, images, labels, LABELS, batch_size=2)
    assert report["n"] == 5 and report["accuracy"] == pytest.approx(4 / 5)
    assert report["confusion"] == [[1, 0, 0], [0, 2, 1], [0, 0, 1]]
    assert report == evaluate_classifier(predict_scores, images, labels, LABELS)  # batch size does not matter


@pytest.mark.parametrize("call, message", [
    (lambda: accuracy([0, 1], [0]), "equal length"),
    (lambda: accuracy([], []), "empty"),
    (lambda: confusion_matrix([0, 3], [0, 1], 3), "outside"),
    (lambda: confusion_matrix([0.0, 1.0], [0, 1], 3), "integer"),
    (lambda: average_precision([0, 2], [0.1, 0.2]), "0/1"),
    (lambda: average_precision([0, 1], [0.1, np.nan]), "nan"),
    (lambda: mean_average_precision(np.zeros((2, 3)), np.zeros((2, 2))), r"\[N, K\]"),
    (lambda: vad_error(np.zeros((2, 3)), np.zeros((3, 3))), r"\[N, D\]"),
    (lambda: evaluate_classifier(lambda b: np.zeros(1), [1, 2], [0, 1], LABELS), "returned shape"),
    (lambda: evaluate_classifier(lambda b: np.zeros((len(b), 3)), [1, 2], [0, 3], LABELS), "outside"),
    (lambda: evaluation_report(np.zeros((2, 3)), np.zeros((2, 2)), LABELS, False), r"\[N, 3\]"),
    (lambda: evaluation_report(np.zeros((0, 3)), np.zeros((0, 3)), LABELS, True), "non-empty"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()
