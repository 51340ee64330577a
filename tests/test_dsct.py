"""DSCT: the network's outputs, decoupling and fusion, the Hungarian matcher, the set
criterion, postprocessing, the DSCT evaluation protocol, and a tiny model that overfits
two scenes. Toy backbone, tiny sizes, one thread."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.ops import box_convert, box_iou

from emotion.models.dsct.criterion import LOSSES, SetCriterion, build_criterion, loss_weight_dict
from emotion.models.dsct.evaluation import (detection_ap50, detection_matches, dsct_report, match_people,
                                            person_scores)
from emotion.models.dsct.matcher import HungarianMatcher, build_matcher
from emotion.models.dsct.model import DSCT, OUTPUT_KEYS, resolve_config
from emotion.models.dsct.postprocess import postprocess
from emotion.models.protocol import EmotionModel
from emotion.models.loading import input_spec
from emotion.models.registry import build_model
from emotion.models.settings import yaml_config
from emotion.settings import ConfigError, LoopSettings, parse_settings
from tests.configs import default_section, dsct_settings, merged

pytestmark = pytest.mark.unit

LABELS = ["happy", "sad", "angry"]
K = len(LABELS)
S = 64


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_cfg(**overrides) -> dict:
    cfg = dict(labels=LABELS, multi_label=True, backbone="toy", pretrained=False, input_size=S, hidden_dim=32,
               nheads=2, ffn_dim=64, enc_layers=1, dec_layers=3, fuse_from_layer=1, num_subject_queries=4,
               num_context_queries=5, dropout=0.0)
    cfg.update(overrides)
    return yaml_config("dsct", cfg)


def tiny_model(seed: int = 0, **overrides) -> DSCT:
    torch.manual_seed(seed)
    return DSCT(tiny_cfg(**overrides))


def criterion_of(dec_layers: int, multi_label: bool = True, **changes) -> SetCriterion:
    """The set criterion of ``train.dsct`` with ``changes``, for a model of ``dec_layers``."""
    return build_criterion(dsct_settings(**changes), dec_layers=dec_layers, multi_label=multi_label)


def images(b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, S, S, generator=torch.Generator().manual_seed(seed))


def target(boxes_cxcywh: list, labels: list) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes_cxcywh, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.float32).reshape(-1, K)}


TARGETS = [target([[0.3, 0.5, 0.2, 0.6], [0.7, 0.4, 0.3, 0.5]], [[1, 0, 0], [0, 1, 1]]),
           target([], [])]


# -- the network ----------------------------------------------------------------------
def test_forward_returns_named_outputs_with_documented_shapes():
    model = tiny_model()
    out = model(images(2))
    assert out["pred_logits"].shape == (2, 4, K)
    assert out["pred_person_logits"].shape == (2, 4)
    assert out["pred_boxes"].shape == (2, 4, 4)
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    assert len(out["aux_outputs"]) == 2  # dec_layers - 1
    for aux in out["aux_outputs"]:
        assert set(aux) == set(OUTPUT_KEYS) and aux["pred_boxes"].shape == (2, 4, 4)
    assert out["context_features"].shape == (2, 5, 32) and out["context_boxes"].shape == (2, 5, 4)
    # images are independent: one alone gives the same outputs (eval mode, no batch statistics)
    model.eval()
    with torch.no_grad():
        both, one = model(images(2)), model(images(2)[1:])
    assert torch.allclose(both["pred_boxes"][1:], one["pred_boxes"], atol=1e-5)


def test_decoupled_layers_keep_subjects_apart_from_context_queries():
    # No fused layer: subject outputs do not depend on the context queries at all.
    model = tiny_model(fuse_from_layer=3).eval()
    x = images(1)
    with torch.no_grad():
        before = model(x)["pred_logits"]
        model.context_embed.weight.add_(1.0)
        after = model(x)["pred_logits"]
    assert torch.equal(before, after)
    assert all(layer.subject.relation is None for layer in model.decoder.layers)
    # Fused from layer 1: they do.
    fused = tiny_model(fuse_from_layer=1).eval()
    with torch.no_grad():
        before = fused(x)["pred_logits"]
        fused.context_embed.weight.add_(1.0)
        assert not torch.allclose(before, fused(x)["pred_logits"])
    assert [layer.subject.relation is not None for layer in fused.decoder.layers] == [False, True, True]


def test_config_is_validated_and_registered():
    with pytest.raises(ValueError, match="labels"):
        resolve_config({})
    with pytest.raises(ValueError, match="fuse_from_layer"):
        resolve_config(tiny_cfg(fuse_from_layer=4))
    with pytest.raises(ValueError, match="relations"):
        resolve_config(tiny_cfg(relations=["spatial", "nearby"]))
    model = build_model("dsct", tiny_cfg())
    assert isinstance(model, DSCT) and isinstance(model, EmotionModel)
    assert model.labels == tuple(LABELS) and model.multi_label and model.input_size == S
    spec = input_spec({**tiny_cfg(), "name": "dsct"})
    assert spec.levels == ("context",) and spec.input_size == S and spec.model_id.startswith("dsct@")
    no_semantic = tiny_model(relations=["spatial"])
    assert no_semantic.decoder.layers[1].subject.relation.semantic is None


def test_frozen_bn_keeps_backbone_statistics_and_parameter_groups_cover_everything():
    model = tiny_model(frozen_bn=True).train()
    norms = [m for m in model.backbone.body.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms) and model.decoder.training
    groups = model.parameter_groups(lr=2e-4, backbone_lr_scale=0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert groups[1]["lr"] == pytest.approx(2e-5)


def test_predict_follows_the_emotion_model_contract():
    model = tiny_model()
    pixels = np.random.default_rng(0).integers(0, 256, (3, S, S, 3), dtype=np.uint8)
    person_boxes = np.array([[0.1, 0.1, 0.5, 0.9], [0.5, 0.2, 0.9, 0.8], [0.0, 0.0, 1.0, 1.0]], np.float32)
    out = model.predict({"context": pixels, "person_boxes": person_boxes})
    assert out["scores"].shape == (3, K) and out["scores"].dtype == np.float32
    assert out["boxes"].shape == (3, 4) and out["person_scores"].shape == (3,)
    columns = model.output_columns(out)
    assert set(columns["level_scores"]) == {"context"} and not columns["refined"].any()
    assert model.predict({"context": pixels[:0]})["scores"].shape == (0, K)
    assert model.training  # predict restores the mode



def test_checkpoint_round_trip_rebuilds_the_same_network(tmp_path):
    from emotion.checkpoint import save_checkpoint
    from emotion.models.loading import load_model_from_checkpoint

    model = tiny_model(frozen_bn=True).eval()
    path = save_checkpoint(tmp_path / "dsct.ckpt", model_name="dsct", model_cfg=model.config,
                           state_dict=model.state_dict(), labels=LABELS)
    loaded = load_model_from_checkpoint(path)
    assert loaded.config["frozen_bn"] is True and loaded.checkpoint_hash != "untrained"
    with torch.no_grad():
        assert torch.equal(model(images(1))["pred_boxes"], loaded(images(1))["pred_boxes"])

# -- matcher ----------------------------------------------------------------------------
def random_outputs(b: int, q: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    boxes = torch.cat([torch.rand(b, q, 2, generator=g) * 0.6 + 0.2, torch.rand(b, q, 2, generator=g) * 0.3 + 0.1], -1)
    return {"pred_logits": torch.randn(b, q, K, generator=g), "pred_person_logits": torch.randn(b, q, generator=g),
            "pred_boxes": boxes}


def random_targets(sizes: list[int], seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        boxes = torch.cat([torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.3 + 0.1], -1)
        out.append({"boxes": boxes, "labels": (torch.rand(n, K, generator=g) > 0.5).float()})
    return out


def test_matcher_gives_the_same_assignment_batched_and_one_image_at_a_time():
    matcher = HungarianMatcher(cost_class=2, cost_bbox=5, cost_giou=2, cost_emotion=1, focal_alpha=0.25, focal_gamma=2)
    outputs = random_outputs(4, 6, seed=1)
    targets = random_targets([2, 0, 6, 3], seed=2)
    batched = matcher(outputs, targets)
    for i, (src, tgt) in enumerate(batched):
        one = matcher({k: v[i:i + 1] for k, v in outputs.items()}, targets[i:i + 1])[0]
        assert torch.equal(src, one[0]) and torch.equal(tgt, one[1])
        n = len(targets[i]["boxes"])
        assert len(src) == len(tgt) == min(6, n) and src.dtype == tgt.dtype == torch.int64
        assert len(set(src.tolist())) == len(src) and len(set(tgt.tolist())) == len(tgt)
    assert len(batched[1][0]) == 0  # the image with no people
    for src, tgt in matcher(outputs, random_targets([0, 0, 0, 0], seed=3)):
        assert len(src) == len(tgt) == 0


def test_matcher_recovers_a_permutation_of_perfect_predictions():
    targets = random_targets([4], seed=4)
    perm = torch.tensor([2, 0, 3, 1])
    outputs = {"pred_boxes": targets[0]["boxes"][perm][None],
               "pred_logits": (targets[0]["labels"][perm] * 8 - 4)[None],
               "pred_person_logits": torch.full((1, 4), 4.0)}
    src, tgt = build_matcher(dsct_settings())(outputs, targets)[0]
    assert torch.equal(tgt, perm[src])


# -- criterion --------------------------------------------------------------------------
def test_loss_keys_and_auxiliary_suffixes_follow_the_config():
    model = tiny_model()
    out = model(images(2))
    criterion = criterion_of(3, aux_loss=True, loss_weights={"person": 2, "emotion": 2, "bbox": 5, "giou": 2})
    losses = criterion(out, TARGETS)
    terms = ["person", "emotion", "bbox", "giou"]
    expected = {f"loss_{t}{s}" for t in terms for s in ("", "_0", "_1")} | {"loss"}
    assert set(losses) == expected
    total = sum(criterion.weight_dict[k] * v for k, v in losses.items() if k != "loss")
    assert torch.allclose(losses["loss"], total)
    assert torch.equal(criterion(out, {"people": TARGETS})["loss"], losses["loss"])

    no_aux = criterion_of(3, aux_loss=False, losses=["person", "bbox"])(out, TARGETS)
    assert set(no_aux) == {"loss_person", "loss_bbox", "loss"}
    assert torch.allclose(no_aux["loss"], 2 * losses["loss_person"] + 5 * losses["loss_bbox"])

    with pytest.raises(ValueError, match="unknown DSCT loss weights"):
        loss_weight_dict({"person": 2, "class": 1}, dec_layers=3, aux_loss=True, losses=["person"])
    with pytest.raises(ConfigError, match=r"train\.dsct\.loss_weights\.class: unknown key"):
        parse_settings(LoopSettings, merged(default_section("train", "train"), {"dsct": {"loss_weights": {"class": 1}}}),
                       prefix="train")
    settings = dsct_settings()
    too_deep = SetCriterion(build_matcher(settings),
                            loss_weight_dict(settings.loss_weights.model_dump(), dec_layers=6, aux_loss=True,
                                             losses=LOSSES),
                            LOSSES, focal_alpha=settings.focal_alpha, focal_gamma=settings.focal_gamma, multi_label=True)
    with pytest.raises(ValueError, match="loss_bbox_4"):
        too_deep(out, TARGETS)


def test_gradients_reach_both_query_sets_and_the_relation_modules():
    model = tiny_model()
    losses = criterion_of(3)(model(images(2)), TARGETS)
    losses["loss"].backward()
    for name in ("subject_embed.weight", "subject_anchor", "context_embed.weight", "context_pos.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    for layer in model.decoder.layers[1:]:  # the fused layers
        relation = layer.subject.relation
        for part in (relation.spatial.mlp, relation.semantic.subject_proj, relation.semantic.context_proj):
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
        assert relation.semantic.scale.grad.abs().sum() > 0


def test_a_batch_without_people_trains_every_query_towards_no_person():
    model = tiny_model()
    out = model(images(2))
    losses = criterion_of(3)(out, [target([], []), target([], [])])
    assert math.isfinite(losses["loss"].item())
    assert losses["loss_bbox"].item() == losses["loss_giou"].item() == losses["loss_emotion"].item() == 0.0
    assert losses["loss_person"].item() > 0
    losses["loss"].backward()
    assert model.person_head.weight.grad.abs().sum() > 0


def test_single_label_emotion_targets_are_one_hot_of_the_arg_max():
    criterion = criterion_of(3, multi_label=False)
    soft = torch.tensor([[0.2, 0.7, 0.1], [0.5, 0.2, 0.3]])
    assert torch.equal(criterion.emotion_targets(soft), torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    out = tiny_model(multi_label=False)(images(1))
    losses = criterion(out, [target([[0.5, 0.5, 0.4, 0.8]], [[0.1, 0.8, 0.1]])])
    assert math.isfinite(losses["loss"].item()) and losses["loss_emotion"].item() > 0


# -- postprocess ------------------------------------------------------------------------
def test_postprocess_gives_sorted_absolute_detections():
    outputs = {"pred_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.25, 0.5, 0.5]]]),
               "pred_person_logits": torch.tensor([[-1.0, 2.0]]),
               "pred_logits": torch.tensor([[[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]]])}
    det = postprocess(outputs, [(100, 200)], multi_label=True)[0]  # height 100, width 200
    assert det["query_index"].tolist() == [1, 0]
    assert torch.allclose(det["scores"], torch.sigmoid(torch.tensor([2.0, -1.0])))
    assert torch.allclose(det["boxes"], torch.tensor([[0.0, 0.0, 100.0, 50.0], [80.0, 30.0, 120.0, 70.0]]))
    assert torch.allclose(det["emotion_probs"][0], torch.sigmoid(torch.tensor([3.0, 0.0, 0.0])))
    single = postprocess(outputs, torch.tensor([[100, 200]]), multi_label=False, min_score=0.5)[0]
    assert len(single["boxes"]) == 1 and torch.allclose(single["emotion_probs"].sum(-1), torch.ones(1))


# -- evaluation -------------------------------------------------------------------------
GT = [{"boxes": np.array([[0, 0, 10, 20], [20, 0, 30, 20]], float), "labels": np.array([[1, 0, 0], [0, 1, 1]])},
      {"boxes": np.array([[5, 5, 25, 25]], float), "labels": np.array([[0, 0, 1]])}]


def perfect_predictions() -> list[dict[str, np.ndarray]]:
    return [{"boxes": np.array([[0, 0, 10, 20], [20, 0, 30, 20], [0, 0, 30, 30]], float),
             "scores": np.array([0.9, 0.8, 0.1]),
             "emotion_probs": np.array([[0.9, 0.1, 0.2], [0.1, 0.8, 0.7], [0.3, 0.3, 0.3]])},
            {"boxes": np.array([[5, 5, 25, 25]], float), "scores": np.array([0.95]),
             "emotion_probs": np.array([[0.1, 0.2, 0.9]])}]


def test_perfect_predictions_score_one():
    report = dsct_report(perfect_predictions(), GT, LABELS, multi_label=True)
    assert report["ap50"] == pytest.approx(1.0) and report["mAP"] == pytest.approx(1.0)
    assert report["n"] == 3 and report["unmatched"] == 0 and report["mean_iou"] == pytest.approx(1.0)
    single = dsct_report(perfect_predictions(), [{**g, "labels": np.eye(K)[[0, 1]] if i == 0 else np.eye(K)[[2]]}
                                                 for i, g in enumerate(GT)], LABELS, multi_label=False)
    assert single["accuracy"] == pytest.approx(1.0)


def test_a_missed_person_lowers_ap50_and_has_no_emotion_prediction():
    preds = perfect_predictions()
    preds[0] = {k: v[[0, 2]] for k, v in preds[0].items()}  # the second person's box is gone
    assert detection_ap50(preds, GT) == pytest.approx(2 / 3)
    people = person_scores(preds, GT, K)
    # the wide low-score box still overlaps the missed person: the protocol takes it
    assert np.allclose(people["scores"][1], [0.3, 0.3, 0.3]) and people["iou"][1] == pytest.approx(200 / 900)
    far = [{k: v[:1] for k, v in preds[0].items()}, preds[1]]
    report = dsct_report(far, GT, LABELS, multi_label=True)
    assert report["unmatched"] == 1 and report["ap50"] == pytest.approx(2 / 3)


def test_a_duplicate_detection_is_a_false_positive():
    preds = perfect_predictions()
    duplicate = np.array([[1, 0, 10, 20]], float)  # IoU 0.9 with the first person, already taken
    preds[0] = {"boxes": np.concatenate([preds[0]["boxes"], duplicate]),
                "scores": np.array([0.9, 0.8, 0.1, 0.85]),
                "emotion_probs": np.concatenate([preds[0]["emotion_probs"], [[0.0, 0.0, 0.0]]])}
    scores, tp, num_gt = detection_matches(preds, GT)
    assert num_gt == 3 and scores.tolist() == [0.95, 0.9, 0.85, 0.8, 0.1]
    assert tp.tolist() == [True, True, False, True, False]
    assert detection_ap50(preds, GT) < 1.0  # ranked above a true positive
    # recognition takes the best-overlapping box, not the duplicate
    assert np.allclose(person_scores(preds, GT, K)["scores"][0], [0.9, 0.1, 0.2])


def test_match_people_prefers_overlap_over_score_and_can_filter_by_score():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 9, 10], [50, 50, 60, 60]], float)
    scores = np.array([0.2, 0.9, 0.5])
    index, iou = match_people(boxes, scores, np.array([[0, 0, 10, 10], [100, 100, 110, 110]], float))
    assert index.tolist() == [0, -1] and iou[0] == pytest.approx(1.0) and iou[1] == 0
    index, _ = match_people(boxes, scores, np.array([[0, 0, 10, 10]], float), min_score=0.3)
    assert index.tolist() == [1]


# -- overfitting ------------------------------------------------------------------------
RED, BLUE, GREEN = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 1.0, 0.0)


def scene(people: list) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A grey S x S image with one coloured rectangle per person; its colour sets the emotions."""
    image = torch.full((3, S, S), 0.5)
    for (x1, y1, x2, y2), colour, _ in people:
        image[:, y1:y2, x1:x2] = torch.tensor(colour).view(3, 1, 1)
    boxes = torch.tensor([box for box, _, _ in people], dtype=torch.float32) / S
    return image, {"boxes": box_convert(boxes, "xyxy", "cxcywh"),
                   "labels": torch.tensor([labels for _, _, labels in people], dtype=torch.float32)}


