"""DSCT's training losses (DETR / Deformable DETR ``SetCriterion``).

Subject queries are matched to the ground-truth people of each image (``matcher.py``);
then, with ``num_boxes`` = people in the batch (at least 1):

* ``loss_person``: sigmoid focal loss (α, γ) of every query's person logit, target 1 for
  matched queries and 0 for the rest, summed over queries / num_boxes;
* ``loss_emotion``: sigmoid focal loss of the matched queries' emotion logits against the
  people's labels (multi-hot; single-label sets use the one-hot of each row's arg-max),
  summed over queries and classes / num_boxes (the paper's α 0.25, γ 2);
* ``loss_bbox``: L1 of matched boxes (normalised cx, cy, w, h) / num_boxes;
* ``loss_giou``: 1 - GIoU of matched boxes (``torchvision.ops``) / num_boxes.

Auxiliary losses: each ``aux_outputs[i]`` (decoder layer i) is matched on its own and
gives the same terms with the suffix ``_i`` (``loss_bbox_0``, ...). Which terms run is
set by ``weight_dict``: an auxiliary term is computed when its key is there, and a key
that the outputs cannot produce (e.g. ``loss_bbox_5`` for a 3-layer decoder) is an error,
so the config and the model cannot silently disagree.

forward(outputs, targets) -> dict: every term (not detached) and ``loss`` = Σ weight x term.

Targets: a list with one dict per image (or a mapping holding that list under
``people``): ``boxes`` [N, 4] normalised (cx, cy, w, h), ``labels`` [N, K]
float; N may be 0 (no people: every query is trained towards "no person"). With data
parallelism, ``num_boxes`` is this process's count (DETR all-reduces it; pass
``num_boxes=`` to ``forward`` to do so).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss

from emotion.models.dsct.matcher import HungarianMatcher, Match, build_matcher
from emotion.settings import DSCTTrainSettings

LOSSES: tuple[str, ...] = ("person", "emotion", "bbox", "giou")

Targets = Sequence[Mapping[str, torch.Tensor]]


def _matched(matches: Sequence[Match]) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch index, query index) of every matched query, concatenated over images."""
    batch = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(matches)])
    return batch, torch.cat([src for src, _ in matches])


def _matched_targets(targets: Targets, matches: Sequence[Match], key: str) -> torch.Tensor:
    return torch.cat([t[key][tgt] for t, (_, tgt) in zip(targets, matches)])


