"""Training: the framework-free loop pieces, and real Ray Train runs on a tiny image folder.

The Ray runs train ``face_cnn`` with the toy backbone on 32x32 crops of a three-class
folder dataset whose classes differ by where a bright band lies, so a few steps learn it.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from hydra import compose, initialize_config_dir
from PIL import Image

from tests.configs import NO_AUGMENT, augment_settings, default_section, loop_settings, synth_options
from tests.conftest import PROJECT_ROOT
from tests.s3_server import s3_bucket, s3_endpoint, s3_server  # noqa: F401 (fixtures)

CONFIG_DIR = str(PROJECT_ROOT / "jobs" / "configs")
CLASSES = ("angry", "happy", "sad")


def write_band_folder(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """``<root>/<split>/<class>/*.jpg``: 48x48 gray noise with a bright band whose row
    depends on the class. A ``test`` split holds a class the others lack: reading it
    during training would fail, so the tests also show test is never touched."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for index, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 60, (48, 48), dtype=np.uint8)
                pixels[index * 16:(index + 1) * 16] += 150
                Image.fromarray(pixels).save(folder / f"{i:03d}.jpg")
    (root / "test" / "bored").mkdir(parents=True, exist_ok=True)
    Image.new("L", (48, 48)).save(root / "test" / "bored" / "x.jpg")
    return root


@pytest.fixture(scope="module")
def band_folder(tmp_path_factory) -> Path:
    return write_band_folder(tmp_path_factory.mktemp("bands"), {"train": 16, "val": 6})


def train_cfg(data_root: Path | str, output: str, *extra: str, data: str = "image_folder"):
    overrides = [
        f"data={data}", f"data.root={data_root}",
        "model.backbone=toy", "model.pretrained=false", "model.input_size=32",
        "train.epochs=2", "train.batch_size=8", "train.lr=3e-3", "train.log_every=0", "train.warmup_epochs=0",
        f"output={output}", *extra,
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def ray_checkpoint_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("checkpoint_*/checkpoint.ckpt"))


# -- framework-free pieces ----------------------------------------------------------------
def test_schedules_warm_up_then_decay():
    from emotion.settings import ConfigError, LoopSettings, parse_settings
    from emotion.training.schedule import LRSchedule, build_schedule

    cosine = build_schedule(loop_settings(schedule="cosine", warmup_epochs=1, min_lr_factor=0.0, epochs=5),
                            steps_per_epoch=10)
    factors = [cosine.factor(s) for s in range(50)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))  # non-increasing after warm-up
    assert factors[-1] < 0.01
    step = build_schedule(loop_settings(schedule="step", step_epochs=2, gamma=0.1, warmup_epochs=0, epochs=6),
                          steps_per_epoch=10)
    assert [step.factor(s) for s in (0, 19, 20, 40)] == pytest.approx([1.0, 1.0, 0.1, 0.01])
    with pytest.raises(ValueError, match="unknown lr schedule"):
        LRSchedule("linear", total_steps=10, steps_per_epoch=10, warmup_steps=0, min_factor=0.0, step_epochs=3,
                   gamma=0.1)
    with pytest.raises(ConfigError, match="train.schedule='linear'"):
        parse_settings(LoopSettings, {**default_section("train", "train"), "schedule": "linear"}, prefix="train")


def test_mixed_precision_only_on_gpu():
    from emotion.training.loop import amp_dtype_for

    cpu = torch.device("cpu")
    assert all(amp_dtype_for(p, cpu) is None for p in ("auto", "fp32", "bf16", "fp16"))
    if torch.cuda.is_available():
        assert amp_dtype_for("fp16", torch.device("cuda")) == torch.float16
        assert amp_dtype_for("fp32", torch.device("cuda")) is None
    with pytest.raises(ValueError, match="precision"):
        amp_dtype_for("fp8", cpu)


