"""Dataset readers on small fixtures written here in each format's real layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from emotion import storage
from emotion.data import read_dataset
from emotion.data.caer import read_caer
from emotion.data.emotic import read_emotic, read_emotic_csv
from emotion.data.image_folder import read_image_folder
from emotion.data.rafdb import read_rafdb
from emotion.data.records import class_indices, samples_to_table, row_to_sample
from emotion.labels import (
    CAER_CLASSES,
    EMOTIC_CATEGORIES,
    FER_CLASSES,
    FER_MODEL_CLASSES,
    LABEL_SETS,
    RAFDB_CLASSES,
    remap,
    remap_scores,
)
from tests.s3_server import s3_bucket, s3_endpoint, s3_server  # noqa: F401 (fixtures)

EMOTIC = {name: i for i, name in enumerate(EMOTIC_CATEGORIES)}


def write_jpeg(path: Path, width: int, height: int, value: int = 128, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG" if path.suffix == ".png" else "JPEG")


# ------------------------------------------------------------ EMOTIC Annotations.mat
# Built the way MATLAB stores the released file: struct arrays are numpy structured
# arrays of objects, cells are object arrays, everything 1 x N.


def struct_array(records: list[dict]) -> np.ndarray:
    array = np.empty((1, len(records)), dtype=[(name, object) for name in records[0]])
    for i, record in enumerate(records):
        for name, value in record.items():
            array[0, i][name] = value
    return array


def cell(*names: str) -> np.ndarray:
    out = np.empty((1, len(names)), dtype=object)
    for i, name in enumerate(names):
        out[0, i] = name
    return out


def vad_struct(v: float, a: float, d: float) -> dict:
    return {"valence": np.array([[v]]), "arousal": np.array([[a]]), "dominance": np.array([[d]])}


def train_person(box, names, vad) -> dict:
    return {
        "body_bbox": np.array([box], dtype=np.float64),
        "annotations_categories": struct_array([{"categories": cell(*names)}]),
        "annotations_continuous": struct_array([vad_struct(*vad)]),
        "gender": "Female",
        "age": "Adult",
    }


def multi_annotator_person(box, annotators, vads, combined=True) -> dict:
    person = {
        "body_bbox": np.array([box], dtype=np.float64),
        "annotations_categories": struct_array([{"categories": cell(*names)} for names in annotators]),
    }
    if combined:
        union = list(dict.fromkeys(n for names in annotators for n in names))
        person["combined_categories"] = cell(*union)
    person["annotations_continuous"] = struct_array([vad_struct(*v) for v in vads])
    if combined:
        person["combined_continuous"] = struct_array([vad_struct(*np.mean(vads, axis=0))])
    person["gender"] = "Male"
    person["age"] = "Teenager"
    return person


def image_entry(filename: str, folder: str, width: int, height: int, people: list[dict]) -> dict:
    return {
        "filename": filename,
        "folder": folder,
        "image_size": struct_array([{"n_col": np.array([[width]]), "n_row": np.array([[height]])}]),
        "original_database": struct_array([{"name": "mscoco", "info": struct_array([{"image_id": np.array([[7]])}])}]),
        "person": struct_array(people),
    }


@pytest.fixture
def emotic_root(tmp_path: Path) -> Path:
    root = tmp_path / "EMOTIC"
    images = root / "emotic"
    write_jpeg(images / "mscoco/images/a.jpg", 64, 48)
    write_jpeg(images / "mscoco/images/b.jpg", 40, 30)
    write_jpeg(images / "framesdb/images/c.jpg", 50, 50)
    write_jpeg(images / "emodb_small/images/d.jpg", 32, 32)
    train = struct_array(
        [
            image_entry("a.jpg", "mscoco/images", 64, 48, [
                train_person([1, 2, 30, 40], ["Engagement", "Excitement"], (6, 5, 7)),
                # reaches past the right/bottom border: clipped to 64 x 48
                train_person([35, 10, 70, 55], ["Peace"], (7, 3, 6)),
                # no category at all: dropped, as in mat2py
                train_person([0, 0, 5, 5], [], (np.nan, np.nan, np.nan)),
            ]),
            # one person, one category: loadmat squeezes these to scalars
            image_entry("b.jpg", "mscoco/images", 40, 30, [train_person([3, 3, 20, 25], ["Doubt/Confusion"], (4, 4, 4))]),
        ]
    )  # fmt: skip
    val = struct_array(
        [
            image_entry("c.jpg", "framesdb/images", 50, 50, [
                multi_annotator_person([5, 5, 45, 48], [["Happiness"], ["Happiness", "Pleasure"], ["Affection"]], [(8, 6, 7), (7, 6, 6), (9, 3, 8)]),
            ]),
        ]
    )  # fmt: skip
    test = struct_array(
        [
            # without combined_* fields the reader falls back to the union / the mean
            image_entry("d.jpg", "emodb_small/images", 32, 32, [
                multi_annotator_person([1, 1, 30, 30], [["Sadness"], ["Pain", "Sadness"]], [(2, 6, 3), (4, 4, 5)], combined=False),
            ]),
        ]
    )  # fmt: skip
    (root / "Annotations").mkdir(parents=True)
    scipy.io.savemat(root / "Annotations" / "Annotations.mat", {"train": train, "val": val, "test": test})
    return root


def test_emotic_mat_reads_people_boxes_labels_and_vad(emotic_root: Path):
    data = read_emotic(str(emotic_root))
    assert data.label_set == "emotic" and data.labels == EMOTIC_CATEGORIES
    assert data.counts() == {"train": 2, "val": 1, "test": 1}

    a, b = data.splits["train"]
    assert a["image_uri"] == str(emotic_root / "emotic/mscoco/images/a.jpg")
    assert (a["width"], a["height"]) == (64, 48)
    assert a["labels"].shape == (2, 26)  # the unlabelled third person is dropped
    np.testing.assert_array_equal(a["person_boxes"], [[1, 2, 30, 40], [35, 10, 64, 48]])
    assert np.flatnonzero(a["labels"][0]).tolist() == [EMOTIC["Engagement"], EMOTIC["Excitement"]]
    assert np.flatnonzero(a["labels"][1]).tolist() == [EMOTIC["Peace"]]
    np.testing.assert_array_equal(a["vad"], [[6, 5, 7], [7, 3, 6]])
    assert np.isnan(a["face_boxes"]).all() and a["face_boxes"].shape == (2, 4)  # EMOTIC has no faces
    assert np.flatnonzero(b["labels"][0]).tolist() == [EMOTIC["Doubt/Confusion"]]

    (c,) = data.splits["val"]
    assert np.flatnonzero(c["labels"][0]).tolist() == sorted(EMOTIC[n] for n in ("Happiness", "Pleasure", "Affection"))
    np.testing.assert_allclose(c["vad"][0], [8, 5, 7])  # combined_continuous: the mean
    (d,) = data.splits["test"]
    assert np.flatnonzero(d["labels"][0]).tolist() == [EMOTIC["Pain"], EMOTIC["Sadness"]]  # union
    np.testing.assert_allclose(d["vad"][0], [3, 5, 4])
    for sample in data.samples():
        assert sample["labels"].dtype == np.float32 and sample["person_boxes"].dtype == np.float32


def test_emotic_mat_split_selection_and_errors(emotic_root: Path, tmp_path: Path):
    assert list(read_emotic(str(emotic_root), splits=["val"]).splits) == ["val"]
    with pytest.raises(KeyError, match="no split 'dev'"):
        read_emotic(str(emotic_root), splits=["dev"])
    with pytest.raises(FileNotFoundError, match="Annotations.mat"):
        read_emotic(str(tmp_path / "nowhere"))
    bad = {"train": struct_array([image_entry("a.jpg", "x", 8, 8, [train_person([0, 0, 4, 4], ["Joy"], (5, 5, 5))])])}
    scipy.io.savemat(tmp_path / "Annotations.mat", bad)
    with pytest.raises(ValueError, match="unknown class name 'Joy'.*x/a.jpg"):
        read_emotic(str(tmp_path))


def test_emotic_from_s3_matches_local(emotic_root: Path, s3_bucket: str):
    for path in sorted(p for p in emotic_root.rglob("*") if p.is_file()):
        key = path.relative_to(emotic_root).as_posix()
        storage.write_bytes(f"s3://{s3_bucket}/emotic/{key}", path.read_bytes())
    remote = read_emotic(f"s3://{s3_bucket}/emotic")
    local = read_emotic(str(emotic_root))
    assert remote.counts() == local.counts()
    first = remote.splits["train"][0]
    assert first["image_uri"] == f"s3://{s3_bucket}/emotic/emotic/mscoco/images/a.jpg"
    np.testing.assert_array_equal(first["labels"], local.splits["train"][0]["labels"])
    assert storage.read_bytes(first["image_uri"]) == (emotic_root / "emotic/mscoco/images/a.jpg").read_bytes()


# ------------------------------------------------------------ EMOTIC CSV (mat2py)

MAT2PY_HEADER = "Index,Folder,Filename,Image Size,BBox,Categorical_Labels,Continuous_Labels,Gender,Age\n"


def test_emotic_csv_groups_people_by_image(tmp_path: Path):
    (tmp_path / "train.csv").write_text(
        MAT2PY_HEADER
        + "0,mscoco/images,a.jpg,\"[64, 48]\",\"[1, 2, 30, 40]\",\"['Engagement', 'Excitement']\",\"[6, 5, 7]\",Female,Adult\n"
        + "1,mscoco/images,a.jpg,\"[64, 48]\",\"[35, 10, 64, 48]\",\"['Peace']\",\"[7, 3, 6]\",Male,Adult\n"
        + "2,framesdb/images,b.jpg,\"[40, 30]\",\"[3, 3, 20, 25]\",\"['Doubt/Confusion']\",\"[4, 4, 4]\",Male,Kid\n"
    )
    (tmp_path / "val.csv").write_text(
        MAT2PY_HEADER + "0,framesdb/images,c.jpg,\"[50, 50]\",\"[5, 5, 45, 48]\",\"['Happiness', 'Pleasure']\",\"[8, 5, 7]\",Male,Adult\n"
    )
    data = read_emotic_csv(str(tmp_path), images_root="/data/emotic")
    assert data.counts() == {"train": 2, "val": 1}  # no test.csv: that split is absent
    a = data.splits["train"][0]
    assert a["image_uri"] == "/data/emotic/mscoco/images/a.jpg" and (a["width"], a["height"]) == (64, 48)
    np.testing.assert_array_equal(a["person_boxes"], [[1, 2, 30, 40], [35, 10, 64, 48]])
    assert [np.flatnonzero(row).tolist() for row in a["labels"]] == [[EMOTIC["Engagement"], EMOTIC["Excitement"]], [EMOTIC["Peace"]]]
    np.testing.assert_array_equal(a["vad"], [[6, 5, 7], [7, 3, 6]])
    with pytest.raises(FileNotFoundError, match="test"):
        read_emotic_csv(str(tmp_path), splits=["test"])


def test_emotic_csv_with_one_hot_columns(tmp_path: Path):
    header = "Folder,Filename,BBox," + ",".join(EMOTIC_CATEGORIES) + "\n"
    hot = ["0"] * 26
    hot[EMOTIC["Fear"]] = hot[EMOTIC["Surprise"]] = "1"
    (tmp_path / "test.csv").write_text(header + 'ade20k/images,z.jpg,"[0, 0, 9, 9]",' + ",".join(hot) + "\n")
    (sample,) = read_emotic_csv(str(tmp_path)).splits["test"]
    assert np.flatnonzero(sample["labels"][0]).tolist() == [EMOTIC["Fear"], EMOTIC["Surprise"]]
    assert np.isnan(sample["vad"]).all()
    (tmp_path / "val.csv").write_text("Folder,Filename\nx,y.jpg\n")
    with pytest.raises(ValueError, match="not an EMOTIC CSV"):
        read_emotic_csv(str(tmp_path), splits=["val"])


# ------------------------------------------------------------ CAER-S


@pytest.fixture
def caer_root(tmp_path: Path) -> Path:
    root = tmp_path / "CAER-S"
    write_jpeg(root / "train/Anger/0001.png", 40, 30)
    write_jpeg(root / "train/Anger/0002.png", 40, 30)
    write_jpeg(root / "train/Happy/0001.png", 40, 30)
    write_jpeg(root / "test/Sad/0001.png", 40, 30)
    write_jpeg(root / "test/Surprise/0003.jpg", 40, 30)
    (root / "train/Anger/notes.txt").write_text("not an image")
    return root


def test_caer_labels_splits_and_optional_face_boxes(caer_root: Path):
    boxes = caer_root / "faces.csv"
    boxes.write_text("path,x1,y1,x2,y2\ntrain/Anger/0002.png,5,6,25,28\n")
    data = read_caer(str(caer_root), face_boxes_uri=str(boxes))
    assert data.label_set == "caer" and data.labels == CAER_CLASSES
    assert data.counts() == {"train": 3, "test": 2}
    by_uri = {Path(s["image_uri"]).relative_to(caer_root).as_posix(): s for s in data.samples()}
    assert set(by_uri) == {"train/Anger/0001.png", "train/Anger/0002.png", "train/Happy/0001.png", "test/Sad/0001.png", "test/Surprise/0003.jpg"}
    names = {uri: CAER_CLASSES[class_indices(s["labels"])[0]] for uri, s in by_uri.items()}
    assert names["train/Happy/0001.png"] == "Happy" and names["test/Surprise/0003.jpg"] == "Surprise"
    for sample in data.samples():
        assert sample["labels"].shape == (1, 7) and sample["labels"].sum() == 1
        assert np.isnan(sample["person_boxes"]).all()
    np.testing.assert_array_equal(by_uri["train/Anger/0002.png"]["face_boxes"], [[5, 6, 25, 28]])
    assert np.isnan(by_uri["train/Anger/0001.png"]["face_boxes"]).all()  # detected at load time


def test_caer_rejects_unknown_class_folder(caer_root: Path):
    write_jpeg(caer_root / "train/Contempt/0001.png", 8, 8)
    with pytest.raises(ValueError, match="class folder 'Contempt'"):
        read_caer(str(caer_root))


# ------------------------------------------------------------ RAF-DB


@pytest.fixture
def rafdb_root(tmp_path: Path) -> Path:
    root = tmp_path / "RAF-DB" / "basic"
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel/list_patition_label.txt").write_text(
        "train_00001.jpg 5\ntrain_00002.jpg 1\ntest_0001.jpg 4\ntest_0002.jpg 7\n"
    )
    for name in ("train_00001", "train_00002", "test_0001"):
        write_jpeg(root / f"Image/aligned/{name}_aligned.jpg", 100, 100)
    write_jpeg(root / "Image/original/test_0002.jpg", 120, 90)  # no aligned version
    return root


def test_rafdb_partition_labels_and_face_boxes(rafdb_root: Path):
    data = read_rafdb(str(rafdb_root))
    assert data.counts() == {"train": 2, "test": 2}
    train1, train2 = data.splits["train"]
    assert train1["image_uri"].endswith("Image/aligned/train_00001_aligned.jpg")
    assert RAFDB_CLASSES[class_indices(train1["labels"])[0]] == "Sadness"  # label 5
    assert RAFDB_CLASSES[class_indices(train2["labels"])[0]] == "Surprise"  # label 1
    np.testing.assert_array_equal(train1["face_boxes"], [[0, 0, 100, 100]])
    test1, test2 = data.splits["test"]
    assert RAFDB_CLASSES[class_indices(test1["labels"])[0]] == "Happiness"
    assert test2["image_uri"].endswith("Image/original/test_0002.jpg")
    assert RAFDB_CLASSES[class_indices(test2["labels"])[0]] == "Neutral"
    assert np.isnan(test2["face_boxes"]).all()
    assert read_rafdb(str(rafdb_root), splits=["test"]).counts() == {"test": 2}
    # sizes read from the headers when not given
    assert read_rafdb(str(rafdb_root), aligned_size=None).splits["train"][0]["width"] == 100
    with pytest.raises(ValueError, match=r"_aligned.jpg is 100x100 pixels, but aligned_size declares 112x112"):
        read_rafdb(str(rafdb_root), aligned_size=(112, 112))


def test_rafdb_missing_image_and_bad_label_are_clear_errors(rafdb_root: Path):
    partition = rafdb_root / "EmoLabel/list_patition_label.txt"
    partition.write_text(partition.read_text() + "train_09999.jpg 2\n")
    with pytest.raises(FileNotFoundError, match="train_09999.jpg"):
        read_rafdb(str(rafdb_root))
    partition.write_text("train_00001.jpg 9\n")
    with pytest.raises(ValueError, match="line 1"):
        read_rafdb(str(rafdb_root))


# ------------------------------------------------------------ image folders (FER2013)


def test_image_folder_whole_image_is_the_face(tmp_path: Path):
    for split, name, count in (("train", "happy", 2), ("train", "angry", 1), ("val", "sad", 1)):
        for i in range(count):
            write_jpeg(tmp_path / split / name / f"{i}.jpg", 48, 48, value=i, mode="L")
    data = read_image_folder(str(tmp_path), label_set="fer")
    assert data.labels == FER_CLASSES and data.counts() == {"train": 3, "val": 1}
    for sample in data.samples():
        np.testing.assert_array_equal(sample["face_boxes"], [[0, 0, 48, 48]])
        assert (sample["width"], sample["height"]) == (48, 48)
    happy = [s for s in data.samples("train") if "/happy/" in s["image_uri"]]
    assert len(happy) == 2 and all(FER_CLASSES[class_indices(s["labels"])[0]] == "happy" for s in happy)
    # Without a label set the classes are the folder names; a CAER label set maps by synonym.
    assert read_image_folder(str(tmp_path)).labels == ("angry", "happy", "sad")
    caer = read_image_folder(str(tmp_path), label_set="caer", image_size=(48, 48))
    assert {CAER_CLASSES[class_indices(s["labels"])[0]] for s in caer.samples()} == {"Anger", "Happy", "Sad"}
    with pytest.raises(FileNotFoundError, match="test"):
        read_image_folder(str(tmp_path), splits=["test"])


def test_real_fer2013_val(fer_root: Path):
    data = read_dataset("fer", str(fer_root), splits=["val"], image_size=(48, 48))
    assert data.counts() == {"val": 3589}
    counts = np.stack([s["labels"][0] for s in data.samples()]).sum(axis=0)
    assert counts.sum() == 3589 and (counts > 0).all()


# ------------------------------------------------------------ labels and records


def test_label_sets_and_remap():
    assert len(LABEL_SETS["emotic"]) == 26 and LABEL_SETS["emotic"][9] == "Doubt/Confusion"
    assert set(LABEL_SETS) >= {"emotic", "caer", "rafdb", "fer"}
    # fer model order (angry, disgust, fear, happy, sad, surprise, neutral) -> folder order
    assert remap(FER_MODEL_CLASSES, FER_CLASSES).tolist() == [0, 1, 2, 3, 5, 6, 4]
    # synonyms: Happy -> Happiness (3), Sad -> Sadness (4), Anger -> Anger (5)
    assert remap(CAER_CLASSES, RAFDB_CLASSES).tolist() == [5, 2, 1, 3, 6, 4, 0]
    assert remap(("Contempt", "happy"), EMOTIC_CATEGORIES).tolist() == [-1, 16]
    scores = np.arange(7, dtype=np.float32)[None]
    np.testing.assert_array_equal(remap_scores(scores, FER_MODEL_CLASSES, FER_CLASSES), [[0, 1, 2, 3, 6, 4, 5]])


def test_one_synonym_table_maps_both_ways():
    """Dataset names onto a model's (what `emotion eval` needs) and a model's onto a
    dataset's come from the same table: the two maps are inverse permutations."""
    forward = remap(RAFDB_CLASSES, FER_MODEL_CLASSES)  # Happiness, Sadness, Anger -> happy, sad, angry
    backward = remap(FER_MODEL_CLASSES, RAFDB_CLASSES)
    assert (forward >= 0).all() and (backward >= 0).all()
    assert backward[forward].tolist() == list(range(7)) and forward[backward].tolist() == list(range(7))
    assert FER_MODEL_CLASSES[forward[RAFDB_CLASSES.index("Happiness")]] == "happy"
    assert RAFDB_CLASSES[backward[FER_MODEL_CLASSES.index("angry")]] == "Anger"


