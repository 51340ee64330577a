"""Both label sets of FER2013's faces: FER+'s PNGs matched to FER2013's class-folder JPEGs
(equalised, re-encoded copies under other names) by pixel ranks, and FER2013's label mixed
into the FER+ train targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image, ImageOps

from emotion.data import fer2013_labels as matching
from emotion.data.ferplus import ferplus_counts, mix_second_label, read_ferplus, reads_fer2013_copy
from emotion.labels import FERPLUS_CLASSES
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.unit

CONFIG_DIR = str(PROJECT_ROOT / "jobs" / "configs")

# FER+ PNG name -> (FER2013 class folder of its copy, FER+ votes). "lonely" has no copy.
FACES = {
    "fer0000000.png": ("sad", [6, 0, 0, 4, 0, 0, 0, 0, 0, 0]),      # FER+ neutral/sadness, FER2013 sad
    "fer0000001.png": ("happy", [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]),   # both happy
    "fer0000002.png": ("fear", [0, 0, 7, 0, 0, 0, 3, 0, 0, 0]),     # FER+ surprise/fear, FER2013 fear
    "fer0000003.png": ("angry", [0, 0, 0, 0, 8, 2, 0, 0, 0, 0]),
    "lonely.png": (None, [10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
}
VAL_VOTES = [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]


def copy_name(i: int) -> str:
    """The file name of the i-th FACES entry's FER2013 copy (another naming scheme)."""
    return f"Training_{9000 - i}.jpg"


def face(seed: int) -> np.ndarray:
    """A smooth random 48 x 48 gray texture: distinct pixel ranks per seed, like faces."""
    coarse = np.random.default_rng(seed).uniform(40, 200, size=(6, 6)).astype(np.float32)
    img = np.asarray(Image.fromarray(coarse).resize((48, 48), Image.BICUBIC))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def two_releases(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """FER+ (FER2013Train with the FACES, FER2013Valid with one face) and FER2013's class
    folders holding equalised JPEG copies of every FACES entry but "lonely", plus one
    unrelated face."""
    monkeypatch.setenv("EMOTION_CACHE", str(tmp_path / "cache"))
    ferplus, fer2013 = tmp_path / "ferplus", tmp_path / "fer2013"
    lines = []
    for i, (name, (label, votes)) in enumerate(FACES.items()):
        pixels = face(i)
        (ferplus / "FER2013Train").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(ferplus / "FER2013Train" / name)
        lines.append(f'{name},"(0, 0, 48, 48)",' + ",".join(map(str, votes)))
        if label:
            copy = fer2013 / "train" / label / copy_name(i)
            copy.parent.mkdir(parents=True, exist_ok=True)
            ImageOps.equalize(Image.fromarray(pixels)).save(copy, quality=85)
    (ferplus / "FER2013Train" / "label.csv").write_text("\n".join(lines) + "\n")
    (fer2013 / "train" / "neutral").mkdir()
    ImageOps.equalize(Image.fromarray(face(99))).save(fer2013 / "train" / "neutral" / "Training_1.jpg")
    (ferplus / "FER2013Valid").mkdir()
    Image.fromarray(face(0)).save(ferplus / "FER2013Valid" / "fer0000100.png")
    (ferplus / "FER2013Valid" / "label.csv").write_text('fer0000100.png,"(0, 0, 48, 48)",' +
                                                        ",".join(map(str, VAL_VOTES)) + "\n")
    return ferplus, fer2013


def pngs(ferplus: Path) -> dict[str, str]:
    return {p.name: str(p) for p in sorted((ferplus / "FER2013Train").glob("*.png"))}


def test_rank_correlation_survives_equalising_and_jpeg():
    pixels = face(3)
    copy = np.asarray(ImageOps.equalize(Image.fromarray(pixels)))
    vectors = matching.rank_vectors([pixels, copy, face(4)])
    assert vectors.shape == (3, 48 * 48)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > 0.99
    assert vectors[0] @ vectors[2] < 0.5


def test_best_matches_chunked_equals_direct(monkeypatch):
    rng = np.random.default_rng(0)
    queries, refs = rng.normal(size=(7, 16)).astype(np.float32), rng.normal(size=(5, 16)).astype(np.float32)
    direct = queries @ refs.T
    monkeypatch.setattr(matching, "_CHUNK", 3)
    index, score = matching.best_matches(queries, refs)
    np.testing.assert_array_equal(index, direct.argmax(1))
    np.testing.assert_allclose(score, direct.max(1), rtol=1e-6)
    empty_index, empty_score = matching.best_matches(queries, refs[:0])
    assert (empty_score == -1).all() and len(empty_index) == 7


def test_match_finds_each_copy_and_leaves_faces_without_one(two_releases):
    ferplus, fer2013 = two_releases
    matched = matching.match_fer2013_labels(pngs(ferplus), str(fer2013 / "train"))
    assert {name: label for name, (label, _, _) in matched.items()} == \
        {name: label for name, (label, _) in FACES.items() if label}
    assert all(score >= matching.MIN_RANK_CORRELATION for _, score, _ in matched.values())
    assert {name: Path(uri).name for name, (_, _, uri) in matched.items()} == \
        {name: copy_name(i) for i, (name, (label, _)) in enumerate(FACES.items()) if label}


def test_copies_are_cached_and_the_cache_is_keyed_by_the_listings(two_releases, monkeypatch):
    ferplus, fer2013 = two_releases
    first = matching.fer2013_copies(pngs(ferplus), str(fer2013 / "train"))
    path = matching.cache_path(pngs(ferplus), str(fer2013 / "train"))
    assert path.is_file()

    def no_matching(*args, **kwargs):
        raise AssertionError("the cached matching should have been read")

    monkeypatch.setattr(matching, "_match", no_matching)
    assert matching.fer2013_copies(pngs(ferplus), str(fer2013 / "train")) == first
    ImageOps.equalize(Image.fromarray(face(50))).save(fer2013 / "train" / "happy" / "Training_2.jpg")
    assert matching.cache_path(pngs(ferplus), str(fer2013 / "train")) != path  # a new file: a new key


def test_missing_class_folders_are_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="class folders"):
        matching.match_fer2013_labels({}, str(tmp_path))


