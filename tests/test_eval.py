"""`emotion eval` on a real FER2013 subset, and the CLI front."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from tests.configs import data_settings, synth_options
from tests.conftest import PROJECT_ROOT

CONFIG_DIR = str(PROJECT_ROOT / "jobs" / "configs")


def test_eval_fer_subset_accuracy(fer_root, capsys):
    from jobs.eval import run

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="eval", overrides=[
            "model=fer", "data=image_folder", f"data.root={fer_root / 'val'}", "limit_per_class=30"])
    report = run(cfg)
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["n"] == 7 * 30 and line["no_prediction"] == 0
    assert set(line["per_class"]) == {"angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"}
    # The full val split gives 0.584; a 210-image subset lands near it.
    assert line["accuracy"] >= 0.5
    assert line["per_class"]["happy"] >= 0.7
    assert report["accuracy"] == line["accuracy"]


def test_eval_applies_and_reports_its_score_weights(fer_root, tmp_path, capsys):
    """A weight of 1e6 on sad makes every face sad; the printed report says which weights
    made its numbers."""
    from jobs.eval import run

    copy_fer_faces(fer_root, tmp_path)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="eval", overrides=[
            "model=fer", "detector=full_frame", "data=image_folder", f"data.root={tmp_path}",
            "predictor.score_weights={sad:1000000}"])
    run(cfg)
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["n"] == 6 and line["accuracy"] == 0.5 and line["score_weights"] == {"sad": 1e6}
    assert (line["per_class"]["happy"], line["per_class"]["sad"]) == (0.0, 1.0)


FACES_PER_CLASS = 3


def copy_fer_faces(fer_root: Path, target: Path, classes: tuple[str, ...] = ("happy", "sad")) -> list[Path]:
    """``target/<class>/`` holding the first few real FER2013 validation faces of each class."""
    val = fer_root / "val"
    if not all((val / name).is_dir() for name in classes):
        pytest.skip(f"FER2013 validation classes {classes} not found under {val}")
    copied = []
    for name in classes:
        (target / name).mkdir(parents=True, exist_ok=True)
        for source in sorted((val / name).glob("*.jpg"))[:FACES_PER_CLASS]:
            copied.append(Path(shutil.copy(source, target / name / source.name)))
    return copied


def fer_eval_cfg(root: Path):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="eval", overrides=[
            "model=fer", "detector=full_frame", "data=image_folder", f"data.root={root}"])


def eval_folder(root: Path, capsys) -> tuple[dict, dict]:
    """The ``emotion eval`` path with the FER model on whole frames: (report, printed line)."""
    from jobs.eval import run

    report = run(fer_eval_cfg(root))
    return report, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_eval_scores_a_damaged_exif_jpeg_and_counts_a_truncated_one(fer_root, poison_exif_jpeg, tmp_path, capsys):
    """A JPEG whose EXIF block makes Pillow's exif_transpose raise struct.error once
    crashed `emotion eval`; it is now scored as stored, and a truncated JPEG is an image
    without a prediction, not the end of the evaluation."""
    faces = copy_fer_faces(fer_root, tmp_path)
    (tmp_path / "happy" / "poison_exif.jpg").write_bytes(poison_exif_jpeg)
    whole = faces[-1].read_bytes()  # a real FER face, cut in half
    (tmp_path / "sad" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])

    report, line = eval_folder(tmp_path, capsys)
    assert line["n"] == 2 * FACES_PER_CLASS + 2 == report["n"]
    assert line["no_prediction"] == 1  # the truncated file; the damaged-EXIF one got a prediction
    assert 0.0 <= line["accuracy"] <= 1.0 and set(line["per_class"]) >= {"happy", "sad"}


def test_eval_counts_unreadable_files_as_no_prediction(fer_root, tmp_path, capsys, monkeypatch):
    """A file that disappears between the listing and the read (or that we may not read)
    is that image's error, as a decode failure is: the evaluation goes on without it."""
    import emotion.evaluation as evaluation

    faces = copy_fer_faces(fer_root, tmp_path)
    gone = faces[0]
    listed = evaluation.list_image_folder

    def list_then_delete(*args, **kwargs):
        paths_classes = listed(*args, **kwargs)
        gone.unlink()  # vanishes after the listing, before the read
        return paths_classes

    monkeypatch.setattr(evaluation, "list_image_folder", list_then_delete)
    unreadable = 0
    if os.geteuid() != 0:  # root reads a chmod 000 file anyway
        faces[1].chmod(0)
        unreadable = 1
    report, line = eval_folder(tmp_path, capsys)
    assert line["n"] == 2 * FACES_PER_CLASS and line["no_prediction"] == 1 + unreadable

    from omegaconf import OmegaConf

    from emotion.predictor import build_predictor

    predictor = build_predictor(OmegaConf.to_container(fer_eval_cfg(tmp_path), resolve=True))
    scores = evaluation.first_person_scores(predictor, [str(gone), str(faces[-1])])
    assert np.isnan(scores[0]).all() and np.isfinite(scores[1]).all()