def test_augment_is_seeded_and_keeps_shape_and_range():
    from emotion.settings import ConfigError, LoopSettings, parse_settings
    from emotion.training.augment import augment, prepare_eval

    images = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8))
    cfg = augment_settings(erase_prob=1.0)
    a = augment(images, cfg, torch.Generator().manual_seed(1))
    b = augment(images, cfg, torch.Generator().manual_seed(1))
    c = augment(images, cfg, torch.Generator().manual_seed(2))
    assert a.shape == (4, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    plain = prepare_eval(images)
    # With every transform off, augmentation is the identity up to resampling error.
    off = augment_settings(**NO_AUGMENT)
    assert torch.allclose(augment(images, off), plain, atol=1e-4)
    loop = default_section("train", "train")
    with pytest.raises(ConfigError, match="train.augment.hue: unknown key"):
        parse_settings(LoopSettings, {**loop, "augment": {**loop["augment"], "hue": 0.1}}, prefix="train")
    with pytest.raises(ValueError, match="train.augment"):
        augment(images, None)  # training batches cannot go without the settings


def test_person_rows_cut_heads_bodies_and_skip_unknown_boxes():
    from emotion.training.rows import CropSpec, RowCounts, person_rows

    pixels = np.zeros((100, 200, 3), np.uint8)
    pixels[10:30, 20:40] = 255  # a white "face"
    buffer = __import__("io").BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    sample = {
        "image_uri": "mem://a.png", "image_bytes": buffer.getvalue(),
        "face_boxes": np.array([[20, 10, 40, 30], [np.nan] * 4], np.float32),
        "person_boxes": np.array([[0, 0, 100, 100], [100, 0, 200, 100]], np.float32),
        "labels": np.array([[0, 1, 0], [1, 0, 0]], np.float32), "vad": None,
    }
    counts = RowCounts()
    spec = CropSpec(("head", "body", "context"), 16, head_expand=1.0, max_side=960)
    rows = person_rows([sample], spec, counts, num_labels=3)
    assert rows["crop_head"].shape == (1, 16, 16, 3) and rows["crop_body"].shape == (1, 16, 16, 3)
    assert rows["crop_head"].mean() > 250  # the head crop is the white face
    assert rows["labels"].tolist() == [[0, 1, 0]] and np.isnan(rows["vad"]).all()
    assert counts.kept == 1 and counts.skipped == {"unknown face box": 1}
    body_only = person_rows([sample], CropSpec(("body",), 16, head_expand=1.0, max_side=960), num_labels=3)
    assert len(body_only["labels"]) == 2  # no head level: the second person counts too


def test_train_state_keeps_the_best_validation_epoch_and_history_files(tmp_path):
    from emotion.training.history import write_history
    from emotion.training.loop import TrainState

    state = TrainState()
    flags = [state.record({"epoch": e, "train_loss": 1.0 / (e + 1), "val_score": s, "val_per_class": {"a": s}})
             for e, s in enumerate([0.5, 0.7, 0.6])]
    assert flags == [True, True, False] and (state.best_epoch, state.best_score) == (1, 0.7)
    csv_uri, json_uri = write_history(str(tmp_path), state.history, {"best_epoch": 1})
    rows = read_csv(Path(csv_uri))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"] and "val_per_class" not in rows[0]
    document = json.loads(Path(json_uri).read_text())
    assert document["summary"] == {"best_epoch": 1} and document["epochs"][1]["val_per_class"] == {"a": 0.7}


def test_epoch_loop_learns_and_checkpoint_round_trip_restores_optimizer(tmp_path):
    from emotion.models.registry import build_model
    from emotion.models.settings import yaml_config
    from emotion.training.families import get_family
    from emotion.training.loop import (TrainState, build_optimizer, evaluate, restore_training_checkpoint,
                                       save_training_checkpoint, train_epoch)
    from emotion.training.schedule import build_schedule

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 60, (48, 32, 32, 3), dtype=np.uint8)
    classes = np.arange(48) % 3
    for i, k in enumerate(classes):
        crops[i, k * 10:(k + 1) * 10] += 150
    labels = np.eye(3, dtype=np.float32)[classes]
    batches = [{"crop_head": crops[i:i + 12], "labels": labels[i:i + 12]} for i in range(0, 48, 12)]
    family = get_family("face_cnn")
    model = family.build_model(yaml_config("face_cnn", {"labels": list(CLASSES), "backbone": "toy", "pretrained": False,
                                                        "input_size": 32}))
    settings = loop_settings(lr=1e-2, schedule="constant", warmup_epochs=0, epochs=8, label_smoothing=0.0)
    optimizer = build_optimizer(model, settings)
    schedule = build_schedule(settings, steps_per_epoch=4)
    criterion = family.build_criterion(settings, model)
    state = TrainState()
    off = augment_settings(**NO_AUGMENT)
    losses = []
    for epoch in range(8):
        metrics = train_epoch(model, batches, family, criterion, optimizer, schedule, state,
                              device=torch.device("cpu"), augment_cfg=off)
        losses.append(metrics["train_loss"])
        state.epoch = epoch + 1
    assert losses[-1] < losses[0] * 0.7 and state.step == 32
    report = evaluate(model, batches)
    assert report["n"] == 48 and report["score"] == report["accuracy"] >= 0.9
    # Validation is `emotion eval`'s loop and report over the model's own predict().
    from emotion.evaluation import predict_rows
    from emotion.metrics import evaluation_report, score_batches

    scored = score_batches(lambda batch: predict_rows(model, batch), batches, 3)
    expected = evaluation_report(scored["scores"], scored["targets"], CLASSES, False)
    assert {k: v for k, v in report.items() if k not in ("score", "seconds")} == expected
    assert model.training  # predict() leaves the model in the mode it found it in

    path = save_training_checkpoint(str(tmp_path / "c.ckpt"), model_name="face_cnn", model=model,
                                    optimizer=optimizer, state=state, train_cfg={"x": 1}, metrics=report)
    fresh = build_model("face_cnn", dict(model.config))
    fresh_optimizer = build_optimizer(fresh, settings)
    restored = restore_training_checkpoint(path, fresh, fresh_optimizer)
    assert (restored.epoch, restored.step) == (8, 32)
    assert fresh_optimizer.state_dict()["state"][0]["step"].item() == 32
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)