def test_reader_mixes_fer2013_labels_into_train_targets_only(two_releases):
    ferplus, fer2013 = two_releases
    plain = read_ferplus(str(ferplus), "crossentropy")
    mixed = read_ferplus(str(ferplus), "crossentropy", fer2013_root=str(fer2013), fer2013_weight=0.25)
    index = {name: i for i, name in enumerate(FERPLUS_CLASSES)}
    second = {"sad": "sadness", "happy": "happiness", "fear": "fear", "angry": "anger"}
    for before, after in zip(plain.samples("train"), mixed.samples("train")):
        name = Path(before["image_uri"]).name
        expected = 0.75 * before["labels"][0]
        label = FACES[name][0]
        if label:
            expected[index[second[label]]] += 0.25
        else:
            expected = before["labels"][0]  # no FER2013 copy: FER+ alone
        np.testing.assert_allclose(after["labels"][0], expected, atol=1e-6)
        assert after["labels"][0].sum() == pytest.approx(1.0)
    for before, after in zip(plain.samples("val"), mixed.samples("val")):
        np.testing.assert_array_equal(before["labels"], after["labels"])  # the test protocol stays


@pytest.mark.parametrize("probability", [0.0, 0.5, 1.0])
def test_reader_reads_a_fixed_share_of_faces_from_their_fer2013_copy(two_releases, probability):
    ferplus, fer2013 = two_releases
    mixed = read_ferplus(str(ferplus), "crossentropy", fer2013_root=str(fer2013), fer2013_image_prob=probability)
    plain = read_ferplus(str(ferplus), "crossentropy")
    copies = {name: copy_name(i) for i, (name, (label, _)) in enumerate(FACES.items()) if label}
    read_from_copy = 0
    for before, after in zip(plain.samples("train"), mixed.samples("train")):
        name = Path(before["image_uri"]).name
        np.testing.assert_array_equal(after["labels"], before["labels"])  # weight 0: FER+ targets
        if reads_fer2013_copy(name, probability) and name in copies:
            assert Path(after["image_uri"]).name == copies[name]
            read_from_copy += 1
        else:
            assert after["image_uri"] == before["image_uri"]
    assert read_from_copy == {0.0: 0, 1.0: len(copies)}.get(probability, read_from_copy)
    assert [s["image_uri"] for s in mixed.samples("val")] == [s["image_uri"] for s in plain.samples("val")]
    counts = ferplus_counts(str(ferplus), "crossentropy", fer2013_root=str(fer2013), fer2013_image_prob=probability)
    assert counts["train"].get("fer2013_rendering", 0) == read_from_copy