def test_eval_reads_a_tiff_class_folder(fer_root, tmp_path, capsys):
    """JAFFE ships as TIFF: `emotion eval` lists and scores .tif/.tiff faces as it does JPEGs
    (it once looked for other suffixes only and stopped with "no images under ...")."""
    from PIL import Image

    from emotion.images import IMAGE_SUFFIXES

    assert {".tif", ".tiff"} <= set(IMAGE_SUFFIXES)
    jpegs = copy_fer_faces(fer_root, tmp_path / "jpeg")
    for i, face in enumerate(jpegs):
        target = tmp_path / "tiff" / face.parent.name / f"{face.stem}.{'tif' if i % 2 else 'TIFF'}"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(face).save(target, format="TIFF")

    report, line = eval_folder(tmp_path / "tiff", capsys)
    assert line["n"] == 2 * FACES_PER_CLASS and line["no_prediction"] == 0
    assert set(line["per_class"]) >= {"happy", "sad"}
    # The same faces as JPEG score the same: TIFF is lossless, so the pixels are identical.
    jpeg_report, _ = eval_folder(tmp_path / "jpeg", capsys)
    assert report["accuracy"] == jpeg_report["accuracy"] and report["confusion"] == jpeg_report["confusion"]


def test_eval_rejects_unknown_classes(tmp_path):
    from PIL import Image

    from jobs.eval import run

    (tmp_path / "bored").mkdir()
    Image.new("RGB", (48, 48)).save(tmp_path / "bored" / "a.jpg")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="eval", overrides=[f"data.root={tmp_path}"])
    with pytest.raises(ValueError, match="bored"):
        run(cfg)


def test_eval_leaves_out_and_counts_faces_of_a_class_the_model_lacks(fer_root, tmp_path, capsys):
    """The 7-class mini-Xception on folders that include FER+'s contempt: the contempt faces
    are left out and counted, not scored as certain errors."""
    import shutil

    for name in ("happy", "contempt"):
        (tmp_path / name).mkdir()
        for path in sorted((fer_root / "val" / "happy").glob("*.jpg"))[:3]:
            shutil.copy(path, tmp_path / name / path.name)
    report, _ = eval_folder(tmp_path, capsys)  # model=fer
    assert report["n"] == 3 and report["left_out_classes"] == {"contempt": 3}


@pytest.mark.integration
def test_cli_help_and_unknown_command():
    out = subprocess.run([sys.executable, "-m", "emotion.cli", "--help"], capture_output=True, text=True, check=True)
    assert "tag" in out.stdout and "eval" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "emotion.cli", "frobnicate"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command" in bad.stderr


@pytest.mark.integration
def test_cli_reports_bad_config_key(tmp_path):
    """A typo in an override names the key instead of crashing with a traceback."""
    bad = subprocess.run([sys.executable, "-m", "emotion.cli", "tag", "detector.scroe_threshold=0.5"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode != 0 and "scroe_threshold" in bad.stderr


def test_dataset_eval_is_validation_with_the_model_spelling_its_classes_its_own_way(tmp_path):
    """`emotion eval data=synthetic` and validation during training give one report: the
    same rows, loop and metrics. The model names the classes differently from the data
    (happy for Happiness, ...): the one synonym table lines them up."""
    import torch

    from emotion.data import read_dataset
    from emotion.data.synthetic import generate_synthetic_emotic
    from emotion.evaluation import evaluate_dataset
    from emotion.labels import SYNTHETIC_CATEGORIES, remap_scores
    from emotion.models.registry import build_model
    from emotion.models.settings import yaml_config
    from emotion.training.loop import evaluate
    from emotion.training.rows import build_crop_spec, person_rows

    generate_synthetic_emotic(tmp_path, **synth_options(n_train=1, n_val=4, n_test=0, image_size=(96, 96), max_people=2, seed=0))
    model_labels = ["peace", "happy", "sad", "angry", "fearful", "surprised"]  # another order, other spellings
    torch.manual_seed(0)
    model = build_model("cocoer", yaml_config("cocoer", dict(
        labels=model_labels, multi_label=True, backbone="toy", vocab_backbone="toy", pretrained=False, input_size=32,
        d_h=32, d=32, n_blocks=1, n_heads=4, d_ff=64, dropout=0.0)))
    data = data_settings("synthetic", root=str(tmp_path), head_expand=1.25)
    report = evaluate_dataset(model, data, "val", max_side=960, batch_size=3)

    samples = read_dataset("synthetic", str(tmp_path), splits=["val"]).samples("val")
    rows = person_rows(samples, build_crop_spec(model, 1.25, 960), num_labels=6, multi_label=True)
    rows["labels"] = remap_scores(rows["labels"], list(SYNTHETIC_CATEGORIES), model_labels)
    validation = evaluate(model, [rows])
    assert report["n"] == validation["n"] == len(rows["labels"]) >= 4
    assert set(report["per_class_ap"]) == set(model_labels)
    assert report["mAP"] == pytest.approx(validation["mAP"], abs=1e-6)
    assert report["per_class_ap"] == pytest.approx(validation["per_class_ap"], abs=1e-6)
    assert report["split"] == "val" and report["images"] == 4 and "score" not in report
    with pytest.raises(ValueError, match="Peace"):
        evaluate_dataset(build_model("cocoer", {**model.config, "labels": model_labels[1:]}), data, "val",
                         max_side=960)


def test_a_model_without_shipped_weights_asks_for_its_checkpoint(tmp_path):
    from emotion.models.loading import input_spec
    from jobs.eval import run

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="eval", overrides=["model=dsct", "data=scenes_v2", f"data.root={tmp_path}"])
    with pytest.raises(ValueError, match="model.checkpoint=PATH"):
        run(cfg)
    with pytest.raises(ValueError, match="model.checkpoint=PATH"):
        input_spec({"name": "dsct", "checkpoint": "???"})
