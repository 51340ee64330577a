"""scenes_v2 (issue 14): real faces kept apart by split, the label rule with absent cues,
determinism in the seed, crowds and scale, the recorded parameters, and that the EMOTIC
reader reads what the generator wrote.

Most tests run on a tiny FER+ written here (smooth random 48x48 faces, one label.csv per
split); the last ones use the real FER+ and skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from emotion.data.emotic import read_emotic
from emotion.data.synthetic.scenes_v2 import (
    FACE_CATEGORY,
    IMAGE_FOLDER,
    ScenesV2Params,
    expected_level_agreement,
    generate_scenes_v2,
    held_out_half,
    iter_scenes_v2,
    level_agreement,
    load_face_pool,
    params_from_config,
    person_fields,
    read_people,
    rule_label,
    sample_scene_v2,
    scene_rng_v2,
)
from emotion.data.synthetic.spec import CATEGORIES, HEAD_RADIUS
from emotion.labels import FERPLUS_CLASSES
from tests.configs import scenes_v2_options
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.unit

INDEX = {name: i for i, name in enumerate(CATEGORIES)}
SMALL = (96, 96)


# ------------------------------------------------------------------ a tiny FER+


def _votes(ferplus_class: str) -> list[int]:
    votes = [0] * 10
    votes[FERPLUS_CLASSES.index(ferplus_class)] = 8
    votes[8] = 2  # unknown: not a majority
    return votes


def _face(seed: int) -> np.ndarray:
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 6)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((48, 48), Image.BICUBIC))


def _write_split(folder: Path, rows: list[tuple[str, list[int]]]) -> None:
    folder.mkdir(parents=True)
    lines = []
    for name, votes in rows:
        Image.fromarray(_face(int(name[3:10]))).save(folder / name)
        lines.append(f'{name},"(0, 0, 48, 48)",' + ",".join(map(str, votes)))
    (folder / "label.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def fake_ferplus(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """(root, {face source: mapped category}) of a FER+ with 3 train faces per category and
    Valid faces giving both held-out halves 2+ per category, plus faces never to be used."""
    root = tmp_path_factory.mktemp("ferplus")
    truth: dict[str, int] = {}
    train, number = [], 0
    for ferplus_class, category in FACE_CATEGORY.items():
        for _ in range(3):
            name = f"fer{number:07d}.png"
            train.append((name, _votes(ferplus_class)))
            truth[f"FER2013Train/{name}"] = category
            number += 1
    train += [(f"fer{number:07d}.png", _votes("disgust")), (f"fer{number + 1:07d}.png", [4, 4, 2, 0, 0, 0, 0, 0, 0, 0])]
    _write_split(root / "FER2013Train", train)
    valid, number = [], 1_000_000
    for ferplus_class, category in FACE_CATEGORY.items():
        halves = {"val": 0, "test": 0}
        while min(halves.values()) < 2:
            name = f"fer{number:07d}.png"
            valid.append((name, _votes(ferplus_class)))
            truth[f"FER2013Valid/{name}"] = category
            halves[held_out_half(name)] += 1
            number += 1
    valid.append((f"fer{number:07d}.png", _votes("contempt")))
    _write_split(root / "FER2013Valid", valid)
    return root, truth


@pytest.fixture(scope="module")
def pools(fake_ferplus):
    root, _ = fake_ferplus
    return {split: load_face_pool(str(root), split) for split in ("train", "val", "test")}


@pytest.fixture(scope="module")
def written(fake_ferplus, tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes_v2")
    summary = generate_scenes_v2(root, fake_ferplus[0], **scenes_v2_options(n_train=8, n_val=5, n_test=5, seed=3, image_size=SMALL))
    return root, summary


# ------------------------------------------------------------------ the rule and the parameters


def test_rule_label_with_absent_cues():
    happy, sad, anger = 0, 1, 2
    assert rule_label(happy, sad, sad) == sad  # body and context outvote the face
    assert rule_label(happy, happy, sad) == happy
    assert rule_label(happy, sad, happy) == happy
    assert rule_label(anger, sad, happy) == anger  # all differ: the face
    assert rule_label(happy, None, sad) == happy  # an absent cue shows no category
    assert rule_label(happy, sad, None) == happy
    assert rule_label(happy, None, None) == happy


def test_each_level_alone_is_right_on_55_to_75_percent_by_design():
    expected = expected_level_agreement(ScenesV2Params())
    assert set(expected) == {"face", "body", "context"}
    assert all(0.55 <= v <= 0.75 for v in expected.values()), expected
    assert expected["face"] == pytest.approx(0.674875)
    assert expected["body"] == pytest.approx(0.639625) and expected["context"] == pytest.approx(0.639625)


def test_the_config_records_the_default_parameters():
    cfg = OmegaConf.to_container(OmegaConf.load(PROJECT_ROOT / "jobs" / "configs" / "data_scenes_v2.yaml"))
    assert params_from_config(cfg) == ScenesV2Params()
    data = OmegaConf.load(PROJECT_ROOT / "jobs" / "configs" / "data" / "scenes_v2.yaml")
    assert (data.format, data.multi_label) == ("synthetic", True)


def test_eval_config_with_data_scenes_v2_is_valid():
    from hydra import compose, initialize_config_dir

    from emotion.settings import parse_eval_settings

    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "jobs" / "configs"), version_base="1.3"):
        cfg = compose(config_name="eval", overrides=["data=scenes_v2", "data.root=/data/scenes_v2"])
    parse_eval_settings(OmegaConf.to_container(cfg, resolve=True))


def test_bad_parameters_are_refused_naming_the_key():
    with pytest.raises(ValueError, match="body_states"):
        ScenesV2Params(body_states=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="relations"):
        params_from_config({"relations": {"agree": 1.0}})
    with pytest.raises(ValueError, match="people_weights"):
        ScenesV2Params(people_weights=(0.1,) * 7)


# ------------------------------------------------------------------ faces


def test_face_pools_keep_train_val_and_test_faces_apart(pools, fake_ferplus):
    _, truth = fake_ferplus
    train, val, test = (pools[s].sources() for s in ("train", "val", "test"))
    assert train == {s for s in truth if s.startswith("FER2013Train/")}  # disgust / no majority left out
    assert val.isdisjoint(test) and val | test == {s for s in truth if s.startswith("FER2013Valid/")}
    assert all(held_out_half(s.split("/")[1]) == "val" for s in val)
    for split, pool in pools.items():
        for category, faces in enumerate(pool.by_category):
            assert faces and all(truth[f.source] == category == f.category for f in faces)


def test_a_missing_or_wrong_faces_root_names_the_key(tmp_path):
    from jobs.data import run_scenes_v2

    cfg = OmegaConf.load(PROJECT_ROOT / "jobs" / "configs" / "data_scenes_v2.yaml")
    cfg.pop("hydra")
    cfg.pop("defaults")
    cfg.root = str(tmp_path / "out")
    with pytest.raises(ValueError, match="faces="):
        run_scenes_v2(cfg)
    cfg.faces = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="faces="):
        run_scenes_v2(cfg)


# ------------------------------------------------------------------ determinism


def test_same_seed_same_scenes_other_seed_other_scenes(pools):
    a = list(iter_scenes_v2(3, pools["train"], seed=5, image_size=SMALL))
    b = list(iter_scenes_v2(3, pools["train"], seed=5, image_size=SMALL))
    c = list(iter_scenes_v2(3, pools["train"], seed=6, image_size=SMALL))
    assert all(x.spec == y.spec and np.array_equal(x.pixels, y.pixels) for x, y in zip(a, b))
    assert not any(np.array_equal(x.pixels, z.pixels) for x, z in zip(a, c))
    assert [x.spec.people for x in a] != [z.spec.people for z in c]
    only = next(iter_scenes_v2(1, pools["train"], seed=5, image_size=SMALL))  # image i does not depend on n
    assert np.array_equal(only.pixels, a[0].pixels)
    with pytest.raises(ValueError, match="face pool"):
        next(iter_scenes_v2(1, pools["val"], seed=5, split="train"))


def test_written_dataset_is_deterministic(written, fake_ferplus, tmp_path):
    root, summary = written
    again = generate_scenes_v2(tmp_path, fake_ferplus[0], **scenes_v2_options(n_train=8, n_val=5, n_test=5, seed=3, image_size=SMALL))
    for path in sorted((root / IMAGE_FOLDER).glob("*.jpg")):
        assert path.read_bytes() == (tmp_path / IMAGE_FOLDER / path.name).read_bytes()
    for split in ("train", "val", "test"):
        assert read_people(str(root), split) == read_people(str(tmp_path), split)
    assert again["splits"] == summary["splits"]


# ------------------------------------------------------------------ what is written


def test_no_validation_or_test_face_in_a_training_image(written, pools):
    root, _ = written
    used = {split: {row["face_source"] for row in read_people(str(root), split)} for split in ("train", "val", "test")}
    assert used["train"] and used["val"] and used["test"]
    assert used["train"] <= pools["train"].sources() and all(s.startswith("FER2013Train/") for s in used["train"])
    assert used["val"] <= pools["val"].sources() and used["test"] <= pools["test"].sources()
    assert used["train"].isdisjoint(pools["val"].sources() | pools["test"].sources())
    assert used["val"].isdisjoint(used["test"])


def test_labels_follow_the_rule_and_the_face_level_is_the_faces_label(written, fake_ferplus):
    root, _ = written
    _, truth = fake_ferplus
    cue = lambda name: None if name == "none" else INDEX[name]  # noqa: E731
    for split in ("train", "val", "test"):
        for row in read_people(str(root), split):
            assert INDEX[row["label"]] == rule_label(INDEX[row["cue_face"]], cue(row["cue_body"]), cue(row["cue_context"]))
            assert INDEX[row["cue_face"]] == truth[row["face_source"]]  # the pasted face's mapped FER+ label
            assert (row["cue_body"] == "none") == (row["cue_body_state"] == "absent")
            assert (row["cue_context"] == "none") == (row["cue_context_state"] == "absent")
            assert 0.0 < row["visible"] <= 1.0


def test_emotic_reader_reads_what_the_generator_wrote(written, pools):
    root, summary = written
    data = read_emotic(str(root))
    assert data.label_set == "synthetic" and data.labels == CATEGORIES
    assert data.counts() == {"train": 8, "val": 5, "test": 5}
    for split in ("train", "val", "test"):
        scenes = list(iter_scenes_v2(5 if split != "train" else 8, pools[split], seed=3, split=split, image_size=SMALL))
        assert sum(len(s.spec.people) for s in scenes) == summary["splits"][split]["people"]
        for index, (sample, scene) in enumerate(zip(data.splits[split], scenes)):
            assert sample["image_uri"] == str(root / IMAGE_FOLDER / f"{split}_{index:06d}.jpg")
            assert (sample["width"], sample["height"]) == SMALL
            assert 1 <= len(scene.spec.people) <= 6
            assert sample["labels"].argmax(axis=1).tolist() == scene.labels.tolist()
            np.testing.assert_allclose(sample["person_boxes"], scene.body_boxes, atol=1e-4)
            np.testing.assert_allclose(sample["face_boxes"], scene.face_boxes, atol=1e-4)
            assert ((sample["vad"] >= 1) & (sample["vad"] <= 10)).all()
            with Image.open(sample["image_uri"]) as img:
                assert np.abs(np.asarray(img.convert("RGB"), dtype=int) - scene.pixels).mean() < 8  # JPEG of it


def test_the_pasted_face_is_the_named_face(pools):
    pool = pools["val"]
    params = ScenesV2Params(people_weights=(1.0,), min_face_px=40)
    for index in range(3):
        scene = next(iter(iter_scenes_v2(1, pool, seed=index, split="val", image_size=(128, 128), params=params)))
        (person,) = scene.spec.people
        x1, y1, x2, y2 = scene.face_boxes[0]
        cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2 * 0.5
        window = scene.pixels[int(cy - half) : int(cy + half), int(cx - half) : int(cx + half)]
        assert np.ptp(window, axis=2).mean() < 1.5  # a gray face, shown as RGB
        crop = window.mean(axis=2)
        errors = {}
        for faces in pool.by_category:
            for face in faces:
                full = np.asarray(Image.fromarray(pool.pixels(face)).resize((int(x2 - x1), int(y2 - y1)), Image.BILINEAR), float)
                ox, oy = int(cx - half) - int(x1), int(cy - half) - int(y1)
                errors[face.source] = np.abs(full[oy : oy + crop.shape[0], ox : ox + crop.shape[1]] - crop).mean()
        assert min(errors, key=errors.get) == person.face_source


# ------------------------------------------------------------------ crowds, scale, agreement


@pytest.fixture(scope="module")
def sampled(pools):
    """300 val scenes at 224 px, sampled without pixels."""
    return [sample_scene_v2(scene_rng_v2(0, "val", i), pools["val"], (224, 224), ScenesV2Params()) for i in range(300)]


def test_crowds_sizes_and_occlusion(sampled):
    counts = [len(scene.people) for scene in sampled]
    assert set(counts) == {1, 2, 3, 4, 5, 6}
    heights = np.array([p.height for scene in sampled for p in scene.people])
    faces = 2 * HEAD_RADIUS * heights
    assert faces.min() >= 24 - 1e-6 and faces.min() < 26  # 24 px faces ...
    assert heights.max() > 0.9 * 224  # ... to people of (almost) the full image height
    visible = np.array([p.visible for scene in sampled for p in scene.people])
    assert 0.2 < (visible < 0.9).mean() < 0.8 and (visible > 0.99).mean() > 0.1  # some partly hidden, not all
    for scene in sampled:
        for person in scene.people:
            x1, y1, x2, y2 = person.geometry()["face_box"]
            assert -1e-6 <= x1 and -1e-6 <= y1 and x2 <= 224 + 1e-6 and y2 <= 224 + 1e-6  # faces stay in the image


def test_measured_level_agreement_matches_the_design(sampled):
    rows = [row for scene in sampled for row in person_fields(scene)]
    measured = level_agreement(rows)
    assert measured["people"] == len(rows) > 800
    for level, value in expected_level_agreement().items():
        assert abs(measured[level] - value) < 0.05, (level, measured, value)
    states = np.array([row["cue_body_state"] for row in rows])
    assert abs((states == "weak").mean() - 0.25) < 0.05 and abs((states == "absent").mean() - 0.15) < 0.05


# ------------------------------------------------------------------ the real FER+


def ferplus_real_root() -> Path | None:
    for candidate in (os.environ.get("EMOTION_FERPLUS"), PROJECT_ROOT.parent / "shared" / "data" / "ferplus"):
        if candidate and (Path(candidate) / "FER2013Train" / "label.csv").is_file() and (Path(candidate) / "FER2013Valid" / "label.csv").is_file():
            return Path(candidate)
    return None


def test_real_ferplus_faces_never_cross_splits():
    root = ferplus_real_root()
    if root is None:
        pytest.skip("FER+ not found (../shared/data/ferplus or $EMOTION_FERPLUS)")
    pools = {split: load_face_pool(str(root), split) for split in ("train", "val", "test")}
    sources = {split: pool.sources() for split, pool in pools.items()}
    assert all(s.startswith("FER2013Train/") for s in sources["train"])
    assert all(s.startswith("FER2013Valid/") for s in sources["val"] | sources["test"])
    assert sources["val"].isdisjoint(sources["test"])
    assert len(sources["train"]) > 20_000 and 1_000 < len(sources["val"]) < 2_000 and 1_000 < len(sources["test"]) < 2_000
    for split, pool in pools.items():
        assert min(len(faces) for faces in pool.by_category) >= 20  # fear is the rarest
        scene = next(iter(iter_scenes_v2(1, pool, seed=0, split=split, image_size=SMALL)))
        assert {p.face_source for p in scene.spec.people} <= sources[split]