def test_copy_draw_is_fixed_per_name_and_near_the_probability():
    names = [f"fer{i:07d}.png" for i in range(4000)]
    draws = [reads_fer2013_copy(name, 0.5) for name in names]
    assert draws == [reads_fer2013_copy(name, 0.5) for name in names]
    assert 0.46 < sum(draws) / len(draws) < 0.54
    assert not any(reads_fer2013_copy(name, 0.0) for name in names)
    assert all(reads_fer2013_copy(name, 1.0) for name in names)


def test_mix_second_label_rules():
    target = np.array([0.6, 0.4, 0, 0, 0, 0, 0, 0], np.float32)
    np.testing.assert_array_equal(mix_second_label(target, None, 0.3), target)
    np.testing.assert_array_equal(mix_second_label(target, "fear", 0.0), target)
    np.testing.assert_allclose(mix_second_label(target, "Happy", 0.5), [0.3, 0.7, 0, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="not a FER\\+ class"):
        mix_second_label(target, "bored", 0.5)


@pytest.mark.parametrize("kwargs, message", [
    ({"fer2013_weight": 0.3}, "needs fer2013_root"),
    ({"fer2013_weight": 1.0, "fer2013_root": "x"}, r"must be in \[0, 1\)"),
    ({"fer2013_weight": -0.1, "fer2013_root": "x"}, r"must be in \[0, 1\)"),
    ({"fer2013_image_prob": 0.5}, "fer2013_image_prob > 0 needs fer2013_root"),
    ({"fer2013_image_prob": 1.5, "fer2013_root": "x"}, r"fer2013_image_prob must be in \[0, 1\]"),
])
def test_bad_weight_or_missing_root_is_a_clear_error(two_releases, kwargs, message):
    with pytest.raises(ValueError, match=message):
        read_ferplus(str(two_releases[0]), "crossentropy", **kwargs)


def test_experiment_passes_both_label_sets_to_the_reader():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=qcs_ferplus_both", "data.root=R",
                                                      "data.fer2013_root=F"])
    options = OmegaConf.to_container(cfg.data.options, resolve=True)
    assert options == {"mode": "crossentropy", "fer2013_root": "F", "fer2013_weight": 0.25, "fer2013_image_prob": 0.0}
    assert cfg.model.name == "qcs" and cfg.model.equalize is True  # the rest is qcs_ferplus


def test_renderings_experiment_adds_only_the_fer2013_copies():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        both = compose(config_name="train", overrides=["experiment=qcs_ferplus_both", "data.root=R",
                                                       "data.fer2013_root=F"])
        renderings = compose(config_name="train", overrides=["experiment=qcs_ferplus_renderings", "data.root=R",
                                                             "data.fer2013_root=F"])
    a, b = (OmegaConf.to_container(c, resolve=True) for c in (both, renderings))
    assert b["data"]["options"]["fer2013_image_prob"] == 0.5
    assert a["data"]["options"]["fer2013_image_prob"] == 0.0
    a["data"]["options"]["fer2013_image_prob"] = b["data"]["options"]["fer2013_image_prob"]
    a["data"]["fer2013_image_prob"] = b["data"]["fer2013_image_prob"]
    a["output"] = b["output"]
    assert a == b  # nothing else differs from the both-label-sets run
