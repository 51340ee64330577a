"""Face model v2's parts: datasets in one label space with missing classes masked, the
new augmentations, face alignment by landmarks, and calibration in the report."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import BaseModel

from emotion.crops import (FACE_TEMPLATE, TEMPLATE_EXPAND, CropSpec, aligned_face, face_template, person_crops,
                          similarity_transform)
from emotion.data.mixture import (fold_numbers, label_positions, repeat_plan, source_samples,
                                  to_label_space)
from emotion.metrics import evaluation_report, expected_calibration_error
from emotion.settings import ConfigError, DataSettings, SourceData, parse_settings
from emotion.training.augment import augment, random_downscale, random_grayscale
from emotion.training.targets import classification_loss
from tests.configs import augment_settings

pytestmark = pytest.mark.unit

FERPLUS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
FER = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")


# -- one label space ----------------------------------------------------------------------
def test_a_seven_class_source_lands_in_ferplus_with_contempt_unknown_in_training_only():
    positions = label_positions(FER, FERPLUS, "expw")
    assert [FERPLUS[p] for p in positions] == ["anger", "disgust", "fear", "happiness", "neutral", "sadness",
                                                "surprise"]
    happy = np.eye(7, dtype=np.float32)[[3]]
    train = to_label_space(happy, positions, 8, float("nan"))
    val = to_label_space(happy, positions, 8, 0.0)
    assert train[0, 1] == 1 and math.isnan(train[0, 7]) and np.nansum(train) == 1
    assert val.tolist() == [[0, 1, 0, 0, 0, 0, 0, 0]]
    with pytest.raises(ValueError, match="sources.x: class 'bored'"):
        label_positions(("bored",), FERPLUS, "x")


@pytest.mark.parametrize("mode", ["majority", "probability", "crossentropy", "multi_target"])
def test_an_unknown_class_is_left_out_of_the_softmax_not_pushed_down(mode):
    logits = torch.randn(4, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    labels = torch.zeros(4, 8)
    labels[torch.arange(4), torch.tensor([0, 1, 4, 6])] = 1.0
    labels[:, 7] = float("nan")
    loss = classification_loss(logits, labels, mode, label_smoothing=0.1 if mode != "multi_target" else 0.0)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad[:, 7].abs().max() == 0  # contempt's logit is untouched
    # The same loss as the 7 known classes alone.
    seven = classification_loss(logits.detach()[:, :7], labels[:, :7], mode,
                                label_smoothing=0.1 if mode != "multi_target" else 0.0,
                                generator=torch.Generator().manual_seed(1))
    if mode != "probability":  # (draws differ)
        assert torch.allclose(loss.detach(), seven, atol=1e-6)


def test_rows_with_every_class_known_keep_the_plain_loss():
    logits = torch.randn(5, 8, generator=torch.Generator().manual_seed(2))
    labels = torch.softmax(torch.randn(5, 8, generator=torch.Generator().manual_seed(3)), dim=-1)
    expected = -(((1 - 0.05) * labels + 0.05 / 8) * F.log_softmax(logits, -1)).sum(-1).mean()
    assert torch.allclose(classification_loss(logits, labels, "crossentropy", 0.05), expected)


def test_sampling_weights_repeat_and_draw_a_fixed_fraction():
    plan = repeat_plan(10, 2.5, seed=0)
    counts = np.bincount(plan, minlength=10)
    assert len(plan) == 25 and set(counts) == {2, 3} and (counts == 3).sum() == 5
    assert np.array_equal(plan, repeat_plan(10, 2.5, seed=0)) and len(repeat_plan(10, 0.0, 0)) == 0


class _DataGroup(BaseModel):
    data: DataSettings  # the train job's data group: a union told apart by ``format``


def sources(**named: dict) -> dict[str, SourceData]:
    """``data.sources`` parsed as the train job parses it (a mistake: ``ConfigError``)."""
    data = {"format": "sources", "root": "r", "head_expand": 1.0, "multi_label": False, "label_set": "ferplus",
            "sources": named}
    return parse_settings(_DataGroup, {"data": data}).data.sources


GOOD_SOURCE = {"format": "fer", "root": "r", "weight": 1.0, "train_split": "train", "val_split": "val",
               "select": True, "options": {}, "folds": None}


def test_sources_config_names_its_mistakes():
    good = GOOD_SOURCE
    assert sources(a=good)["a"].weight == 1.0
    with pytest.raises(ConfigError, match=r"^bad config: data.sources.a.wieght: unknown key$"):
        sources(a={**good, "wieght": 1})
    with pytest.raises(ConfigError, match="^bad config: data.sources.b: neither trained on"):
        sources(a=good, b={**good, "weight": 0.0, "val_split": None})
    with pytest.raises(ConfigError, match="^bad config: data.sources: no source is trained on"):
        sources(a={**good, "weight": 0.0})
    with pytest.raises(ConfigError, match="^bad config: data.sources: no source is selected"):
        sources(a={**good, "select": False})
    with pytest.raises(ConfigError, match="^bad config: data.sources.a: weight 1.0 > 0 needs a train_split"):
        sources(a={**good, "train_split": None})
    with pytest.raises(ConfigError, match="^bad config: data.sources: empty"):
        sources()


def test_folds_are_stratified_and_fixed_by_the_data_alone():
    samples = [{"image_uri": f"/data/train/{c}/{i:03d}.png", "labels": np.eye(3, dtype=np.float32)[[c]]}
               for c, n in ((0, 20), (1, 11), (2, 4)) for i in range(n)]
    fold = fold_numbers(samples, 5)
    for c, n in ((0, 20), (1, 11), (2, 4)):  # each class dealt round-robin: sizes differ by at most one
        counts = np.bincount(fold[[i for i, s in enumerate(samples) if s["labels"][0, c] == 1]], minlength=5)
        assert counts.sum() == n and counts.max() - counts.min() <= 1
    moved = [{**s, "image_uri": s["image_uri"].replace("/data", "s3://bucket/elsewhere")} for s in samples[::-1]]
    assert np.array_equal(fold_numbers(moved, 5)[::-1], fold)  # neither the order nor the root matters


def _fer_folder(root, per_class: dict[str, int]) -> None:
    from PIL import Image

    for name, count in per_class.items():
        (root / "train" / name).mkdir(parents=True)
        for i in range(count):
            Image.new("L", (8, 8), color=i * 10).save(root / "train" / name / f"{name}{i}.png")


def test_a_source_cross_validated_by_folds_trains_on_the_rest_and_scores_the_held_out_fold(tmp_path):
    _fer_folder(tmp_path, {"happy": 6, "sad": 4})
    base = {**GOOD_SOURCE, "root": str(tmp_path), "val_split": None}
    trained = source_samples("f", sources(f={**base, "folds": {"count": 2, "held_out": 1}})["f"], FERPLUS)
    uris = {role: {s["image_uri"] for s in rows} for role, rows in trained.items()}
    assert len(uris["train"]) == len(uris["val"]) == 5 and not uris["train"] & uris["val"]
    assert all(math.isnan(s["labels"][0, 7]) for s in trained["train"])  # no contempt in FER: unknown
    assert all(s["labels"][0, 7] == 0 for s in trained["val"])
    other = sources(f={**base, "folds": {"count": 2, "held_out": 0}})["f"]
    assert {s["image_uri"] for s in source_samples("f", other, FERPLUS)["val"]} == uris["train"]
    scored_only = sources(f={**base, "weight": 0.0, "folds": {"count": 2, "held_out": 1}}, g=base)["f"]
    assert set(source_samples("f", scored_only, FERPLUS)) == {"val"}  # the same faces, nothing trained
    assert {s["image_uri"] for s in source_samples("f", scored_only, FERPLUS)["val"]} == uris["val"]


@pytest.mark.parametrize("folds, message", [
    ({"count": 1, "held_out": 0}, "data.sources.a.folds.count=1: Input should be greater than or equal to 2"),
    ({"count": 5, "held_out": 5}, "data.sources.a.folds: held_out (5) must be below count (5)"),
    ({"count": 5}, "data.sources.a.folds.held_out: missing (required)"),
])
def test_folds_config_names_its_mistakes(folds, message):
    good = {**GOOD_SOURCE, "val_split": None}
    with pytest.raises(ConfigError, match=f"^bad config: {re.escape(message)}$"):
        sources(a={**good, "folds": folds})
    with pytest.raises(ConfigError, match="^bad config: data.sources.a: with folds .* val_split must be null"):
        sources(a={**good, "val_split": "val", "folds": {"count": 5, "held_out": 0}})
    with pytest.raises(ConfigError, match="^bad config: data.sources.a: folds needs the train_split"):
        sources(a={**good, "train_split": None, "weight": 0.0, "folds": {"count": 5, "held_out": 0}},
                b=GOOD_SOURCE)


def test_the_score_averages_the_selected_validation_sets_and_reports_every_one():
    from emotion.training.loop import combine_val_reports

    reports = {f"val_{name}": {"score": score, "accuracy": score, "n": 10, "seconds": 1.0}
               for name, score in (("a", 0.8), ("b", 0.4), ("held", 0.0))}
    out = combine_val_reports(reports, selected=["val_a", "val_b"])
    assert out["score"] == pytest.approx(0.6) and out["accuracy"] == pytest.approx(0.6)
    assert out["n"] == 30 and set(out["sources"]) == {"a", "b", "held"}
    assert combine_val_reports(reports)["score"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="no selected validation dataset"):
        combine_val_reports(reports, selected=["val_c"])


# -- augmentation -------------------------------------------------------------------------
def test_downscale_blurs_the_chosen_images_and_keeps_the_others():
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = random_downscale(images, prob=1.0, min_fraction=0.25, generator=torch.Generator().manual_seed(1))
    assert out.shape == images.shape
    # Fine detail (neighbour differences) is what a shrunk-and-enlarged image loses.
    assert out.diff(dim=-1).abs().mean() < images.diff(dim=-1).abs().mean() * 0.8
    assert torch.equal(random_downscale(images, 0.0, 0.25), images)


def test_grayscale_makes_the_channels_equal():
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    gray = random_grayscale(images, 1.0)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    expected = 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    assert torch.allclose(gray[:, 0], expected, atol=1e-6)


def test_augment_with_every_transform_on_is_seeded():
    cfg = augment_settings(min_scale=0.75, max_scale=1.25, erase_prob=0.5, downscale_prob=0.5, grayscale_prob=0.5)
    images = torch.randint(0, 256, (8, 24, 24, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    first = augment(images, cfg, torch.Generator().manual_seed(5))
    assert first.shape == (8, 3, 24, 24) and torch.isfinite(first).all()
    assert torch.equal(first, augment(images, cfg, torch.Generator().manual_seed(5)))


# -- alignment ----------------------------------------------------------------------------
def _rotation(angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([[scale * math.cos(a), -scale * math.sin(a), shift[0]],
                     [scale * math.sin(a), scale * math.cos(a), shift[1]]])


def test_similarity_transform_recovers_a_known_one():
    points = FACE_TEMPLATE * 100
    truth = _rotation(20.0, 1.7, (30.0, -12.0))
    moved = points @ truth[:, :2].T + truth[:, 2]
    assert np.allclose(similarity_transform(points, moved), truth, atol=1e-9)


def _face_with_dots(landmarks: np.ndarray, radius: int, size: int = 800) -> np.ndarray:
    """A black image with a white square dot at each landmark."""
    pixels = np.zeros((size, size, 3), np.uint8)
    for x, y in landmarks:
        pixels[int(y) - radius:int(y) + radius + 1, int(x) - radius:int(x) + radius + 1] = 255
    return pixels


@pytest.mark.parametrize("angle,scale", [(0.0, 2.0), (25.0, 3.0), (-35.0, 8.0)])
def test_aligned_face_puts_the_landmarks_on_the_template(angle, scale):
    """A tilted face of any size: after alignment each landmark's dot is where the
    template says, within a pixel of the 64 px crop (large faces are first shrunk)."""
    size = 64
    truth = _rotation(angle, scale, (400.0, 400.0))
    landmarks = (FACE_TEMPLATE - 0.5) * size @ truth[:, :2].T + truth[:, 2]
    crop = aligned_face(_face_with_dots(landmarks, radius=round(1.5 * scale)), landmarks + 0.5, size, FACE_TEMPLATE)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    for x, y in FACE_TEMPLATE * size:
        window = crop[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2, 0]
        assert window.max() > 100, (x, y)


def test_the_template_follows_the_head_margin():
    """An aligned upright face is framed as the unaligned crop of the same margin: the
    template's points, in image pixels, are the same for every margin."""
    box = np.array([100.0, 100.0, 200.0, 200.0])  # a square face box
    centre = box[:2] + 50
    np.testing.assert_allclose(face_template(TEMPLATE_EXPAND), FACE_TEMPLATE)
    for expand in (1.0, 1.1, 1.25):
        side = 100 * expand
        in_image = centre - side / 2 + face_template(expand) * side
        np.testing.assert_allclose(in_image, centre - 62.5 + FACE_TEMPLATE * 125)


