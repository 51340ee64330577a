"""DSCT through the project's training: whole-image rows, the family's collate (flip moves
the boxes with the pixels), the set criterion in the shared loop, validation by the DSCT
protocol, and one real Ray Train run of ``emotion train model=dsct``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from emotion.models.settings import yaml_config
from tests.configs import augment_settings, composed, loop_settings, synth_options
from tests.conftest import PROJECT_ROOT

CONFIG_DIR = str(PROJECT_ROOT / "jobs" / "configs")
TINY = dict(backbone="toy", pretrained=False, input_size=64, hidden_dim=32, nheads=2, ffn_dim=64, enc_layers=1,
            dec_layers=2, fuse_from_layer=1, num_subject_queries=4, num_context_queries=4, dropout=0.0)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from emotion.data import read_dataset
    from emotion.data.synthetic import generate_synthetic_emotic

    root = tmp_path_factory.mktemp("scenes")
    generate_synthetic_emotic(root, **synth_options(n_train=6, n_val=3, n_test=0, image_size=(96, 96), max_people=3))
    return root, read_dataset("synthetic", str(root), splits=["train", "val"])


def rows_of(data, split: str, max_people: int = 4):
    from emotion.training.image_rows import image_rows
    from emotion.training.rows import CropSpec, RowCounts

    counts = RowCounts()
    rows = image_rows(data.samples(split), CropSpec(("context",), 64, head_expand=1.25, max_side=960), counts,
                      num_labels=len(data.labels), multi_label=True, max_people=max_people)
    return rows, counts


def test_image_rows_hold_every_person_of_an_image(scenes):
    _, data = scenes
    rows, counts = rows_of(data, "train")
    samples = list(data.samples("train"))
    assert rows["crop_context"].shape == (len(samples), 64, 64, 3) and rows["crop_context"].dtype == np.uint8
    assert rows["boxes"].shape == (len(samples), 4, 4) and rows["people_labels"].shape == (len(samples), 4, 6)
    for i, sample in enumerate(samples):
        n = len(sample["labels"])
        assert rows["num_people"][i] == n
        assert np.isnan(rows["boxes"][i, n:]).all() and np.isfinite(rows["boxes"][i, :n]).all()
        x1, y1, x2, y2 = sample["person_boxes"][0]
        expected = [(x1 + x2) / 2 / sample["width"], (y1 + y2) / 2 / sample["height"],
                    (x2 - x1) / sample["width"], (y2 - y1) / sample["height"]]
        assert np.allclose(rows["boxes"][i, 0], expected, atol=1e-3)  # normalised cx, cy, w, h
        assert np.array_equal(rows["labels"][i], np.asarray(sample["labels"]).max(axis=0))
    assert counts.kept == int(rows["num_people"].sum())
    fewer, capped = rows_of(data, "train", max_people=1)
    assert fewer["boxes"].shape[1] == 1 and capped.skipped.get("more people than subject queries", 0) == (
        sum(len(s["labels"]) - 1 for s in samples))


def test_collate_flips_boxes_with_the_pixels(scenes):
    from emotion.training.families import get_family

    _, data = scenes
    rows, _ = rows_of(data, "train")
    family = get_family("dsct")
    model = family.build_model(yaml_config("dsct", {**TINY, "labels": list(data.labels)}))
    plain, targets = family.collate(rows, model, False, torch.device("cpu"))
    gen = torch.Generator().manual_seed(3)
    cfg = augment_settings(flip=True, brightness=0.0, contrast=0.0)
    flipped_inputs, flipped_targets = family.collate(rows, model, True, torch.device("cpu"), cfg, gen)
    for i, (a, b) in enumerate(zip(targets["people"], flipped_targets["people"])):
        mirrored = torch.allclose(flipped_inputs["context"][i], plain["context"][i].flip(-1), atol=1e-5)
        same = torch.allclose(flipped_inputs["context"][i], plain["context"][i], atol=1e-5)
        assert mirrored or same
        if mirrored and not same:
            assert torch.allclose(b["boxes"][:, 0], 1 - a["boxes"][:, 0]) and torch.equal(b["boxes"][:, 1:], a["boxes"][:, 1:])
        else:
            assert torch.equal(a["boxes"], b["boxes"])
    assert targets["labels"].shape == (len(rows["labels"]), 6)


def test_dsct_family_trains_in_the_shared_loop_and_validates_by_the_dsct_protocol(scenes):
    from emotion.training.families import get_family
    from emotion.training.loop import TrainState, build_optimizer, train_epoch
    from emotion.training.schedule import build_schedule

    _, data = scenes
    rows, _ = rows_of(data, "train")
    family = get_family("dsct")
    torch.manual_seed(0)
    model = family.build_model(yaml_config("dsct", {**TINY, "labels": list(data.labels)}))
    train_cfg = loop_settings(lr=1e-3, weight_decay=1e-4, warmup_epochs=0, epochs=1,
                              dsct={"backbone_lr_scale": 0.5, "loss_weights": {"bbox": 4.0}})
    optimizer = build_optimizer(model, train_cfg, family)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 5e-4]  # the backbone at lr x scale
    criterion = family.build_criterion(train_cfg, model)
    assert criterion.weight_dict["loss_bbox"] == 4.0 and "loss_bbox_0" in criterion.weight_dict
    batches = [{k: v[i:i + 3] for k, v in rows.items()} for i in range(0, len(rows["labels"]), 3)]
    state = TrainState()
    out = train_epoch(model, batches, family, criterion, optimizer, build_schedule(train_cfg, len(batches)), state,
                      device=torch.device("cpu"), augment_cfg=train_cfg.augment)
    assert math.isfinite(out["train_loss"]) and out["train_images"] == len(rows["labels"])
    val_rows, _ = rows_of(data, "val")
    report = family.evaluate(model, [val_rows])
    assert report["score"] == report["mAP"] and 0.0 <= report["ap50"] <= 1.0
    assert report["n"] == int(val_rows["num_people"].sum())


@pytest.mark.slow
def test_emotion_train_model_dsct_runs_through_ray_train(ray_local, scenes, tmp_path):
    from emotion.models.loading import load_model_from_checkpoint
    from jobs.train import run

    root, _ = scenes
    overrides = [f"model.{k}={v}" for k, v in TINY.items()] + [
        "model=dsct", "data=synthetic", f"data.root={root}", f"output={tmp_path}", "train.epochs=1",
        "train.batch_size=3", "train.torch_threads=1", "train.log_every=0"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    summary = run(cfg)
    assert summary.train_rows == 6 and summary.val_rows == 3 and summary.selection_metric == "mAP"
    assert "val_ap50" in summary.history[0]
    model = load_model_from_checkpoint(summary.best_checkpoint)
    assert model.name == "dsct" and model.config["num_subject_queries"] == 4


# -- tagging, serving and eval: the single-stage predictor --------------------------------
@pytest.fixture(scope="module")
def dsct_checkpoint(scenes, tmp_path_factory):
    from emotion.checkpoint import save_checkpoint
    from emotion.training.families import get_family

    _, data = scenes
    torch.manual_seed(0)
    model = get_family("dsct").build_model(yaml_config("dsct", {**TINY, "labels": list(data.labels)})).eval()
    return str(save_checkpoint(tmp_path_factory.mktemp("dsct") / "dsct.ckpt", model_name="dsct", model_cfg=model.config,
                               state_dict=model.state_dict(), labels=list(data.labels)))


def single_stage_predictor(checkpoint: str, score_threshold: float = 0.0, max_people: int = 3):
    from emotion.predictor import build_predictor

    cfg = composed("tag", ["model=dsct", f"model.checkpoint={checkpoint}", "model.device=cpu",
                           f"model.score_threshold={score_threshold}", "detector.device=cpu",
                           f"predictor.max_people={max_people}"])
    return build_predictor(cfg)


def test_a_single_stage_model_replaces_the_detector_and_fills_the_same_schema(scenes, dsct_checkpoint):
    from emotion import storage

    root, data = scenes
    predictor = single_stage_predictor(dsct_checkpoint)
    assert predictor.detector is None and predictor.spec.finds_people and predictor.spec.levels == ("context",)
    samples = list(data.samples("val"))
    payloads = [storage.read_bytes(s["image_uri"]) for s in samples] + [b"not an image"]
    sources = [s["image_uri"] for s in samples] + ["broken.jpg"]
    people = predictor.detect(predictor.decode(sources, payloads))
    assert "person_scores" in people and not any(k.startswith("crop_") for k in people)
    tables = predictor.predict_images(sources, payloads)
    assert [t.num_rows for t in tables] == [3] * len(samples) + [1]  # max_people each; the bad file: one error row
    rows = tables[0].to_pylist()
    assert all(r["face_box"] is None and r["body_box"] is not None for r in rows)
    assert rows[0]["detector_score"] >= rows[1]["detector_score"] >= rows[2]["detector_score"]
    assert all(r["level_scores"]["context"] == r["scores"] and r["level_scores"]["head"] is None for r in rows)
    assert rows[0]["model"].startswith("dsct@sha256:") and tables[-1].to_pylist()[0]["error"]
    width, height = samples[0]["width"], samples[0]["height"]
    boxes = np.array([r["body_box"] for r in rows])
    assert (boxes >= -1e-3).all() and (boxes[:, [0, 2]] <= width + 1e-3).all() and (boxes[:, [1, 3]] <= height + 1e-3).all()
    nobody = single_stage_predictor(dsct_checkpoint)
    nobody.person_threshold = 1.1  # above any score (a setting refuses it): no person is that sure
    empty = nobody.predict_images(sources[:1], payloads[:1])[0].to_pylist()
    assert len(empty) == 1 and empty[0]["person_index"] is None and empty[0]["error"] is None


def test_emotion_eval_scores_a_single_stage_model_by_the_dsct_protocol(scenes, dsct_checkpoint, capsys):
    from jobs.eval import run

    root, data = scenes
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="eval", overrides=["model=dsct", f"model.checkpoint={dsct_checkpoint}",
                                                     "model.score_threshold=0.0", "data=synthetic",
                                                     f"data.root={root}", "data.split=val", "model.device=cpu"])
    report = run(cfg)
    people = sum(len(s["labels"]) for s in data.samples("val"))
    assert report["protocol"] == "dsct" and report["n"] == people and 0.0 <= report["ap50"] <= 1.0
    assert 0.0 <= report["mAP"] <= 1.0 and 0.0 <= report["top1_accuracy"] <= 1.0 and report["images"] == 3
    assert '"ap50"' in capsys.readouterr().out


@pytest.mark.slow
def test_emotion_tag_with_a_single_stage_model_runs_no_detector(ray_local, scenes, dsct_checkpoint, tmp_path):
    """`emotion tag model=dsct`: the same Ray Data job and schema, both stage layouts."""
    import pyarrow.parquet as pq

    from jobs.tag import run

    root, data = scenes
    images = sorted((root / "synthetic" / "images").glob("val_*.jpg"))
    folder = tmp_path / "in"
    folder.mkdir()
    for path in images:
        (folder / path.name).write_bytes(path.read_bytes())
    for fuse in ("true", "false"):
        output = tmp_path / f"tags_{fuse}"
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="tag", overrides=[
                f"input={folder}", f"output={output}", "ray.num_cpus=2", "model=dsct",
                f"model.checkpoint={dsct_checkpoint}", "model.score_threshold=0.0", "predictor.max_people=2",
                f"stages.fuse={fuse}"])
        summary = run(cfg)
        rows = pq.read_table(sorted(output.glob("*.parquet"))).to_pylist()
        assert summary.images == len(images) and len(rows) == 2 * len(images)
        assert all(r["face_box"] is None and r["body_box"] is not None and r["model"].startswith("dsct@") for r in rows)


@pytest.mark.slow
def test_emotion_serve_with_a_single_stage_model_answers_like_the_predictor(ray_local, scenes, dsct_checkpoint):
    """`emotion serve model=dsct`: the HTTP API on a real local Ray Serve, no detector."""
    import socket

    import requests
    from ray import serve

    from emotion import storage
    from jobs.serve import run

    root, data = scenes
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="serve", overrides=[
            f"serve.port={port}", "serve.recognizer.num_cpus=0.5", "serve.recognizer.torch_threads=1",
            "serve.ingress.num_cpus=0.1", "model=dsct", f"model.checkpoint={dsct_checkpoint}",
            "model.device=cpu", "model.score_threshold=0.0", "predictor.max_people=2"])
    url = run(cfg)
    try:
        sample = next(iter(data.samples("val")))
        payload = storage.read_bytes(sample["image_uri"])
        response = requests.post(url + "/v1/recognize", files={"file": ("scene.jpg", payload, "image/jpeg")}, timeout=60)
        assert response.status_code == 200, response.text
        body = response.json()
        expected = single_stage_predictor(dsct_checkpoint, max_people=2).predict_bytes(["scene.jpg"], [payload]).to_pylist()
        assert body["model"].startswith("dsct@sha256:") and body["labels"] == list(data.labels)
        assert len(body["people"]) == len(expected) == 2
        for got, want in zip(body["people"], expected):
            assert got["face_box"] is None
            np.testing.assert_allclose(got["body_box"], want["body_box"], atol=1e-3)
            np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-5)
            np.testing.assert_allclose(got["detector_score"], want["detector_score"], atol=1e-5)
        bad = requests.post(url + "/v1/recognize", files={"file": ("x.jpg", b"not an image", "image/jpeg")}, timeout=60)
        assert bad.status_code == 400 and bad.json()["error"] == "not_an_image"
    finally:
        serve.shutdown()


def test_scene_truth_derives_unknown_bodies_from_faces_and_counts_people_it_cannot_place():
    from emotion.boxes import body_box_from_face
    from emotion.data.records import make_sample
    from emotion.evaluation import scene_truth

    nan = [np.nan] * 4
    sample = make_sample("x.jpg", "test", np.eye(3, dtype=np.float32), "synthetic",
                         person_boxes=np.array([[10, 10, 50, 90], nan, nan], np.float32),
                         face_boxes=np.array([nan, [60, 10, 70, 20], nan], np.float32), width=100, height=100)
    skipped: dict[str, int] = {}
    truth = scene_truth(sample, ["a", "b", "c"], ["c", "b", "a"], True, skipped)
    assert skipped == {"unknown body and face boxes": 1}
    assert np.allclose(truth["boxes"][0], [10, 10, 50, 90])
    assert np.allclose(truth["boxes"][1], body_box_from_face(np.array([[60, 10, 70, 20]], np.float32), (100, 100))[0])
    assert truth["labels"].tolist() == [[0, 0, 1], [0, 1, 0]]  # in the model's label order


def test_the_person_threshold_comes_from_the_dsct_config_or_the_dsct_yaml():
    """``model.score_threshold`` of a dsct config; a DSCT checkpoint named by another
    family's config (which has no such key) takes the value of dsct.yaml."""
    from emotion.models.protocol import InputSpec
    from emotion.models.settings import yaml_settings
    from emotion.predictor import _person_threshold

    spec = InputSpec(name="dsct", levels=("context",), input_size=64, labels=("a",), multi_label=True,
                     model_id="dsct@sha256:0", finds_people=True)
    assert _person_threshold({"name": "dsct", "score_threshold": 0.0}, spec) == 0.0
    dsct_yaml = yaml_settings("dsct")["score_threshold"]
    assert _person_threshold({"name": "qcs", "checkpoint": "dsct.ckpt"}, spec) == dsct_yaml