# -- Ray Train ---------------------------------------------------------------------------
FIRST_RUN_OVERRIDES = ("train.rows_per_task=4",)


@pytest.fixture(scope="module")
def first_run(ray_local, band_folder, tmp_path_factory):
    """A 2-epoch run with one worker, its rows in 12 blocks; shared by the tests that only
    read its outputs."""
    from jobs.train import run

    folder = tmp_path_factory.mktemp("run")
    here = os.getcwd()
    os.chdir(folder)  # a relative output: workers run elsewhere, so it must be made absolute
    try:
        summary = run(train_cfg(band_folder, "out", *FIRST_RUN_OVERRIDES))
    finally:
        os.chdir(here)
    return summary, folder / "out"


def test_run_writes_checkpoints_with_all_fields_and_metrics(first_run):
    from emotion.checkpoint import load_checkpoint

    summary, output = first_run
    files = ray_checkpoint_files(output / "ray" / "run")
    assert len(files) == 2  # one per epoch (keep_checkpoints=2)
    latest = load_checkpoint(files[-1])
    assert latest["model_name"] == "face_cnn" and latest["labels"] == list(CLASSES)
    assert latest["epoch"] == 1 and latest["optimizer_state"]["state"]
    assert latest["model_cfg"]["labels"] == list(CLASSES) and latest["model_cfg"]["input_size"] == 32
    assert set(latest["metrics"]) >= {"epoch", "train_loss", "val_score", "val_accuracy", "lr"}
    extra = latest["extra"]
    assert extra["step"] == 2 * (48 // 8) and [r["epoch"] for r in extra["history"]] == [0, 1]
    assert extra["train_cfg"]["train"]["epochs"] == 2

    rows = read_csv(output / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert {"train_loss", "val_score", "val_accuracy", "lr", "train_images_per_s"} <= set(rows[0])
    document = json.loads((output / "metrics.json").read_text())
    assert len(document["epochs"]) == 2 and document["summary"]["best_checkpoint"].endswith("best.ckpt")
    assert summary.final_epoch == 1 and summary.train_rows == 48 and summary.val_rows == 18


def test_best_checkpoint_is_chosen_on_validation_and_loads_for_prediction(first_run):
    from emotion.checkpoint import load_checkpoint
    from emotion.models.loading import load_model_from_checkpoint
    from emotion.models.protocol import EmotionModel

    summary, output = first_run
    history = summary.history
    best_epoch = max(history, key=lambda r: (r["val_score"], -r["epoch"]))["epoch"]
    best = load_checkpoint(output / "best.ckpt")
    assert best["epoch"] == best_epoch == summary.best_epoch
    assert best["metrics"]["val_score"] == max(r["val_score"] for r in history)
    assert best["optimizer_state"] is None  # the export is for inference
    last = load_checkpoint(output / "last.ckpt")  # the final epoch's model, exported alongside
    assert last["epoch"] == summary.final_epoch and last["optimizer_state"] is None

    model = load_model_from_checkpoint(output / "best.ckpt")
    assert isinstance(model, EmotionModel) and model.name == "face_cnn" and model.input_levels == ("head",)
    assert model.checkpoint_hash == best["sha256"]
    crops = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    scores = model.predict({"head": crops})["scores"]
    assert scores.shape == (5, 3) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-5)


def test_epochs_before_validate_from_epoch_skip_validation(ray_local, band_folder, tmp_path):
    """Epoch 0 trains without validation; the last epoch is always validated, so it is the
    best, and with one checkpoint kept Ray keeps the validated latest."""
    from emotion.checkpoint import load_checkpoint
    from jobs.train import run

    summary = run(train_cfg(band_folder, str(tmp_path / "out"), "train.validate_from_epoch=5", "keep_checkpoints=1"))
    rows = read_csv(tmp_path / "out" / "metrics.csv")
    assert [(r["epoch"], r["val_score"], r["val_n"]) for r in rows][0] == ("0", "", "0")
    assert float(rows[1]["val_score"]) == summary.best_val_score and rows[1]["val_n"] == "18"
    assert summary.best_epoch == 1 and load_checkpoint(tmp_path / "out" / "best.ckpt")["epoch"] == 1
    assert summary.render().splitlines()[1].split()[-1] == "-"


def test_two_runs_of_one_seed_train_the_same_weights(first_run, band_folder, tmp_path):
    """The materialised rows keep sample order and the train split's block order is seeded
    (a new order each epoch), so with one worker a second run of the first run's config
    repeats it: the same losses and weights."""
    import torch

    from emotion.checkpoint import load_checkpoint
    from jobs.train import run

    first, first_output = first_run
    second = run(train_cfg(band_folder, str(tmp_path / "again"), *FIRST_RUN_OVERRIDES))
    assert [r["train_loss"] for r in first.history] == [r["train_loss"] for r in second.history]
    weights = [load_checkpoint(output / "last.ckpt")["state_dict"] for output in (first_output, tmp_path / "again")]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_resume_on_request_from_s3_checkpoints_with_prepared_data(ray_local, band_folder, s3_bucket):
    """Data, checkpoints and outputs all on the S3 test server: prepared Parquet shards
    read by Ray Data, Ray Train storage on s3://; a second run with resume=true continues
    from the saved epoch with the optimiser state restored."""
    from emotion import storage
    from emotion.checkpoint import load_checkpoint
    from emotion.models.loading import load_model_from_checkpoint
    from emotion.data.prepare import prepare_dataset
    from jobs.train import run

    prepared = f"s3://{s3_bucket}/prepared"
    prepare_dataset("image_folder", str(band_folder), prepared, shard_rows=20, splits=["train", "val"], plot=False)
    output, runs = f"s3://{s3_bucket}/fer", f"s3://{s3_bucket}/ray"

    def cfg(*extra):
        return train_cfg(prepared, output, "data.head_expand=1.0", f"storage_path={runs}", *extra, data="prepared")

    first = run(cfg("train.epochs=1"))
    assert first.final_epoch == 0 and first.train_rows == 48 and first.val_rows == 18
    checkpoints = [n for n in storage.list_files(f"{runs}/run") if n.endswith("/checkpoint.ckpt")]
    assert len(checkpoints) == 1
    with pytest.raises(ValueError, match="resume=true"):  # an existing run is never silently extended
        run(cfg("train.epochs=2"))

    second = run(cfg("train.epochs=2", "resume=true"))
    assert [(r["epoch"], r["start_epoch"]) for r in second.history] == [(0, 0), (1, 1)]
    latest = load_checkpoint(sorted(n for n in storage.list_files(f"{runs}/run") if n.endswith("/checkpoint.ckpt"))[-1])
    steps = 48 // 8
    assert latest["epoch"] == 1 and latest["extra"]["step"] == 2 * steps
    # AdamW's own step count went on from the saved optimiser state, not from zero.
    assert latest["optimizer_state"]["state"][0]["step"] == 2 * steps
    csv_text = storage.read_bytes(f"{output}/metrics.csv").decode()
    assert [row["epoch"] for row in csv.DictReader(csv_text.splitlines())] == ["0", "1"]

    best = load_checkpoint(f"{output}/best.ckpt")
    assert best["labels"] == list(CLASSES) and best["epoch"] == second.best_epoch
    model = load_model_from_checkpoint(f"{output}/best.ckpt")
    assert model.predict({"head": np.zeros((2, 32, 32, 3), np.uint8)})["scores"].shape == (2, 3)


def test_eval_command_reads_a_trained_checkpoint(first_run, band_folder, capsys, tmp_path):
    from jobs.eval import run

    summary, output = first_run
    png = tmp_path / "confusion.png"
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="eval", overrides=[
            "model=face_cnn", f"model.checkpoint={output / 'best.ckpt'}", "data=image_folder",
            f"data.root={band_folder / 'val'}", f"confusion_png={png}"])
    report = run(cfg)
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["n"] == 18 and set(line["per_class"]) == set(CLASSES)
    assert line["model"].startswith("face_cnn@sha256:")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert math.isclose(report["accuracy"], line["accuracy"])
    # The same crops through the same loop and report: validation's number is eval's.
    assert math.isclose(line["accuracy"], summary.best_val_score)


