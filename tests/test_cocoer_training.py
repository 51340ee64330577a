"""Training CocoER with the project's trainer: the family's collate, the vocabulary
projection's pre-training hook, the optimiser's parameters, and a real one-epoch Ray Train
run on synthetic scenes whose checkpoint loads, predicts and evaluates.

Tiny sizes: toy backbones, 32x32 crops, random init (no pretrained files needed).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from emotion.models.settings import yaml_config
from emotion.settings import ConfigError, LoopSettings, parse_settings
from tests.configs import NO_AUGMENT, augment_settings, default_section, loop_settings, merged, synth_options
from tests.conftest import PROJECT_ROOT

CONFIG_DIR = str(PROJECT_ROOT / "jobs" / "configs")
SIZE = 32


def tiny_cfg(labels, **overrides) -> dict:
    cfg = dict(labels=list(labels), multi_label=True, backbone="toy", vocab_backbone="toy", pretrained=False,
               input_size=SIZE, d_h=32, d=32, n_blocks=1, n_heads=4, d_ff=64, dropout=0.0)
    cfg.update(overrides)
    return yaml_config("cocoer", cfg)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    from emotion.data.synthetic import generate_synthetic_emotic

    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_emotic(root, **synth_options(n_train=10, n_val=4, n_test=4, image_size=(96, 96), max_people=2, seed=0))
    return root


@pytest.fixture(scope="module")
def train_rows(synthetic_root) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """Per-person rows of the train split, cut as the trainer cuts them."""
    from emotion.data import read_dataset
    from emotion.training.rows import CropSpec, person_rows

    data = read_dataset("synthetic", str(synthetic_root), splits=["train"])
    spec = CropSpec(("head", "body", "context"), SIZE, head_expand=1.25, max_side=960)
    return person_rows(data.samples("train"), spec, num_labels=len(data.labels), multi_label=True), tuple(data.labels)


def batches_of(rows: dict[str, np.ndarray], size: int) -> list[dict[str, np.ndarray]]:
    n = len(rows["labels"])
    return [{k: v[i:i + size] for k, v in rows.items()} for i in range(0, n, size)]


def family_and_model(labels, seed: int = 0, **overrides):
    from emotion.training.families import get_family

    family = get_family("cocoer")
    torch.manual_seed(seed)
    return family, family.build_model(tiny_cfg(labels, **overrides))


def test_family_is_registered_and_collate_matches_predict(train_rows):
    from emotion.training.cocoer_family import CocoERFamily

    rows, labels = train_rows
    family, model = family_and_model(labels)
    assert isinstance(family, CocoERFamily)
    model.eval()
    batch = batches_of(rows, 5)[0]
    b, k = len(batch["labels"]), len(labels)
    for flag in (True, False):
        inputs, targets = family.collate(batch, model, flag, torch.device("cpu"), augment_settings(),
                                         torch.Generator().manual_seed(0))
        assert set(inputs) == {"head", "body", "context"}
        assert all(x.shape == (b, 3, SIZE, SIZE) and x.dtype == torch.float32 for x in inputs.values())
        assert targets["labels"].shape == (b, k) and torch.equal(targets["labels"], torch.from_numpy(batch["labels"]))
    # Non-training inputs are what predict() feeds the network, so the projection
    # pre-training (which embeds them) sees exactly what tagging sees.
    inputs, _ = family.collate(batch, model, False, torch.device("cpu"))
    with torch.no_grad():
        scores = model.probabilities(model(**inputs)["logits"].float()).numpy()
    predicted = model.predict({m: batch[f"crop_{m}"] for m in model.input_levels})["scores"]
    np.testing.assert_array_equal(scores, predicted)
    assert scores.shape == (b, k) and ((scores > 0) & (scores < 1)).all()  # sigmoid: multi-label
    # Training inputs use the same normalisation: with every random transform off they
    # equal the evaluation inputs (up to grid_sample's resampling error).
    off = augment_settings(**NO_AUGMENT)
    plain, _ = family.collate(batch, model, True, torch.device("cpu"), off)
    for m in inputs:
        assert torch.allclose(plain[m], inputs[m], atol=1e-4)
    with pytest.raises(KeyError, match="crop_body"):
        family.collate({"crop_head": batch["crop_head"], "labels": batch["labels"]}, model, False, torch.device("cpu"))


def test_projection_pretraining_lowers_prototype_distance_and_touches_only_omega(train_rows):
    from emotion.models.joint.vocabulary import collect_embeddings, projection_loss

    rows, labels = train_rows
    family, model = family_and_model(labels)
    batches = batches_of(rows, 8)
    before_state = {n: t.clone() for n, t in model.state_dict().items()}
    report = family.before_training(model, batches, loop_settings(projection={"steps": 150, "lr": 0.02}),
                                    torch.device("cpu"))
    assert report["projection_images"] == len(rows["labels"])
    assert report["projection_loss_after"] < 0.5 * report["projection_loss_before"]
    # The distance it reports is the one of the rows' embeddings under the new ω.
    embeddings, targets = collect_embeddings(model.vocabulary, family.context_batches(model, batches, torch.device("cpu")))
    with torch.no_grad():
        distance = projection_loss(model.vocabulary.projection(embeddings), targets, model.vocabulary.prototypes)
    assert float(distance) == pytest.approx(report["projection_loss_after"], rel=1e-5)
    changed = {n for n, t in model.state_dict().items() if not torch.equal(t, before_state[n])}
    assert changed == {"vocabulary.projection.weight"}
    assert not model.vocabulary.projection.weight.requires_grad  # frozen again for the main loop
    assert model.training  # the model's mode is left as it was

    assert family.before_training(model, batches, loop_settings(projection={"steps": 0}), torch.device("cpu")) == {}
    with pytest.raises(ConfigError, match=r"train\.projection\.step: unknown key"):
        parse_settings(LoopSettings, merged(default_section("train", "train"), {"projection": {"step": 10}}),
                       prefix="train")


def test_optimizer_gets_only_trainable_parameters_and_criterion_has_all_terms(train_rows):
    from emotion.losses import DEFAULT_WEIGHTS
    from emotion.training.loop import build_optimizer

    rows, labels = train_rows
    family, model = family_and_model(labels)
    settings = loop_settings(lr=1e-3, loss_weights={"loss_grad_distance": 0.5})
    optimizer = build_optimizer(model, settings)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    frozen = {n for n, p in model.named_parameters() if id(p) not in in_optimizer}
    assert frozen and all(n.startswith(("vocabulary.image_encoder.", "vocabulary.projection.")) for n in frozen)
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}

    criterion = family.build_criterion(settings, model)
    inputs, targets = family.collate(batches_of(rows, 4)[0], model, True, torch.device("cpu"), settings.augment)
    losses = criterion(model(**inputs), targets)
    assert set(losses) == set(DEFAULT_WEIGHTS) | {"loss"}
    expected = sum({**DEFAULT_WEIGHTS, "loss_grad_distance": 0.5}[t] * losses[t] for t in DEFAULT_WEIGHTS)
    assert torch.allclose(losses["loss"], expected)
    losses["loss"].backward()
    assert model.vocabulary.classifier.weight.grad is not None  # FFN_1 trains inside the model
    assert model.vocabulary.projection.weight.grad is None  # ω does not


# -- a real Ray Train run ----------------------------------------------------------------
@pytest.fixture(scope="module")
def debug_run(ray_local, synthetic_root, tmp_path_factory):
    """`emotion train experiment=cocoer_debug` for one epoch with one worker."""
    from jobs.train import run

    output = tmp_path_factory.mktemp("cocoer_run") / "out"
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "experiment=cocoer_debug", f"data.root={synthetic_root}", f"output={output}", "train.batch_size=4"])
    return run(cfg), output


@pytest.mark.slow  # a real Ray Train run: about a minute on a busy 2-core machine
def test_one_epoch_run_writes_a_checkpoint_that_loads_and_predicts(debug_run, train_rows):
    from emotion.checkpoint import load_checkpoint
    from emotion.models.loading import load_model_from_checkpoint
    from emotion.models.joint.cocoer import CocoER
    from emotion.models.joint.vocabulary import collect_embeddings, projection_loss
    from emotion.training.cocoer_family import CocoERFamily

    summary, output = debug_run
    rows, labels = train_rows
    assert summary.epochs_run == 1 and summary.selection_metric == "mAP"
    assert summary.train_rows == len(rows["labels"])
    best = load_checkpoint(output / "best.ckpt")
    assert best["model_name"] == "cocoer" and best["labels"] == list(labels)
    assert best["model_cfg"]["input_size"] == SIZE and best["model_cfg"]["workspace"] is True
    assert 0.0 <= best["metrics"]["val_mAP"] <= 1.0

    model = load_model_from_checkpoint(output / "best.ckpt")
    assert isinstance(model, CocoER) and model.checkpoint_hash == best["sha256"]
    crops = {m: rows[f"crop_{m}"][:3] for m in model.input_levels}
    out = model.predict(crops)
    assert out["scores"].shape == (3, len(labels)) and out["level_scores"].shape == (3, 4, len(labels))
    assert out["refined"].all() and (out["dropped_levels"] >= 0).all()

    # ω was pre-trained before the epoch (and frozen during it): the checkpoint's ω puts the
    # training rows far closer to their label prototypes than a freshly initialised ω.
    family = CocoERFamily()
    embeddings, targets = collect_embeddings(model.vocabulary, family.context_batches(model, batches_of(rows, 8),
                                                                                      torch.device("cpu")))
    torch.manual_seed(123)
    fresh = CocoER(dict(best["model_cfg"], pretrained=False, prototypes_from_text=False)).vocabulary.projection
    with torch.no_grad():
        trained = projection_loss(model.vocabulary.projection(embeddings), targets, model.vocabulary.prototypes)
        untrained = projection_loss(fresh(embeddings), targets, model.vocabulary.prototypes)
    assert float(trained) < 0.5 * float(untrained)


@pytest.mark.slow  # a real Ray Train run: about a minute on a busy 2-core machine
def test_eval_command_scores_the_synthetic_test_split(debug_run, synthetic_root, capsys):
    """`emotion eval data=synthetic`: annotated people of the test split, mAP + per-class AP."""
    from emotion.labels import SYNTHETIC_CATEGORIES
    from jobs.eval import run

    _, output = debug_run
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="eval", overrides=[
            "model=cocoer", f"model.checkpoint={output / 'best.ckpt'}", "data=synthetic",
            f"data.root={synthetic_root}"])  # data/synthetic.yaml: test_split=test
    report = run(cfg)
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["split"] == "test" and line["n"] == report["n"] >= 4
    assert 0.0 <= line["mAP"] <= 1.0 and set(line["per_class_ap"]) == set(SYNTHETIC_CATEGORIES)
    assert line["model"].startswith("cocoer@sha256:")
