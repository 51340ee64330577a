"""DSCT outputs -> per-image detections (DETR's ``PostProcess``).

Every subject query is a candidate person: its score is the person probability
(sigmoid of ``pred_person_logits``), its box is converted to absolute (x1, y1, x2, y2)
pixels of the image it came from, and its emotion scores are sigmoids (multi-label) or
a softmax over the K logits (single-label). Candidates are sorted by score, highest
first; thresholding is the caller's (``min_score``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torchvision.ops import box_convert


def emotion_probabilities(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Emotion logits [..., K] -> scores: sigmoid (multi-label) or softmax (single-label)."""
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)


def _image_sizes(image_sizes: torch.Tensor | Sequence[Sequence[int]], batch: int,
                 device: torch.device) -> torch.Tensor:
    sizes = torch.as_tensor(image_sizes, dtype=torch.float32, device=device).reshape(-1, 2)
    if len(sizes) != batch:
        raise ValueError(f"image_sizes has {len(sizes)} rows for a batch of {batch} images")
    return sizes


@torch.no_grad()
def postprocess(outputs: Mapping[str, Any], image_sizes: torch.Tensor | Sequence[Sequence[int]],
                multi_label: bool = True, min_score: float = 0.0) -> list[dict[str, torch.Tensor]]:
    """Per-image detections.

    Args:
        outputs: the model's ``pred_logits`` [B, Q, K], ``pred_person_logits`` [B, Q],
            ``pred_boxes`` [B, Q, 4] (normalised cx, cy, w, h).
        image_sizes: [B, 2] (height, width) in pixels of each original image.
        multi_label: sigmoid (True) or softmax (False) emotion scores.
        min_score: drop candidates whose person score is below it (0: keep all Q).

    Returns:
        B dicts, candidates sorted by score (descending): ``boxes`` float [n, 4] absolute
        (x1, y1, x2, y2), ``scores`` [n] person probability, ``emotion_probs`` [n, K],
        ``query_index`` int64 [n] (which subject query).
    """
    logits, person_logits, boxes = outputs["pred_logits"], outputs["pred_person_logits"], outputs["pred_boxes"]
    sizes = _image_sizes(image_sizes, boxes.shape[0], boxes.device)
    height, width = sizes.unbind(-1)
    scale = torch.stack((width, height, width, height), dim=-1)[:, None]  # [B, 1, 4]
    absolute = box_convert(boxes.float(), "cxcywh", "xyxy") * scale
    scores = torch.sigmoid(person_logits.float())
    probs = emotion_probabilities(logits.float(), multi_label)
    results = []
    for b in range(boxes.shape[0]):
        order = torch.argsort(scores[b], descending=True, stable=True)
        order = order[scores[b, order] >= min_score]
        results.append({"boxes": absolute[b, order], "scores": scores[b, order], "emotion_probs": probs[b, order],
                        "query_index": order})
    return results
