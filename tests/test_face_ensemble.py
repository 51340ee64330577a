"""``face_ensemble``: one checkpoint whose scores are the mean of its members' scores, built
by ``emotion ensemble`` and loaded, tagged and evaluated like any other model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emotion.models.face.qcs import QCSNet
from emotion.models.protocol import model_id
from emotion.models.settings import yaml_config
from emotion.weights import KNOWN_WEIGHTS
from tests.configs import composed

LABELS = ["neutral", "happiness", "sadness", "anger"]


def tiny_member_checkpoint(path, seed: int, **overrides) -> str:
    from emotion.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    cfg = {"labels": LABELS, "backbone": "toy", "pretrained": False, "input_size": 32, "embed_dim": 16,
           "dropout": 0.0, "grayscale": False, **overrides}
    model = QCSNet(yaml_config("qcs", cfg))
    return str(save_checkpoint(path, model_name="qcs", model_cfg=model.config, state_dict=model.state_dict(),
                               labels=model.labels))


@pytest.fixture()
def members(tmp_path) -> list[str]:
    return [tiny_member_checkpoint(tmp_path / "a.ckpt", 0),
            tiny_member_checkpoint(tmp_path / "b.ckpt", 1, test_flip=True)]


def test_an_ensemble_checkpoint_scores_the_mean_of_its_members(members, tmp_path):
    from emotion.checkpoint import load_checkpoint
    from emotion.models.face.ensemble import write_ensemble_checkpoint
    from emotion.models.loading import input_spec, load_model_from_checkpoint, spec_of

    path = write_ensemble_checkpoint(members, tmp_path / "ens.ckpt", half=False)
    ensemble = load_model_from_checkpoint(path)
    singles = [load_model_from_checkpoint(m) for m in members]
    crops = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    outputs = ensemble.predict({"head": crops})
    member_scores = np.stack([m.predict({"head": crops})["scores"] for m in singles])
    assert outputs["member_scores"].shape == (2, 5, len(LABELS))
    np.testing.assert_allclose(outputs["member_scores"], member_scores, atol=1e-6)
    np.testing.assert_allclose(outputs["scores"], member_scores.mean(axis=0), atol=1e-6)
    assert not np.allclose(member_scores[0], member_scores[1])  # two different members
    # Each member keeps its own inference keys (the second averages the mirror image).
    assert [m.config["test_flip"] for m in ensemble.members] == [False, True]
    # One model to the predictor: one crop, one label list, one id recorded in every row.
    ckpt = load_checkpoint(path)
    spec = spec_of(ensemble)
    assert spec == input_spec({"name": "face_ensemble", "checkpoint": path})
    assert spec.levels == ("head",) and spec.input_size == 32 and spec.labels == tuple(LABELS)
    assert spec.model_id == f"face_ensemble@sha256:{ckpt['sha256'][:16]}"
    assert ckpt["extra"]["members"] == [{"checkpoint": m, "sha256": load_checkpoint(m)["sha256"]} for m in members]
    columns = ensemble.output_columns(outputs)
    np.testing.assert_array_equal(columns["level_scores"]["head"], outputs["scores"])
    # Shipped as float16: half the bytes, the same scores to fp16's precision.
    half = load_model_from_checkpoint(write_ensemble_checkpoint(members, tmp_path / "ens16.ckpt"))
    np.testing.assert_allclose(half.predict({"head": crops})["scores"], outputs["scores"], atol=2e-3)
    stored = load_checkpoint(tmp_path / "ens16.ckpt")["state_dict"]
    assert {t.dtype for t in stored.values() if t.is_floating_point()} == {torch.float16}
    assert stored.keys() == ensemble.state_dict().keys()


def test_members_that_disagree_or_are_too_few_are_refused(members, tmp_path):
    from emotion.models.face.ensemble import write_ensemble_checkpoint
    from emotion.models.loading import build_emotion_model, input_spec
    from emotion.settings import ConfigError

    other_size = tiny_member_checkpoint(tmp_path / "c.ckpt", 2, input_size=48)
    with pytest.raises(ValueError, match=r"members\[1\] reads \['head'\] at 48 px"):
        write_ensemble_checkpoint([members[0], other_size], tmp_path / "x.ckpt")
    other_labels = tiny_member_checkpoint(tmp_path / "d.ckpt", 3, labels=LABELS[::-1])
    with pytest.raises(ValueError, match="same labels"):
        write_ensemble_checkpoint([members[0], other_labels], tmp_path / "x.ckpt")
    with pytest.raises(ValueError, match="at least 2 members"):
        write_ensemble_checkpoint(members[:1], tmp_path / "x.ckpt")
    nested = write_ensemble_checkpoint(members, tmp_path / "ens.ckpt")
    with pytest.raises(ValueError, match="itself an ensemble"):
        write_ensemble_checkpoint([nested, members[0]], tmp_path / "x.ckpt")
    with pytest.raises(FileNotFoundError, match="no/such"):
        write_ensemble_checkpoint([members[0], "/no/such.ckpt"], tmp_path / "x.ckpt")
    # The model group loads the shipped ensemble; without a checkpoint it says what to pass.
    model_cfg = composed("tag", ["model=face_ensemble"])["model"]
    assert input_spec(model_cfg).model_id == model_id("face_ensemble", KNOWN_WEIGHTS["qcs_ensemble"].sha256)
    with pytest.raises(ValueError, match="model.checkpoint=PATH"):
        build_emotion_model({**model_cfg, "checkpoint": None})
    with pytest.raises(ValueError, match="no members"):
        input_spec({**model_cfg, "checkpoint": None})
    with pytest.raises(ConfigError, match="model.members.0.colour"):
        input_spec({"name": "face_ensemble", "labels": None, "members": [
            {"name": "qcs", "config": {}, "colour": 1}, {"name": "qcs", "config": {}}]})


def test_emotion_ensemble_of_the_shipped_weights_tags_the_mean_of_their_records(tmp_path, capsys):
    """The command users run on the shipped weights, then the tagging predictor (the one
    that tag, serve and eval share): each record's scores are the mean of the records the
    members give alone, and the row names the ensemble."""
    from emotion.cli import main
    from emotion.predictor import build_predictor

    out = tmp_path / "ens.ckpt"
    main(["ensemble", "--out", str(out), "qcs_ferplus", "qcs_face_v2"])
    assert "face_ensemble of 2 members" in capsys.readouterr().out
    rng = np.random.default_rng(0)
    from PIL import Image
    import io

    payloads = []
    for _ in range(3):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, size=(96, 80, 3), dtype=np.uint8)).save(buffer, format="PNG")
        payloads.append(buffer.getvalue())
    sources = ["a.png", "b.png", "c.png"]

    def records(*model):
        cfg = composed("tag", [*model, "model.device=cpu", "detector=full_frame"])
        return [t.to_pylist()[0] for t in build_predictor(cfg).predict_images(sources, payloads)]

    ensemble = records("model=face_ensemble", f"model.checkpoint={out}")
    default = records("model=qcs", "model.checkpoint=qcs_ferplus")
    v2 = records("model=qcs", "model.checkpoint=qcs_face_v2")
    for got, first, second in zip(ensemble, default, v2):
        np.testing.assert_allclose(got["scores"], (np.array(first["scores"]) + np.array(second["scores"])) / 2,
                                   atol=1e-6)
        assert got["model"].startswith("face_ensemble@sha256:") and got["error"] is None
        assert got["face_box"] == first["face_box"]


def test_emotion_ensemble_says_what_is_wrong_in_one_line(tmp_path, caplog):
    from emotion.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["ensemble", "--out", str(tmp_path / "x.ckpt"), "qcs_ferplus"])
    assert exit_.value.code == 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "an ensemble needs at least 2 members, got 1"]
    assert not (tmp_path / "x.ckpt").exists()


# -- distillation: a student learns its labels and a teacher's scores ----------------------
def test_a_distilled_family_adds_the_teachers_scores_and_the_distillation_term(members, tmp_path):
    import torch.nn.functional as F

    from emotion.models.face.ensemble import write_ensemble_checkpoint
    from emotion.models.loading import load_model_from_checkpoint
    from emotion.settings import DistillSettings
    from emotion.training.distillation import Distilled, teacher_probabilities
    from emotion.training.families import get_family

    teacher = load_model_from_checkpoint(write_ensemble_checkpoint(members, tmp_path / "ens.ckpt", half=False))
    settings = DistillSettings(teacher=str(tmp_path / "ens.ckpt"), weight=0.7, temperature=2.0)
    family = Distilled(get_family("qcs"), teacher, settings)
    student = family.build_model(yaml_config("qcs", {
        "labels": LABELS, "backbone": "toy", "pretrained": False, "input_size": 32, "embed_dim": 16,
        "dropout": 0.0, "grayscale": False}))
    rng = np.random.default_rng(0)
    labels = np.eye(len(LABELS), dtype=np.float32)[[0, 0, 1, 1, 2, 2, 3, 3]]
    labels[6:, 3] = np.nan  # rows of a dataset without the last class
    labels[6:, :3] = np.eye(3, dtype=np.float32)[[1, 2]]
    batch = {"crop_head": rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8), "labels": labels}
    loop = _loop_settings()
    inputs, targets = family.collate(batch, student, True, torch.device("cpu"), loop.augment,
                                     torch.Generator().manual_seed(0))
    probabilities = targets["teacher_probabilities"]
    # The mean of the members' tempered softmaxes on the crops the student sees.
    expected = torch.stack([torch.softmax(m(head=inputs["head"])["logits"] / 2.0, dim=-1) for m in teacher.members])
    torch.testing.assert_close(probabilities, expected.mean(dim=0))
    torch.testing.assert_close(probabilities.sum(dim=-1), torch.ones(8))
    assert not probabilities.requires_grad and not any(p.requires_grad for p in family.teacher.parameters())
    single = load_model_from_checkpoint(members[0])
    torch.testing.assert_close(teacher_probabilities(single, inputs, 1.0),
                               torch.softmax(single(head=inputs["head"])["logits"], dim=-1))
    # Validation batches get no teacher.
    assert "teacher_probabilities" not in family.collate(batch, student, False, torch.device("cpu"))[1]

    criterion = family.build_criterion(loop, student)
    outputs = student(**inputs)
    terms = criterion(outputs, targets)
    base = criterion.base(outputs, targets)["loss"]
    distill = F.kl_div(F.log_softmax(outputs["logits"] / 2.0, dim=-1), probabilities, reduction="batchmean") * 4.0
    torch.testing.assert_close(terms["loss"], 0.3 * base + 0.7 * distill)
    torch.testing.assert_close(terms["loss_distill"], distill.detach())
    assert {"loss_base", "loss_refined"} <= set(terms)
    terms["loss"].backward()
    assert student.classifier.weight.grad is not None and torch.isfinite(student.classifier.weight.grad).all()
    # A student that agrees with the teacher has no distillation term.
    agreeing = {"logits": torch.log(probabilities) * 2.0}
    assert float(criterion.loss_distill(agreeing, targets)) == pytest.approx(0.0, abs=1e-6)


def _loop_settings():
    from emotion.settings import LoopSettings

    return LoopSettings.model_validate(composed("train", ["data.root=/data", "model=qcs"])["train"])


def test_a_teacher_that_reads_other_crops_is_refused_before_training(members, tmp_path):
    from emotion.models.loading import input_spec
    from emotion.training.distillation import check_teacher

    student = input_spec({"checkpoint": members[0]})
    check_teacher(student, input_spec({"checkpoint": members[1]}))
    other = tiny_member_checkpoint(tmp_path / "c.ckpt", 2, input_size=48)
    with pytest.raises(ValueError, match=r"train.distill.teacher reads \['head'\] at 48 px"):
        check_teacher(student, input_spec({"checkpoint": other}))
