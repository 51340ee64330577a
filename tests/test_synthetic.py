"""Synthetic scenes: determinism, conflict rate, the label rule, localised cues, and
that the EMOTIC reader reads exactly what the generator wrote."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from emotion.data.emotic import read_emotic
from emotion.data.synthetic import (
    CATEGORIES,
    IMAGE_FOLDER,
    generate_synthetic_emotic,
    iter_scenes,
    render_scene,
    sample_scene,
    scene_rng,
    true_label,
    with_cues,
)
from emotion.labels import LABEL_SETS
from tests.configs import synth_options

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def scenes_200():
    return list(iter_scenes(200, seed=11, conflict_rate=0.3))


def test_true_label_rule():
    happy, sad, anger = 0, 1, 2
    assert true_label(happy, happy, happy) == happy
    assert true_label(sad, happy, happy) == happy  # face odd one out: body + context win
    assert true_label(happy, sad, happy) == happy  # body odd one out
    assert true_label(sad, sad, happy) == sad  # context odd one out
    assert true_label(anger, sad, happy) == anger  # all differ: the face decides


def test_same_seed_same_images_other_seed_other_images():
    a = [s.pixels for s in iter_scenes(5, seed=3)]
    b = [s.pixels for s in iter_scenes(5, seed=3)]
    c = [s.pixels for s in iter_scenes(5, seed=4)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not any(np.array_equal(x, y) for x, y in zip(a, c))
    # image i does not depend on how many images are made
    assert np.array_equal(next(iter_scenes(1, seed=3)).pixels, a[0])


def test_conflict_fraction_and_single_levels_fall_short(scenes_200):
    conflicts = np.mean([s.spec.conflict for s in scenes_200])
    assert abs(conflicts - 0.3) < 0.08, conflicts
    hits = {"face": [], "body": [], "context": [], "rule": []}
    for scene in scenes_200:
        for person in scene.spec.people:
            agree = person.face == person.body == scene.spec.context
            assert agree == (not scene.spec.conflict)  # conflict images: every person disagrees
            if scene.spec.conflict:
                hits["face"].append(person.face == person.label)
                hits["body"].append(person.body == person.label)
                hits["context"].append(scene.spec.context == person.label)
                hits["rule"].append(true_label(person.face, person.body, scene.spec.context) == person.label)
    accuracy = {level: float(np.mean(v)) for level, v in hits.items()}
    assert accuracy["rule"] == 1.0
    # Expected 3/4, 1/2, 1/2 on conflict people: no single level is enough.
    assert 0.6 < accuracy["face"] < 0.9 and 0.35 < accuracy["body"] < 0.65 and 0.35 < accuracy["context"] < 0.65, accuracy


def test_conflict_rate_extremes():
    assert not any(s.spec.conflict for s in iter_scenes(30, seed=1, conflict_rate=0.0))
    assert all(s.spec.conflict for s in iter_scenes(30, seed=1, conflict_rate=1.0))
    with pytest.raises(ValueError, match="conflict_rate"):
        next(iter_scenes(1, conflict_rate=1.5))


def test_boxes_are_tight_around_what_is_drawn():
    for index in range(8):
        spec = sample_scene(scene_rng(5, "train", index), (160, 160), 0.3, max_people=1)
        scene = render_scene(spec)
        empty = render_scene(spec.__class__(**{**spec.__dict__, "people": ()}))
        ys, xs = np.nonzero(np.abs(scene.pixels.astype(int) - empty.pixels.astype(int)).max(axis=2) > 24)
        drawn = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        body = scene.body_boxes[0]
        assert (drawn[:2] >= body[:2] - 1).all() and (drawn[2:] <= body[2:] + 1).all(), (drawn, body)
        assert np.abs(drawn - body).max() <= 4, (drawn, body)  # and not loose
        face = scene.face_boxes[0]
        assert (face[:2] >= body[:2]).all() and (face[2:] <= body[2:]).all()
        assert 0 <= body[0] < body[2] <= 160 and 0 <= body[1] < body[3] <= 160


def changed_mask(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(int) - b.astype(int)).max(axis=2) > 8


def inside(mask: np.ndarray, box: np.ndarray, margin: int = 2) -> bool:
    ys, xs = np.nonzero(mask)
    return bool(
        len(xs) == 0
        or (xs.min() >= box[0] - margin and ys.min() >= box[1] - margin and xs.max() < box[2] + margin and ys.max() < box[3] + margin)
    )


def test_each_level_is_drawn_only_where_it_belongs():
    spec = sample_scene(scene_rng(9, "train", 0), (160, 160), 0.0, max_people=2)
    base = render_scene(spec)
    other = (spec.context + 1) % len(CATEGORIES)
    face_changed = render_scene(with_cues(spec, 0, face=other))
    mask = changed_mask(base.pixels, face_changed.pixels)
    assert mask.sum() > 10 and inside(mask, base.face_boxes[0])
    body_changed = render_scene(with_cues(spec, 0, body=other))
    mask = changed_mask(base.pixels, body_changed.pixels)
    union = np.concatenate([np.minimum(base.body_boxes[0][:2], body_changed.body_boxes[0][:2]), np.maximum(base.body_boxes[0][2:], body_changed.body_boxes[0][2:])])
    assert mask.sum() > 30 and inside(mask, union)
    context_changed = render_scene(with_cues(spec, 0, context=other))
    mask = changed_mask(base.pixels, context_changed.pixels)
    assert mask.mean() > 0.3  # the scene changes almost everywhere ...
    for face in base.face_boxes:  # ... but not inside the faces (the square inside the head circle)
        cx, cy, half = (face[0] + face[2]) / 2, (face[1] + face[3]) / 2, (face[2] - face[0]) / 2 * 0.7 - 2
        assert not mask[int(cy - half) : int(cy + half), int(cx - half) : int(cx + half)].any()
    assert with_cues(spec, 0, context=other).people[1].label == true_label(spec.people[1].face, spec.people[1].body, other)


def test_images_look_like_scenes(scenes_200):
    for scene in scenes_200[:20]:
        pixels = scene.pixels
        assert pixels.shape == (160, 160, 3) and pixels.dtype == np.uint8
        assert pixels.std() > 20  # not blank
        for person, face in zip(scene.spec.people, scene.face_boxes):
            x1, y1, x2, y2 = face.astype(int)
            patch = pixels[y1:y2, x1:x2].reshape(-1, 3).astype(int)
            skin_like = (np.abs(patch - np.array(person.skin)).max(axis=1) < 30).mean()
            assert skin_like > 0.15  # the head is skin ...
            assert (patch.max(axis=1) < 70).mean() > 0.03  # ... with dark features drawn on it


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    summary = generate_synthetic_emotic(root, **synth_options(n_train=12, n_val=4, n_test=4, conflict_rate=0.5, seed=2))
    return root, summary


def test_emotic_reader_reads_what_the_generator_wrote(written):
    root, summary = written
    data = read_emotic(str(root))
    assert data.label_set == "synthetic" and data.labels == LABEL_SETS["synthetic"] == CATEGORIES
    assert data.counts() == {"train": 12, "val": 4, "test": 4}
    assert {s: summary["splits"][s]["images"] for s in ("train", "val", "test")} == data.counts()
    for split in ("train", "val", "test"):
        scenes = list(iter_scenes(len(data.splits[split]), seed=2, split=split, conflict_rate=0.5))
        assert sum(len(s.spec.people) for s in scenes) == summary["splits"][split]["people"]
        for index, (sample, scene) in enumerate(zip(data.splits[split], scenes)):
            assert sample["image_uri"] == str(root / IMAGE_FOLDER / f"{split}_{index:06d}.jpg")
            assert (sample["width"], sample["height"]) == (160, 160)
            assert sample["labels"].argmax(axis=1).tolist() == scene.labels.tolist()
            assert (sample["labels"].sum(axis=1) == 1).all()
            np.testing.assert_allclose(sample["person_boxes"], scene.body_boxes, atol=1e-4)
            np.testing.assert_allclose(sample["face_boxes"], scene.face_boxes, atol=1e-4)
            assert np.isfinite(sample["vad"]).all() and ((sample["vad"] >= 1) & (sample["vad"] <= 10)).all()
            with Image.open(sample["image_uri"]) as img:
                decoded = np.asarray(img.convert("RGB"), dtype=int)
            assert np.abs(decoded - scene.pixels).mean() < 4  # JPEG of the same picture


def test_written_mat_has_the_emotic_layout_and_the_cues(written):
    root, _ = written
    # Positional access as mat2py does it (loadmat defaults, struct_as_record=True).
    mat = scipy.io.loadmat(root / "Annotations.mat")
    entry = mat["train"][0][0]
    assert list(mat["train"].dtype.names[:5]) == ["filename", "folder", "image_size", "original_database", "person"]
    assert entry[0][0] == "train_000000.jpg" and entry[1][0] == IMAGE_FOLDER
    person = entry[4][0][0]
    assert list(entry[4].dtype.names[:5]) == ["body_bbox", "annotations_categories", "annotations_continuous", "gender", "age"]
    assert np.asarray(person[0]).shape == (1, 4)
    val_person = mat["val"][0][0][4]
    assert list(val_person.dtype.names[:7]) == [
        "body_bbox", "annotations_categories", "combined_categories", "annotations_continuous",
        "combined_continuous", "gender", "age",
    ]  # fmt: skip
    # The cue fields agree with the label under the rule, in every split.
    mat = scipy.io.loadmat(root / "Annotations.mat", squeeze_me=True, struct_as_record=False)
    index = {name: i for i, name in enumerate(CATEGORIES)}
    for split in ("train", "val", "test"):
        for image in np.atleast_1d(mat[split]):
            for p in np.atleast_1d(image.person):
                cats = p.annotations_categories.categories if split == "train" else p.combined_categories
                label = np.atleast_1d(cats).tolist()
                assert label == [CATEGORIES[true_label(index[p.cue_face], index[p.cue_body], index[p.cue_context])]]


def test_written_dataset_is_deterministic(written, tmp_path: Path):
    root, _ = written
    again = generate_synthetic_emotic(tmp_path, **synth_options(n_train=12, n_val=4, n_test=4, conflict_rate=0.5, seed=2))
    for path in sorted((root / IMAGE_FOLDER).glob("*.jpg")):
        assert path.read_bytes() == (tmp_path / IMAGE_FOLDER / path.name).read_bytes()
    assert again["splits"] == written[1]["splits"]