def test_cocoer_family_trains_on_synthetic_scene_rows(tmp_path):
    """The CocoER family plugs into the same loop: rows with head/body/context crops from
    synthetic EMOTIC-style scenes, its five-term criterion, mAP as the selection score."""
    from emotion.data import read_dataset
    from emotion.data.synthetic import generate_synthetic_emotic
    from emotion.models.settings import yaml_config
    from emotion.training.families import get_family
    from emotion.training.loop import TrainState, build_optimizer, evaluate, train_epoch
    from emotion.training.rows import CropSpec, person_rows
    from emotion.training.schedule import build_schedule

    generate_synthetic_emotic(tmp_path, **synth_options(n_train=6, n_val=2, n_test=0, image_size=(96, 96), max_people=2))
    data = read_dataset("synthetic", str(tmp_path), splits=["train"])
    family = get_family("cocoer")
    torch.manual_seed(0)
    model = family.build_model(yaml_config("cocoer", dict(
        labels=list(data.labels), multi_label=True, backbone="toy", vocab_backbone="toy", pretrained=False,
        input_size=32, d_h=32, d=32, n_blocks=1, n_heads=4, d_ff=64)))
    rows = person_rows(data.samples("train"), CropSpec(tuple(model.input_levels), 32, head_expand=1.25, max_side=960),
                       num_labels=len(data.labels), multi_label=True)
    assert {f"crop_{m}" for m in ("head", "body", "context")} <= set(rows) and len(rows["labels"]) >= 6
    batches = [{k: v[i:i + 4] for k, v in rows.items()} for i in range(0, len(rows["labels"]), 4)]
    settings = loop_settings(lr=1e-3, epochs=1, warmup_epochs=0)
    criterion = family.build_criterion(settings, model)
    optimizer = build_optimizer(model, settings)
    state = TrainState()
    out = train_epoch(model, batches, family, criterion, optimizer, build_schedule(settings, len(batches)), state,
                      device=torch.device("cpu"), augment_cfg=settings.augment)
    assert math.isfinite(out["train_loss"]) and state.step == len(batches)
    report = evaluate(model, batches)
    assert report["score"] == report["mAP"] and 0.0 <= report["mAP"] <= 1.0 and "per_class_ap" in report


