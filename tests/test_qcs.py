"""QCS: quadruplet sampler, cross-similarity branches, single-branch inference, the
FER+ target modes, SAM, and a tiny model that overfits."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from emotion.models.backbones import imagenet_normalize
from emotion.models.face.cnn import equalize_histogram
from emotion.models.face.qcs import CROSS_PARTNER, SAME_PARTNER, CrossSimilarityAttention, QCSNet
from emotion.models.settings import yaml_config
from emotion.training.loop import sam_ascend, sam_descend
from emotion.training.qcs_family import QCSCriterion, QCSFamily
from emotion.training.quadruplets import sample_quadruplets
from emotion.training.targets import classification_loss
from tests.configs import augment_settings, loop_settings

pytestmark = pytest.mark.unit

LABELS = ["neutral", "happiness", "surprise", "sadness"]


def tiny_qcs(**overrides) -> QCSNet:
    torch.manual_seed(0)
    cfg = {"labels": LABELS, "backbone": "toy", "pretrained": False, "input_size": 32, "embed_dim": 16,
           "dropout": 0.0, "grayscale": False, **overrides}
    return QCSNet(yaml_config("qcs", cfg))


# -- sampler -----------------------------------------------------------------------------
def test_quadruplets_pair_two_images_of_one_class_with_two_of_another():
    classes = np.array([0, 1, 2, 0, 1, 2, 0, 1, 3, 3, 0, -1, 2, 1])
    quads = sample_quadruplets(classes, np.random.default_rng(0))
    assert quads.shape[1] == 4 and 2 <= len(quads) <= 3  # 6 pairs; one class may be left with pairs
    for a1, a2, b1, b2 in quads:
        assert classes[a1] == classes[a2] >= 0 and classes[b1] == classes[b2] >= 0
        assert classes[a1] != classes[b1]
    used = quads.reshape(-1)
    assert len(set(used.tolist())) == len(used)  # every row at most once
    assert 11 not in used  # class -1: no label


def test_quadruplets_same_seed_same_quadruplets_and_none_without_two_classes():
    classes = np.random.default_rng(3).integers(0, 5, size=64)
    first = sample_quadruplets(classes, np.random.default_rng(42))
    assert np.array_equal(first, sample_quadruplets(classes, np.random.default_rng(42)))
    assert not np.array_equal(first, sample_quadruplets(classes, np.random.default_rng(43)))
    assert sample_quadruplets(np.array([2, 2, 2, 2, 5]), np.random.default_rng(0)).shape == (0, 4)
    assert sample_quadruplets(np.array([], dtype=np.int64), np.random.default_rng(0)).shape == (0, 4)


def test_quadruplets_are_class_balanced_not_frequency_weighted():
    # Class 0 is 10x more frequent than classes 1-4 (40 of 56 rows); capped at 4 quadruplets
    # a batch, classes are drawn uniformly, so each is in about 1/5 of the pairs (class 0 a
    # little more as the rare classes run out of pairs), not class 0 in 5/7 of them.
    classes = np.array([0] * 40 + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4)
    counts: Counter = Counter()
    for seed in range(300):
        quads = sample_quadruplets(classes, np.random.default_rng(seed), max_quadruplets=4)
        counts.update(classes[quads[:, [0, 2]]].reshape(-1).tolist())
    total = sum(counts.values())
    assert 0.2 <= counts[0] / total < 0.26
    for c in range(1, 5):
        assert 0.17 < counts[c] / total <= 0.2


# -- network -----------------------------------------------------------------------------
def test_cross_similarity_attention_shapes():
    attention = CrossSimilarityAttention(16)
    out = attention(torch.randn(6, 9, 16), torch.randn(6, 4, 16))
    assert out.shape == (6, 9, 16)


def test_forward_shapes_and_swapping_the_pairs_swaps_the_outputs():
    model = tiny_qcs().eval()
    images = torch.randn(8, 3, 32, 32)
    quads = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    out = model(images, quads)
    assert out["logits"].shape == (8, 4) and out["features"].shape == (8, 16)
    assert out["refined_logits"].shape == (2, 4, 4)
    swapped = model(images, quads[:, list(CROSS_PARTNER)])["refined_logits"]
    assert torch.allclose(swapped, out["refined_logits"][:, list(CROSS_PARTNER)], atol=1e-6)
    within = model(images, quads[:, list(SAME_PARTNER)])["refined_logits"]  # a1<->a2, b1<->b2
    assert torch.allclose(within, out["refined_logits"][:, list(SAME_PARTNER)], atol=1e-6)
    # The refinement changes the features: refined logits are not the base ones.
    assert not torch.allclose(out["refined_logits"].reshape(-1, 4), out["logits"][quads.reshape(-1)], atol=1e-4)


def test_single_branch_inference_equals_the_base_branch_of_the_four_branch_network():
    model = tiny_qcs().eval()
    crops = np.random.default_rng(0).integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    scores = model.predict({"head": crops})["scores"]
    from emotion.models.backbones import crops_to_input

    with torch.no_grad():
        four_branch = model(crops_to_input(crops, 32, "cpu", "crops"), torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]]))
    assert np.allclose(scores, torch.softmax(four_branch["logits"], -1).numpy(), atol=1e-6)
    assert scores.shape == (8, 4) and np.allclose(scores.sum(1), 1.0, atol=1e-5)


def test_baseline_has_no_cross_similarity_and_no_refined_branch():
    model = tiny_qcs(cross_similarity=False)
    assert model.cross is None
    with pytest.raises(RuntimeError, match="cross_similarity=false"):
        model(torch.randn(4, 3, 32, 32), torch.tensor([[0, 1, 2, 3]]))
    assert set(QCSCriterion(refined=False).weights) == {"base"}


def test_qcs_is_single_label_only():
    with pytest.raises(ValueError, match="single-label"):
        tiny_qcs(multi_label=True)


# -- losses ------------------------------------------------------------------------------
def test_target_modes():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    log_p = torch.log_softmax(logits, -1)
    onehot = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.75, 0.25]])
    assert torch.isclose(classification_loss(logits, onehot, "majority"), -(log_p * onehot).sum(1).mean())
    assert torch.isclose(classification_loss(logits, soft, "crossentropy"), -(log_p * soft).sum(1).mean())
    expected_any = -torch.log((log_p.exp() * (soft > 0)).sum(1)).mean()
    assert torch.isclose(classification_loss(logits, soft, "multi_target"), expected_any)
    # probability: a drawn class; with one-hot rows it is the class itself.
    assert torch.isclose(classification_loss(logits, onehot, "probability"), classification_loss(logits, onehot))
    with pytest.raises(ValueError, match="target mode"):
        classification_loss(logits, onehot, "vote")


def test_criterion_is_the_mean_of_the_eight_terms_when_every_image_is_in_a_quadruplet():
    model = tiny_qcs()
    images, labels = torch.randn(8, 3, 32, 32), torch.eye(4)[[0, 0, 1, 1, 2, 2, 3, 3]]
    quads = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    out = model(images, quads)
    terms = QCSCriterion()(out, {"labels": labels, "quadruplets": quads})
    base = torch.nn.functional.cross_entropy(out["logits"], labels.argmax(1), reduction="none")
    refined = torch.nn.functional.cross_entropy(out["refined_logits"].reshape(-1, 4), labels[quads.reshape(-1)].argmax(1),
                                                reduction="none")
    assert torch.isclose(terms["loss"], torch.cat([base, refined]).mean(), atol=1e-6)
    assert set(terms) == {"loss", "loss_base", "loss_refined"}


def test_collate_forms_quadruplets_from_the_generator_and_reaches_both_query_paths():
    model = tiny_qcs()
    family = QCSFamily()
    rng = np.random.default_rng(0)
    batch = {"crop_head": rng.integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8),
             "labels": np.eye(4, dtype=np.float32)[rng.integers(0, 4, size=16)]}
    inputs, targets = family.collate(batch, model, True, torch.device("cpu"), augment_settings(),
                                     torch.Generator().manual_seed(5))
    again, _ = family.collate(batch, model, True, torch.device("cpu"), augment_settings(),
                                     torch.Generator().manual_seed(5))
    assert torch.equal(inputs["quadruplets"], again["quadruplets"]) and len(inputs["quadruplets"]) >= 2
    loss = family.build_criterion(loop_settings(label_smoothing=0.0), model)(model(**inputs), targets)["loss"]
    loss.backward()
    assert model.cross.query.weight.grad is not None and model.cross.query.weight.grad.abs().sum() > 0
    assert model.backbone[0].weight.grad.abs().sum() > 0
    evaluation, _ = family.collate(batch, model, False, torch.device("cpu"))
    assert "quadruplets" not in evaluation


def test_sam_moves_and_restores_the_weights():
    model = tiny_qcs()
    before = [p.detach().clone() for p in model.parameters()]
    out = model(torch.randn(4, 3, 32, 32))
    out["logits"].sum().backward()
    moved = sam_ascend(model, 0.05)
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(step) for _, step in moved]))
    assert torch.isclose(norm, torch.tensor(0.05), atol=1e-5)
    sam_descend(moved)
    assert all(torch.allclose(p, b, atol=1e-7) for p, b in zip(model.parameters(), before))


def test_a_tiny_qcs_model_overfits_a_few_images():
    torch.manual_seed(0)
    model = tiny_qcs()
    family = QCSFamily()
    criterion = family.build_criterion(loop_settings(label_smoothing=0.0), model)
    rng = np.random.default_rng(1)
    classes = np.repeat(np.arange(4), 4)
    # Each class a distinct colour pattern plus noise: learnable by a 3-layer toy backbone.
    base = rng.integers(0, 256, size=(4, 32, 32, 3))
    crops = np.clip(base[classes] + rng.normal(0, 10, size=(16, 32, 32, 3)), 0, 255).astype(np.uint8)
    batch = {"crop_head": crops, "labels": np.eye(4, dtype=np.float32)[classes]}
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        inputs, targets = family.collate(batch, model, True, torch.device("cpu"), augment_settings(), generator)
        inputs["head"] = family.collate(batch, model, False, torch.device("cpu"))[0]["head"]  # no augmentation
        loss = criterion(model(**inputs), targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1
    predicted = model.predict({"head": crops})["scores"].argmax(1)
    assert (predicted == classes).all()


def test_a_qcs_checkpoint_is_a_backbone_for_another_models_level(tmp_path):
    """The joint model's head level can start from the face model's backbone
    (``backbone_weights={head: PATH}``)."""
    from emotion.checkpoint import export_weights, save_checkpoint
    from emotion.models.loading import load_model_from_checkpoint
    from emotion.models.backbones import build_backbone

    torch.manual_seed(0)
    face = QCSNet(yaml_config("qcs", {"labels": LABELS, "pretrained": False, "input_size": 64}))
    path = save_checkpoint(tmp_path / "qcs.ckpt", model_name="qcs", model_cfg=face.config,
                           state_dict=face.state_dict(), labels=LABELS)
    backbone, channels = build_backbone("mobilenet_v2", True, str(path))
    assert channels == 1280
    for (name, ours), theirs in zip(backbone.state_dict().items(), face.backbone.state_dict().values()):
        assert torch.equal(ours, theirs), name
    # The fp16 export used for shipping loads back into a float32 model with the same outputs.
    half = export_weights(path, tmp_path / "qcs_fp16.ckpt")
    loaded = load_model_from_checkpoint(half)
    assert next(loaded.parameters()).dtype == torch.float32
    crops = np.random.default_rng(0).integers(0, 256, size=(4, 64, 64, 3), dtype=np.uint8)
    assert np.allclose(loaded.predict({"head": crops})["scores"], face.eval().predict({"head": crops})["scores"],
                       atol=2e-3)
    assert (tmp_path / "qcs_fp16.ckpt").stat().st_size < 0.6 * (tmp_path / "qcs.ckpt").stat().st_size



def test_test_flip_averages_the_face_and_its_mirror_and_travels_in_the_exported_config(tmp_path):
    from emotion.checkpoint import export_weights, save_checkpoint
    from emotion.models.loading import load_model_from_checkpoint

    plain = tiny_qcs().eval()
    crops = np.random.default_rng(1).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    mirrored = crops[:, :, ::-1].copy()
    expected = (plain.predict({"head": crops})["scores"] + plain.predict({"head": mirrored})["scores"]) / 2
    flipping = tiny_qcs(test_flip=True).eval()
    flipping.load_state_dict(plain.state_dict())
    scores = flipping.predict({"head": crops})["scores"]
    assert np.allclose(scores, expected, atol=1e-6) and not np.allclose(scores, plain.predict({"head": crops})["scores"])
    assert np.allclose(scores, flipping.predict({"head": mirrored})["scores"], atol=1e-6)  # mirror-invariant
    assert flipping.predict({"head": crops[:0]})["scores"].shape == (0, len(LABELS))
    # Old checkpoints have no key (off); an export can switch it on without touching the weights.
    path = save_checkpoint(tmp_path / "q.ckpt", model_name="qcs", model_cfg=plain.config,
                           state_dict=plain.state_dict(), labels=LABELS)
    assert load_model_from_checkpoint(path).config["test_flip"] is False
    exported = load_model_from_checkpoint(export_weights(path, tmp_path / "f.ckpt", half=False,
                                                         model_cfg_updates={"test_flip": True}))
    assert exported.config["test_flip"] is True
    assert np.allclose(exported.predict({"head": crops})["scores"], expected, atol=1e-6)

def test_logit_adjustment_adds_tau_log_prior_in_the_loss_only():
    from emotion.training.targets import logit_adjustment

    adjustment = logit_adjustment([30.0, 10.0, 10.0], 0.5)
    assert torch.allclose(adjustment, 0.5 * torch.log(torch.tensor([0.6, 0.2, 0.2])))
    assert logit_adjustment(None, 0.0) is None
    with pytest.raises(ValueError, match="class prior"):
        logit_adjustment(None, 1.0)
    logits, labels = torch.tensor([[1.0, 0.5, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    adjusted = classification_loss(logits, labels, adjustment=adjustment)
    assert torch.isclose(adjusted, torch.nn.functional.cross_entropy(logits + adjustment, torch.tensor([1])))
    assert adjusted > classification_loss(logits, labels)  # a rare class's target costs more: its margin grows



def test_histogram_equalisation_is_batched_monotone_and_undoes_contrast_changes():
    gen = torch.Generator().manual_seed(0)
    faces = torch.rand(3, 1, 20, 20, generator=gen) * 0.5 + 0.2  # low contrast, mid-gray
    equalised = equalize_histogram(faces)
    assert torch.allclose(equalised[1:2], equalize_histogram(faces[1:2]))  # batched == one at a time
    assert equalised.min() == 0.0 and equalised.max() == 1.0  # the full range is used
    flat, order = faces[0].flatten(), faces[0].flatten().argsort()
    assert (equalised[0].flatten()[order].diff() >= 0).all()  # the mapping keeps the pixel order
    stretched = (faces - 0.2) * 2.0  # a monotone contrast stretch of the same faces
    assert (equalize_histogram(stretched) - equalised).abs().max() < 0.02
    constant = torch.full((1, 1, 8, 8), 0.4)
    assert torch.equal(equalize_histogram(constant), constant)
    assert flat.shape == (400,)


def test_equalize_is_part_of_the_model_and_needs_grayscale():
    model = tiny_qcs(grayscale=True, equalize=True).eval()
    assert model.config["equalize"] is True and model.to_gray.equalize
    levels = torch.randint(0, 100, (2, 1, 32, 32), generator=torch.Generator().manual_seed(1)).float()

    def as_input(gray: torch.Tensor) -> torch.Tensor:  # a gray face as the model's normalised RGB input
        return imagenet_normalize(gray.expand(-1, 3, -1, -1) / 255.0)

    with torch.no_grad():
        dark = model(as_input(levels))["logits"]
        bright = model(as_input(2.0 * levels + 20.0))["logits"]  # the same face, other exposure
    assert torch.allclose(dark, bright, atol=1e-4)
    with pytest.raises(ValueError, match="equalize=true needs grayscale"):
        tiny_qcs(equalize=True)
