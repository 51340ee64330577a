"""Batched non-maximum suppression without importing torchvision on the CPU.

``import torchvision`` costs about 2 s of CPU per process (its package import pulls in
``torch._dynamo``), and every tagging actor and plain loop pays it only for NMS. On the
CPU, RetinaFace's NMS runs on the few candidates above the score threshold, so an exact
greedy NMS in torch is as fast; on CUDA, torchvision's kernel is used (imported on the
first CUDA call), since there the candidate count and the launch overhead matter, and
for unusually many CPU candidates (a low score threshold), where the ``[N, N]`` IoU
matrix would grow large.

The CPU path follows torchvision's kernel: boxes sorted by descending score (stable),
IoU = inter / (area_i + area_j - inter) in the boxes' dtype, a box suppressed when its
IoU with a kept box of the same group is strictly above the threshold. Unlike
torchvision's ``batched_nms`` for small inputs, groups are kept apart by masking the
IoU matrix rather than by offsetting coordinates, so no coordinate is rounded.
"""

from __future__ import annotations

import numpy as np
import torch

# Above this many candidates the CPU path hands over to torchvision's kernel (the IoU
# matrix of 1,024 boxes is 4 MiB; RetinaFace at its 0.6 threshold has a few dozen).
MAX_MATRIX_BOXES = 1024


def pairwise_iou(boxes: torch.Tensor) -> torch.Tensor:
    """IoU of every pair of ``[N, 4]`` (x1, y1, x2, y2) boxes -> ``[N, N]``, in the boxes'
    dtype and operation order of torchvision's NMS kernel."""
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    width = (torch.minimum(x2[:, None], x2[None, :]) - torch.maximum(x1[:, None], x1[None, :])).clamp(min=0)
    height = (torch.minimum(y2[:, None], y2[None, :]) - torch.maximum(y1[:, None], y1[None, :])).clamp(min=0)
    inter = width * height
    return inter / (areas[:, None] + areas[None, :] - inter)


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes kept, by descending score; boxes of different ``groups``
    never suppress each other. CPU tensors; ``[N, 4]``, ``[N]``, ``[N]`` -> ``[K]`` int64."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64)
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes, sorted_groups = boxes[order], groups[order]
    suppresses = (pairwise_iou(sorted_boxes) > iou_threshold) & (sorted_groups[:, None] == sorted_groups[None, :])
    suppresses = suppresses.numpy()
    suppressed = np.zeros(len(order), dtype=bool)
    kept = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        kept.append(i)
        suppressed |= suppresses[i]
    return order[torch.as_tensor(kept, dtype=torch.int64)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """``torchvision.ops.batched_nms``: kept indices by descending score, one call for
    every group (image) of a batch. Greedy NMS in torch on the CPU, torchvision's kernel
    on an accelerator."""
    if boxes.device.type != "cpu" or len(boxes) > MAX_MATRIX_BOXES:
        import torchvision  # only where its kernel pays for its import

        return torchvision.ops.batched_nms(boxes, scores, groups, iou_threshold)
    return greedy_nms(boxes, scores, groups, iou_threshold)