class SetCriterion(nn.Module):
    """Losses of DSCT's outputs against per-image people (module doc).

    Args:
        matcher: ``HungarianMatcher``.
        weight_dict: ``loss_<term>`` (and ``loss_<term>_<i>`` for auxiliary layers) -> weight.
        losses: the terms to compute, a subset of ``LOSSES``.
        focal_alpha, focal_gamma: sigmoid focal loss parameters (person and emotion).
        multi_label: False turns each label row into the one-hot of its arg-max.
    """

    def __init__(self, matcher: HungarianMatcher, weight_dict: Mapping[str, float], losses: Sequence[str], *,
                 focal_alpha: float, focal_gamma: float, multi_label: bool):
        super().__init__()
        unknown = sorted(set(losses) - set(LOSSES))
        if unknown:
            raise ValueError(f"unknown DSCT losses {unknown}; known: {list(LOSSES)}")
        missing = [f"loss_{name}" for name in losses if f"loss_{name}" not in weight_dict]
        if missing:
            raise ValueError(f"weight_dict has no weight for {missing}")
        self.matcher = matcher
        self.weight_dict = {str(k): float(v) for k, v in weight_dict.items()}
        self.losses = tuple(losses)
        self.focal_alpha, self.focal_gamma = float(focal_alpha), float(focal_gamma)
        self.multi_label = bool(multi_label)

    # -- the terms -----------------------------------------------------------------------
    def _focal(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return sigmoid_focal_loss(logits, targets, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum")

    def loss_person(self, outputs: Mapping[str, Any], targets: Targets, matches: Sequence[Match],
                    num_boxes: float) -> torch.Tensor:
        logits = outputs["pred_person_logits"]
        target = torch.zeros_like(logits)
        batch, query = _matched(matches)
        target[batch.to(logits.device), query.to(logits.device)] = 1.0
        return self._focal(logits, target) / num_boxes

    def emotion_targets(self, labels: torch.Tensor) -> torch.Tensor:
        """[M, K] label rows -> focal targets: multi-hot as given, or one-hot of the arg-max."""
        if self.multi_label or labels.numel() == 0:
            return labels.float()
        return F.one_hot(labels.argmax(-1), labels.shape[-1]).float()

    def loss_emotion(self, outputs: Mapping[str, Any], targets: Targets, matches: Sequence[Match],
                     num_boxes: float) -> torch.Tensor:
        logits = outputs["pred_logits"][_matched(matches)]
        labels = self.emotion_targets(_matched_targets(targets, matches, "labels").to(logits.device))
        return self._focal(logits, labels) / num_boxes

    def loss_bbox(self, outputs: Mapping[str, Any], targets: Targets, matches: Sequence[Match],
                  num_boxes: float) -> torch.Tensor:
        boxes = outputs["pred_boxes"][_matched(matches)]
        target = _matched_targets(targets, matches, "boxes").to(boxes)
        return F.l1_loss(boxes, target, reduction="sum") / num_boxes

    def loss_giou(self, outputs: Mapping[str, Any], targets: Targets, matches: Sequence[Match],
                  num_boxes: float) -> torch.Tensor:
        boxes = outputs["pred_boxes"][_matched(matches)]
        target = _matched_targets(targets, matches, "boxes").to(boxes)
        if len(boxes) == 0:
            return boxes.sum() * 0.0
        return generalized_box_iou_loss(box_convert(boxes, "cxcywh", "xyxy"), box_convert(target, "cxcywh", "xyxy"),
                                        reduction="sum") / num_boxes

    def _term(self, name: str) -> Callable[..., torch.Tensor]:
        return getattr(self, f"loss_{name}")

    # -- forward -------------------------------------------------------------------------
    def layer_losses(self, outputs: Mapping[str, Any], targets: Targets, num_boxes: float,
                     suffix: str = "") -> dict[str, torch.Tensor]:
        """Match one layer's outputs and compute ``self.losses`` for it, keys suffixed."""
        matches = self.matcher(outputs, targets)
        return {f"loss_{name}{suffix}": self._term(name)(outputs, targets, matches, num_boxes) for name in self.losses}

    def forward(self, outputs: Mapping[str, Any], targets: Targets | Mapping[str, Any],
                num_boxes: float | None = None) -> dict[str, torch.Tensor]:
        """``targets``: the per-image list, or a mapping holding it under ``people`` (so a
        training batch's targets can also carry image-level tensors, e.g. ``labels``)."""
        if isinstance(targets, Mapping):
            targets = targets["people"]
        if num_boxes is None:
            num_boxes = float(sum(len(t["boxes"]) for t in targets))
        num_boxes = max(float(num_boxes), 1.0)
        losses = self.layer_losses(outputs, targets, num_boxes)
        for i, aux in enumerate(outputs.get("aux_outputs") or []):
            if any(f"loss_{name}_{i}" in self.weight_dict for name in self.losses):
                losses.update(self.layer_losses(aux, targets, num_boxes, suffix=f"_{i}"))
        unproduced = sorted(set(self.weight_dict) - set(losses))
        if unproduced:
            raise ValueError(f"weight_dict names terms these outputs do not give: {unproduced} "
                             f"(terms: {sorted(losses)}); check dec_layers, aux_loss and losses")
        losses["loss"] = sum(self.weight_dict[key] * value for key, value in losses.items()
                             if key in self.weight_dict)
        return losses


def loss_weight_dict(loss_weights: Mapping[str, float], dec_layers: int, aux_loss: bool,
                     losses: Sequence[str]) -> dict[str, float]:
    """``{person: 2, ...}`` (a weight for every term of ``losses``) -> ``{"loss_person": 2,
    ...}`` plus ``loss_<term>_<i>`` for the dec_layers - 1 auxiliary layers when ``aux_loss``."""
    chosen = {str(k): float(v) for k, v in loss_weights.items()}
    unknown = sorted(set(chosen) - set(LOSSES))
    if unknown:
        raise ValueError(f"unknown DSCT loss weights {unknown}; known: {list(LOSSES)}")
    missing = sorted(set(losses) - set(chosen))
    if missing:
        raise ValueError(f"no DSCT loss weight for {missing}")
    weights = {f"loss_{name}": chosen[name] for name in losses}
    if aux_loss:
        for i in range(dec_layers - 1):
            weights.update({f"loss_{name}_{i}": chosen[name] for name in losses})
    return weights


def build_criterion(settings: DSCTTrainSettings, *, dec_layers: int, multi_label: bool) -> SetCriterion:
    """From ``train.dsct`` (loss weights and terms, ``aux_loss``, focal parameters, matcher
    costs) and the model's ``dec_layers`` and ``multi_label``."""
    losses = tuple(settings.losses)
    weights = loss_weight_dict(settings.loss_weights.model_dump(), int(dec_layers), settings.aux_loss, losses)
    return SetCriterion(build_matcher(settings), weights, losses, focal_alpha=settings.focal_alpha,
                        focal_gamma=settings.focal_gamma, multi_label=bool(multi_label))
