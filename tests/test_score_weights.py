"""``predictor.score_weights``: a single-label model's scores under another label prior,
the same through the predictor (tag, serve, eval of image folders) and eval of datasets."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from emotion.labels import FERPLUS_CLASSES
from emotion.score_weights import weight_vector, weighted_scores
from tests.configs import composed, data_settings


def test_a_weight_vector_names_classes_as_the_label_table_does():
    vector = weight_vector({"Neutral": 0.5, "happy": 2.0}, FERPLUS_CLASSES)
    assert vector.tolist() == [0.5, 2.0, 1, 1, 1, 1, 1, 1]
    assert weight_vector(None, FERPLUS_CLASSES) is None and weight_vector({}, FERPLUS_CLASSES) is None


def test_a_weight_for_a_class_the_model_lacks_or_a_multi_label_model_is_refused():
    with pytest.raises(ValueError, match=r"predictor\.score_weights\.calm: not a class of the model; its classes: "
                                         r"\['neutral', 'happiness'"):
        weight_vector({"calm": 0.5}, FERPLUS_CLASSES)
    with pytest.raises(ValueError, match="multi-label"):
        weight_vector({"neutral": 0.5}, FERPLUS_CLASSES, multi_label=True)
    with pytest.raises(ValueError, match=r"neutral=0\.0: a weight must be > 0"):
        weight_vector({"neutral": 0.0}, FERPLUS_CLASSES)
    with pytest.raises(ValueError, match=r"'happy' and 'Happiness' name the same class \(happiness\)"):
        weight_vector({"happy": 0.5, "Happiness": 2.0}, FERPLUS_CLASSES)


def test_weighted_scores_are_bayes_rule_under_the_new_prior():
    scores = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], dtype=np.float32)
    weighted = weighted_scores(scores, np.array([0.5, 1.0, 1.0]))
    expected = np.array([[0.25, 0.3, 0.2], [0.05, 0.1, 0.8]])
    np.testing.assert_allclose(weighted, expected / expected.sum(axis=1, keepdims=True), rtol=1e-6)
    assert weighted.dtype == np.float32 and weighted[0].argmax() == 1  # neutral no longer wins the first face
    assert weighted_scores(scores, None) is scores


def _predictor(weights: str | None):
    from emotion.predictor import build_predictor

    overrides = ["model=fer", "detector=full_frame", "detector.find_face=false", "model.device=cpu"]
    if weights:
        overrides.append(f"predictor.score_weights={weights}")
    return build_predictor(composed("tag", overrides))


def test_the_predictor_weights_every_level_and_lists_the_weighted_top_class(sample_photos):
    data = sample_photos["obama"].read_bytes()
    plain_predictor = _predictor(None)
    labels = list(plain_predictor.spec.labels)
    plain = plain_predictor.predict_bytes(["obama.jpg"], [data]).to_pylist()[0]
    top = plain["emotions"][0]
    weighted = _predictor(f"{{{top}:0.001}}").predict_bytes(["obama.jpg"], [data]).to_pylist()[0]

    raw, new = np.asarray(plain["scores"]), np.asarray(weighted["scores"])
    vector = np.where(np.asarray(labels) == top, 0.001, 1.0)
    np.testing.assert_allclose(new, raw * vector / (raw * vector).sum(), rtol=1e-5)
    assert weighted["emotions"] == [labels[int(new.argmax())]] != plain["emotions"]
    scored_levels = [values for values in weighted["level_scores"].values()
                     if values is not None and np.isfinite(values).all()]
    assert scored_levels  # the face level at least
    for values in scored_levels:
        np.testing.assert_allclose(values, new, rtol=1e-6)


def test_dataset_eval_weights_scores_as_the_predictor_does(tmp_path):
    """`emotion eval data=fer` scores annotated faces without the predictor: the weights
    apply there too. A weight of 1e6 on one class makes every face that class."""
    from emotion.evaluation import evaluate_dataset
    from emotion.models.loading import build_emotion_model

    rng = np.random.default_rng(0)
    for name in ("happy", "sad", "neutral"):
        (tmp_path / "val" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(tmp_path / "val" / name / f"{i}.png")
    model = build_emotion_model(composed("eval", ["model=fer", "model.device=cpu"])["model"])
    data = data_settings("fer", root=str(tmp_path))
    report = evaluate_dataset(model, data, "val", max_side=960,
                              score_weights=weight_vector({"sad": 1e6}, model.labels))
    assert report["n"] == 9 and report["accuracy"] == pytest.approx(1 / 3)
    assert report["per_class"]["sad"] == 1.0 and report["per_class"]["happy"] == report["per_class"]["neutral"] == 0.0


def test_an_outputs_recipe_holds_the_weights_only_when_set():
    from emotion.settings import parse_tag_settings

    plain = parse_tag_settings(composed("tag", ["input=/in", "output=/out"])).crop_recipe()
    weighted = parse_tag_settings(composed("tag", ["input=/in", "output=/out",
                                                   "predictor.score_weights={neutral:0.6}"])).crop_recipe()
    assert not any("score_weights" in key for key in plain)
    assert weighted == {**plain, "predictor.score_weights": {"neutral": 0.6}}