def test_person_crops_align_only_faces_with_landmarks_and_only_when_asked():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)
    faces = np.array([[50, 50, 120, 130], [10, 10, 60, 60]], np.float32)
    landmarks = np.full((2, 5, 2), np.nan, np.float32)
    landmarks[0] = FACE_TEMPLATE * 80 + 40
    plain = CropSpec(("head",), 32, head_expand=1.25, max_side=960)
    aligned = CropSpec(("head",), 32, head_expand=1.25, max_side=960, align=True)
    unaligned = person_crops(pixels, faces, np.full((2, 4), np.nan), plain, landmarks=landmarks)["head"]
    out = person_crops(pixels, faces, np.full((2, 4), np.nan), aligned, landmarks=landmarks)["head"]
    assert np.array_equal(out[1], unaligned[1])  # no landmarks: the box crop
    assert np.array_equal(out[0], aligned_face(pixels, landmarks[0], 32, face_template(1.25)))
    assert not np.array_equal(out[0], unaligned[0])


# -- calibration --------------------------------------------------------------------------
def test_expected_calibration_error():
    # Always 0.9 sure, right 9 times in 10: calibrated. Always sure, right half the time: 0.5.
    scores = np.tile([[0.9, 0.1]], (10, 1))
    assert expected_calibration_error(scores, np.array([0] * 9 + [1])) == pytest.approx(0.0)
    assert expected_calibration_error(np.tile([[1.0, 0.0]], (4, 1)), np.array([0, 1, 0, 1])) == pytest.approx(0.5)
    report = evaluation_report(scores, np.eye(2)[[0] * 9 + [1]], ("a", "b"), multi_label=False)
    assert report["ece"] == pytest.approx(0.0) and report["mean_recall"] == pytest.approx(0.5)


