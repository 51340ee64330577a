"""DSCT through the project's training: whole-image rows, the family's collate (flip moves
the boxes with the pixels), the set criterion in the shared loop, validation by the DSCT
protocol, and one real Ray Train run of ``emotion train model=dsct``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.conftest import PROJECT_ROOT

CONFIG_DIR = str(PROJECT_ROOT / "jobs" / "configs")
TINY = dict(backbone="toy", pretrained=False, input_size=64, hidden_dim=32, nheads=2, ffn_dim=64, enc_layers=1,
            dec_layers=2, fuse_from_layer=1, num_subject_queries=4, num_context_queries=4, dropout=0.0)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from emotion.data import read_dataset
    from emotion.data.synthetic import generate_synthetic_emotic

    root = tmp_path_factory.mktemp("scenes")
    generate_synthetic_emotic(root, n_train=6, n_val=3, n_test=0, image_size=(96, 96), max_people=3)
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
    model = family.build_model({**TINY, "labels": list(data.labels)})
    plain, targets = family.collate(rows, model, False, torch.device("cpu"))
    gen = torch.Generator().manual_seed(3)
    from emotion.training.augment import AugmentConfig

    cfg = AugmentConfig(flip=True, brightness=0.0, contrast=0.0)
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
    from emotion.training.augment import AugmentConfig
    from emotion.training.families import get_family
    from emotion.training.loop import TrainState, build_optimizer, train_epoch
    from emotion.training.schedule import build_schedule

    _, data = scenes
    rows, _ = rows_of(data, "train")
    family = get_family("dsct")
    torch.manual_seed(0)
    model = family.build_model({**TINY, "labels": list(data.labels)})
    train_cfg = {"lr": 1e-3, "dsct": {"backbone_lr_scale": 0.5, "loss_weights": {"bbox": 4.0}}}
    optimizer = build_optimizer(model, train_cfg, family)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 5e-4]  # the backbone at lr x scale
    criterion = family.build_criterion(train_cfg, model)
    assert criterion.weight_dict["loss_bbox"] == 4.0 and "loss_bbox_0" in criterion.weight_dict
    batches = [{k: v[i:i + 3] for k, v in rows.items()} for i in range(0, len(rows["labels"]), 3)]
    state = TrainState()
    out = train_epoch(model, batches, family, criterion, optimizer, build_schedule({}, len(batches), 1), state,
                      device=torch.device("cpu"), augment_cfg=AugmentConfig())
    assert math.isfinite(out["train_loss"]) and out["train_images"] == len(rows["labels"])
    val_rows, _ = rows_of(data, "val")
    report = family.evaluate(model, [val_rows])
    assert report["score"] == report["mAP"] and 0.0 <= report["ap50"] <= 1.0
    assert report["n"] == int(val_rows["num_people"].sum())


@pytest.mark.slow
def test_emotion_train_model_dsct_runs_through_ray_train(ray_local, scenes, tmp_path):
    from emotion.checkpoint import load_model_from_checkpoint
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