@pytest.mark.parametrize("name", sorted(p.stem for p in (PROJECT_ROOT / "jobs/configs/experiment").glob("*.yaml")))
def test_experiments_compose_into_trainable_configs(name):
    """Every experiment composes and validates as the train job's settings."""
    from emotion.settings import parse_train_settings
    from emotion.training.families import FAMILIES

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={name}", "data.root=/data"])
    settings = parse_train_settings(OmegaConf.to_container(cfg, resolve=True))
    assert settings.model.name in FAMILIES and settings.train.epochs >= 1 and settings.scaling.num_workers >= 1
    if settings.data.format == "sources":  # several datasets: each names its own splits
        sources = settings.data.sources.values()
        assert any(s.trained for s in sources) and all(s.root.startswith("/data/") for s in sources)
    else:
        assert settings.data.train_split and settings.data.val_split


@pytest.mark.slow
def test_fer_mobilenet_experiment_smoke(ray_local, fer_root, tmp_path):
    """The shipped experiment on a FER2013 subset: one epoch, real ImageNet MobileNetV2."""
    from emotion.models.loading import load_model_from_checkpoint
    from jobs.train import run

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "experiment=fer_mobilenet", f"data.root={fer_root}", f"output={tmp_path}", "limit=128",
            "train.epochs=1", "train.torch_threads=1"])
    summary = run(cfg)
    assert summary.train_rows == 128 and summary.val_rows == 128
    model = load_model_from_checkpoint(summary.best_checkpoint)
    assert model.name == "face_cnn" and model.input_size == 64 and len(model.labels) == 7