# -- fine-tuning from shipped weights -------------------------------------------------------
class _Labelled(torch.nn.Linear):
    def __init__(self, labels: tuple[str, ...]) -> None:
        super().__init__(4, len(labels))
        self.labels = labels


def test_initial_weights_load_only_the_weights_and_refuse_other_labels(tmp_path):
    from emotion.checkpoint import save_checkpoint
    from emotion.training.loop import load_initial_weights

    torch.manual_seed(0)
    source = _Labelled(("a", "b"))
    path = save_checkpoint(tmp_path / "w.ckpt", model_name="toy", model_cfg={}, state_dict=source.state_dict(),
                           labels=["a", "b"], epoch=15)
    target = _Labelled(("a", "b"))
    load_initial_weights(str(path), target)
    assert torch.equal(target.weight, source.weight) and torch.equal(target.bias, source.bias)
    with pytest.raises(ValueError, match=r"init_weights .* has labels \['a', 'b'\]"):
        load_initial_weights(str(path), _Labelled(("b", "a")))


def test_init_weights_is_checked_before_the_run_starts(tmp_path):
    from omegaconf import OmegaConf

    from emotion.pipelines.training import _check_resume
    from emotion.settings import parse_train_settings
    from tests.test_config_settings import compose_job

    def settings(*overrides: str):
        return parse_train_settings(OmegaConf.to_container(compose_job("train", *overrides), resolve=True))

    run_uri = str(tmp_path / "run")
    _check_resume(settings("init_weights=qcs_ferplus"), run_uri)  # a shipped name
    with pytest.raises(ValueError, match="init_weights .*nosuch.ckpt: no such file"):
        _check_resume(settings(f"init_weights={tmp_path}/nosuch.ckpt"), run_uri)
    with pytest.raises(ValueError, match="resume_from and init_weights both set"):
        _check_resume(settings("init_weights=qcs_ferplus", f"resume_from={tmp_path}"), run_uri)


