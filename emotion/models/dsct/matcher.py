"""Hungarian matching of subject queries to ground-truth people (DETR / Deformable DETR).

For each image, the cost of assigning query q to person t is

    cost_class   x focal person cost of q  (Deformable DETR: pos - neg focal terms of p_q)
  + cost_emotion x (- mean over t's emotions of sigmoid(emotion logit of q))
  + cost_bbox    x L1(box_q, box_t)            (normalised cx, cy, w, h)
  + cost_giou    x (- GIoU(box_q, box_t))

and ``scipy.optimize.linear_sum_assignment`` picks the assignment of least total cost
(min(Q, N) pairs). Nothing here needs gradients.

Targets: one dict per image, ``boxes`` [N, 4] normalised (cx, cy, w, h) and ``labels``
[N, K] multi-hot float (a one-hot row for single-label sets); N may be 0.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

from emotion.settings import DSCTTrainSettings

Match = tuple[torch.Tensor, torch.Tensor]


def focal_person_cost(person_logits: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Deformable DETR's focal classification cost of calling each query a person:
    [M] logits -> [M] (lower = more person-like)."""
    prob = torch.sigmoid(person_logits)
    neg = (1 - alpha) * prob.pow(gamma) * -torch.log(1 - prob + 1e-8)
    pos = alpha * (1 - prob).pow(gamma) * -torch.log(prob + 1e-8)
    return pos - neg


def emotion_cost(emotion_logits: torch.Tensor, target_labels: torch.Tensor) -> torch.Tensor:
    """Minus the mean probability a query gives a person's emotions:
    [M, K] logits, [N, K] multi-hot -> [M, N]."""
    labels = target_labels.to(emotion_logits.dtype)
    return -(torch.sigmoid(emotion_logits) @ labels.T) / labels.sum(-1).clamp(min=1)


class HungarianMatcher(nn.Module):
    """forward(outputs, targets) -> B pairs (pred_idx int64 [n], tgt_idx int64 [n]),
    n = min(Q, N_b); pred_idx sorted ascending (scipy's order)."""

    def __init__(self, *, cost_class: float, cost_bbox: float, cost_giou: float, cost_emotion: float,
                 focal_alpha: float, focal_gamma: float):
        super().__init__()
        if cost_class == cost_bbox == cost_giou == cost_emotion == 0:
            raise ValueError("all matcher costs are 0")
        self.cost_class, self.cost_bbox, self.cost_giou = float(cost_class), float(cost_bbox), float(cost_giou)
        self.cost_emotion = float(cost_emotion)
        self.focal_alpha, self.focal_gamma = float(focal_alpha), float(focal_gamma)

    def cost_matrix(self, emotion_logits: torch.Tensor, person_logits: torch.Tensor, boxes: torch.Tensor,
                    tgt_boxes: torch.Tensor, tgt_labels: torch.Tensor) -> torch.Tensor:
        """[M, K], [M], [M, 4] predictions and [N, 4], [N, K] targets -> cost [M, N]."""
        person = focal_person_cost(person_logits, self.focal_alpha, self.focal_gamma)[:, None]
        l1 = torch.cdist(boxes, tgt_boxes.to(boxes.dtype), p=1)
        giou = generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"),
                                   box_convert(tgt_boxes.to(boxes.dtype), "cxcywh", "xyxy"))
        return (self.cost_class * person + self.cost_emotion * emotion_cost(emotion_logits, tgt_labels)
                + self.cost_bbox * l1 - self.cost_giou * giou)

    @torch.no_grad()
    def forward(self, outputs: Mapping[str, Any], targets: Sequence[Mapping[str, torch.Tensor]]) -> list[Match]:
        """``outputs``: ``pred_logits`` [B, Q, K], ``pred_person_logits`` [B, Q],
        ``pred_boxes`` [B, Q, 4]; ``targets``: B dicts (module doc)."""
        logits, person, boxes = outputs["pred_logits"], outputs["pred_person_logits"], outputs["pred_boxes"]
        b, q = boxes.shape[:2]
        if len(targets) != b:
            raise ValueError(f"{len(targets)} targets for a batch of {b} images")
        sizes = [len(t["boxes"]) for t in targets]
        empty = torch.zeros(0, dtype=torch.int64)
        if sum(sizes) == 0:
            return [(empty, empty) for _ in targets]
        # One cost matrix for the whole batch (as DETR), split per image.
        cost = self.cost_matrix(logits.flatten(0, 1).float(), person.flatten().float(),
                                boxes.flatten(0, 1).float(),
                                torch.cat([t["boxes"] for t in targets]).float(),
                                torch.cat([t["labels"] for t in targets]).float())
        cost = cost.view(b, q, -1).cpu()
        matches = []
        for i, part in enumerate(cost.split(sizes, dim=-1)):
            if sizes[i] == 0:
                matches.append((empty, empty))
                continue
            rows, cols = linear_sum_assignment(part[i].numpy())
            matches.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return matches


def build_matcher(settings: DSCTTrainSettings) -> HungarianMatcher:
    """From ``train.dsct``: its ``matcher`` costs and focal parameters."""
    return HungarianMatcher(**settings.matcher.model_dump(), focal_alpha=settings.focal_alpha,
                            focal_gamma=settings.focal_gamma)