# -- Ray Train's PlacementGroupCleaner polling warning ----------------------------------
def test_placement_group_cleaner_filter_drops_only_the_poll_warning(monkeypatch):
    """The cleaner logs "Failed to query ..." once a second while the State API is down
    (always, without a dashboard); the filter drops that record and keeps the cleaner's
    other warnings. The logger name and text are checked against the installed Ray."""
    import inspect

    from ray.train.v2._internal.execution.controller import placement_group_cleaner

    from emotion.pipelines.ray_env import (PG_CLEANER_LOGGER, PG_CLEANER_POLL_FAILED, QUIET_TRAIN_POLLING_HOOK,
                                           PlacementGroupCleanerPollFilter, job_runtime_env, quiet_train_polling)

    assert placement_group_cleaner.logger.name == PG_CLEANER_LOGGER
    assert PG_CLEANER_POLL_FAILED in inspect.getsource(placement_group_cleaner.PlacementGroupCleaner._monitor_loop)

    logger = logging.getLogger(PG_CLEANER_LOGGER)
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    monkeypatch.setattr(logger, "filters", [])  # restored afterwards: this process's logger is shared
    logger.addHandler(handler)
    try:
        quiet_train_polling()
        quiet_train_polling()  # a second call adds no second filter
        assert sum(isinstance(f, PlacementGroupCleanerPollFilter) for f in logger.filters) == 1
        logger.warning("Failed to query Ray Train Controller actor state. State API may be temporarily "
                       "unavailable. Continuing to monitor.")
        logger.warning("Detected that the Ray Train controller actor (%s) is dead. Cleaning up placement group.", "x")
        logger.warning("Failed to clean up placement group: boom")
    finally:
        logger.removeHandler(handler)
    assert seen == ["Detected that the Ray Train controller actor (x) is dead. Cleaning up placement group.",
                    "Failed to clean up placement group: boom"]

    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert job_runtime_env(QUIET_TRAIN_POLLING_HOOK) == {
        "env_vars": {"AWS_REGION": "eu-west-1"}, "worker_process_setup_hook": QUIET_TRAIN_POLLING_HOOK}