def test_a_tiny_model_overfits_two_scenes():
    first = scene([((8, 8, 28, 56), RED, [1, 0, 0]), ((36, 16, 60, 48), BLUE, [0, 1, 1])])
    second = scene([((16, 24, 48, 56), GREEN, [0, 0, 1])])
    x = (torch.stack([first[0], second[0]]) - 0.45) / 0.25
    targets = [first[1], second[1]]
    model = tiny_model(seed=0, dec_layers=2, num_subject_queries=4, num_context_queries=4)
    criterion = criterion_of(2)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3, foreach=True)
    for _ in range(150):
        losses = criterion(model(x), targets)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        out = model(x)
    for i, (src, tgt) in enumerate(build_matcher(dsct_settings())(out, targets)):
        assert len(src) == len(targets[i]["boxes"])
        pred = box_convert(out["pred_boxes"][i, src], "cxcywh", "xyxy")
        true = box_convert(targets[i]["boxes"][tgt], "cxcywh", "xyxy")
        assert (box_iou(pred, true).diag() > 0.7).all()
        assert torch.equal((torch.sigmoid(out["pred_logits"][i, src]) > 0.5).float(), targets[i]["labels"][tgt])
    # and under the DSCT protocol: every person found first, every emotion ranked right
    detections = postprocess(out, [(S, S), (S, S)])
    truth = [{"boxes": box_convert(t["boxes"], "cxcywh", "xyxy") * S, "labels": t["labels"]} for t in targets]
    report = dsct_report(detections, truth, LABELS, multi_label=True)
    assert report["ap50"] == pytest.approx(1.0) and report["mAP"] == pytest.approx(1.0)