def test_samples_round_trip_through_arrow(caer_root: Path):
    data = read_caer(str(caer_root))
    table = samples_to_table(data.samples(), data.labels, data.label_set)
    assert table.num_rows == 5
    back = [row_to_sample(row) for row in table.to_pylist()]
    for original, restored in zip(data.samples(), back):
        np.testing.assert_array_equal(original["labels"], restored["labels"])
        np.testing.assert_array_equal(original["face_boxes"], restored["face_boxes"])  # NaN == NaN here


def test_unknown_format_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown dataset format 'coco'"):
        read_dataset("coco", str(tmp_path))


def test_a_declared_image_size_that_the_images_do_not_have_is_an_error(tmp_path):
    """FER2013's data config declares 48 x 48 to skip headers; pointed at larger faces it
    would cut one corner of each, so the first image of a split is checked."""
    for split in ("train", "val"):
        (tmp_path / split / "happy").mkdir(parents=True)
        Image.fromarray(np.full((64, 80, 3), 128, np.uint8)).save(tmp_path / split / "happy" / "a.jpg")
    with pytest.raises(ValueError, match=r"a.jpg is 80x64 pixels, but data.options.image_size declares 48x48"):
        read_image_folder(str(tmp_path), label_set="fer", image_size=(48, 48))
    samples = read_image_folder(str(tmp_path), label_set="fer", image_size=None).splits["val"]
    assert (samples[0]["width"], samples[0]["height"]) == (80, 64)
    assert read_image_folder(str(tmp_path), label_set="fer", image_size=(80, 64)).splits["train"][0]["width"] == 80