# Run in a fresh process: the hook is set when Ray starts, and this session's Ray is shared.
_HOOK_REACHES_DETACHED_ACTORS = """
import json, logging, ray
from emotion.pipelines.ray_env import PG_CLEANER_LOGGER, QUIET_TRAIN_POLLING_HOOK, init_ray
from emotion.settings import RaySettings

@ray.remote(num_cpus=0)
class Cleaner:  # stands in for Ray Train's PlacementGroupCleaner: detached, started by an actor
    def log(self):
        seen = []
        handler = logging.Handler()
        handler.emit = lambda record: seen.append(record.getMessage())
        logger = logging.getLogger(PG_CLEANER_LOGGER)
        logger.addHandler(handler)
        logger.warning("Failed to query Ray Train Controller actor state. Continuing to monitor.")
        logger.warning("Failed to clean up placement group: boom")
        return seen

@ray.remote(num_cpus=0)
class Controller:  # stands in for Ray Train's controller, started with its own env_vars
    def cleaner_log(self):
        cleaner = Cleaner.options(lifetime="detached").remote()
        try:
            return ray.get(cleaner.log.remote())
        finally:
            ray.kill(cleaner)

init_ray(RaySettings(address=None, num_cpus=1, num_gpus=None, include_dashboard=False, log_to_driver=False,
                     object_store_memory=None), worker_setup_hook=QUIET_TRAIN_POLLING_HOOK)
controller = Controller.options(runtime_env={"env_vars": {"RAY_TRAIN_V2_ENABLED": "1"}}).remote()
print("SEEN", json.dumps(ray.get(controller.cleaner_log.remote())))
ray.shutdown()
"""


@pytest.mark.integration
def test_training_ray_runs_the_filter_hook_in_detached_actors(tmp_path):
    """The warning is logged in the cleaner actor's process (the driver only prints it as
    forwarded text), so the filter must be installed there: init_ray's setup hook reaches a
    detached actor started by an actor with its own runtime_env, like Ray Train's cleaner."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", _HOOK_REACHES_DETACHED_ACTORS], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("SEEN "))[5:])
    assert seen == ["Failed to clean up placement group: boom"]


def test_a_mixture_of_datasets_trains_in_one_label_space_and_scores_each_source(ray_local, band_folder, tmp_path):
    """data=faces: three class-folder sources (FER2013's class names) in FER+'s 8 classes.
    One is trained on twice per epoch, one is only scored (and not chosen by), one is
    cross-validated (three of four folds trained on, the fourth scored); each is reported."""
    from emotion.checkpoint import load_checkpoint
    from jobs.train import run

    sources = (f"{{a: {{format: fer, root: '{band_folder}', weight: 2.0, train_split: train, val_split: val, "
               f"select: true, options: {{}}, folds: null}}, b: {{format: fer, root: '{band_folder}', weight: 0.0, "
               f"train_split: null, val_split: val, select: false, options: {{}}, folds: null}}, "
               f"c: {{format: fer, root: '{band_folder}', weight: 1.0, train_split: train, val_split: null, "
               f"select: false, options: {{}}, folds: {{count: 4, held_out: 1}}}}}}")
    cfg = train_cfg(tmp_path, str(tmp_path / "out"), "~data.sources", f"+data.sources={sources}",
                    "train.epochs=1", data="faces")
    summary = run(cfg)
    assert summary.train_rows == 2 * 48 + 36 and summary.val_rows == 2 * 18 + 12  # c: 4 folds of 48
    row = summary.history[0]
    assert {"val_a_accuracy", "val_b_accuracy", "val_c_accuracy", "val_a_ece", "val_b_mean_recall"} <= set(row)
    assert row["val_score"] == pytest.approx(row["val_a_accuracy"])  # b and c are held out: select: false
    best = load_checkpoint(tmp_path / "out" / "best.ckpt")
    assert best["labels"][-1] == "contempt" and len(best["labels"]) == 8
    # Fine-tuning from it: a new run from its weights only, so epoch 0 runs again; it also
    # learns the scores of a teacher, an ensemble checkpoint loaded on every worker.
    from emotion.models.face.ensemble import write_ensemble_checkpoint

    teacher = write_ensemble_checkpoint([tmp_path / "out" / "best.ckpt"] * 2, tmp_path / "teacher.ckpt")
    tuned = run(train_cfg(tmp_path, str(tmp_path / "tuned"), "~data.sources", f"+data.sources={sources}",
                          "train.epochs=1", f"init_weights={tmp_path / 'out' / 'best.ckpt'}",
                          f"train.distill.teacher={teacher}", "train.distill.weight=0.5", data="faces"))
    assert tuned.epochs_run == 1 and tuned.history[0]["epoch"] == 0
    assert math.isfinite(tuned.history[0]["train_loss"])