def test_interpolated_weights_lie_between_the_start_and_the_fine_tuned_model(tmp_path):
    from emotion.checkpoint import load_checkpoint, save_checkpoint
    from emotion.training.interpolation import interpolate_checkpoints, interpolate_state

    torch.manual_seed(0)
    start, end = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        end.weight.add_(2.0), end.running_mean.add_(4.0)
    end.num_batches_tracked += 7
    mid = interpolate_state(start.state_dict(), end.state_dict(), 0.25)
    assert torch.allclose(mid["weight"], start.weight + 0.5) and torch.allclose(mid["running_mean"],
                                                                                start.running_mean + 1.0)
    assert int(mid["num_batches_tracked"]) == 7
    assert torch.equal(interpolate_state(start.state_dict(), end.state_dict(), 0.0)["weight"], start.weight)
    with pytest.raises(ValueError, match="alpha=1.5"):
        interpolate_state(start.state_dict(), end.state_dict(), 1.5)
    with pytest.raises(ValueError, match="different tensors"):
        interpolate_state({"a": torch.zeros(1)}, {"b": torch.zeros(1)}, 0.5)

    paths = [save_checkpoint(tmp_path / f"{name}.ckpt", model_name="toy", model_cfg={"k": name},
                             state_dict=model.state_dict(), labels=["a", "b", "c"])
             for name, model in (("start", start), ("end", end))]
    written = load_checkpoint(interpolate_checkpoints(paths[0], paths[1], 0.5, tmp_path / "mid.ckpt"))
    assert torch.allclose(written["state_dict"]["weight"], start.weight + 1.0)
    assert written["model_cfg"] == {"k": "end"} and written["extra"]["interpolated"]["alpha"] == 0.5
