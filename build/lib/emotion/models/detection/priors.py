"""RetinaFace anchors (priors) and the SSD box codec that decodes against them.

Anchors are square boxes centred on every cell of each feature level, written as
``(cx, cy, w, h)`` in input pixels. Their order matches the heads' output order:
level by level, then row by row, column by column, then one anchor per min size
(this is what ``permute(0, 2, 3, 1).reshape(B, -1, k)`` in the heads produces).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class AnchorConfig:
    """Anchor layout of a RetinaFace model.

    Attributes:
        min_sizes: anchor side lengths (pixels) per feature level.
        steps: stride (pixels) of each feature level.
        variances: SSD encoding variances for centre and size offsets.
    """

    min_sizes: tuple[tuple[int, ...], ...]
    steps: tuple[int, ...]
    variances: tuple[float, float]


# cfg_mnet of biubug6/Pytorch_Retinaface, which mobilenet0.25_Final.pth was trained with.
MOBILENET025_ANCHORS = AnchorConfig(
    min_sizes=((16, 32), (64, 128), (256, 512)),
    steps=(8, 16, 32),
    variances=(0.1, 0.2),
)


def feature_map_sizes(image_hw: Sequence[int], steps: Sequence[int]) -> list[tuple[int, int]]:
    """Feature-map (rows, cols) per level: a stride-s stack of padded 3x3 convs gives ceil(n/s)."""
    height, width = int(image_hw[0]), int(image_hw[1])
    return [(math.ceil(height / step), math.ceil(width / step)) for step in steps]


def prior_boxes(
    image_hw: Sequence[int],
    anchors: AnchorConfig = MOBILENET025_ANCHORS,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """All anchors for an input of size ``image_hw``.

    Returns:
        float tensor [A, 4] of ``(cx, cy, w, h)`` in input pixels, with
        A = sum over levels of rows * cols * anchors_per_location.
    """
    per_level = []
    for (rows, cols), step, sizes in zip(feature_map_sizes(image_hw, anchors.steps), anchors.steps, anchors.min_sizes):
        cy = (torch.arange(rows, device=device, dtype=dtype) + 0.5) * step
        cx = (torch.arange(cols, device=device, dtype=dtype) + 0.5) * step
        grid_y, grid_x = torch.meshgrid(cy, cx, indexing="ij")  # [rows, cols]
        side = torch.tensor(sizes, device=device, dtype=dtype)  # [k]
        k = side.numel()
        level = torch.stack(
            [
                grid_x[..., None].expand(rows, cols, k),
                grid_y[..., None].expand(rows, cols, k),
                side.expand(rows, cols, k),
                side.expand(rows, cols, k),
            ],
            dim=-1,
        )
        per_level.append(level.reshape(-1, 4))
    return torch.cat(per_level, dim=0)


def decode_boxes(deltas: torch.Tensor, priors: torch.Tensor, variances: Sequence[float]) -> torch.Tensor:
    """SSD decoding of box offsets.

    Args:
        deltas: [..., A, 4] predicted ``(dx, dy, dw, dh)``.
        priors: [A, 4] anchors ``(cx, cy, w, h)``.

    Returns:
        [..., A, 4] boxes ``(x1, y1, x2, y2)`` in the priors' units.
    """
    centre = priors[:, :2] + deltas[..., :2] * variances[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(deltas[..., 2:] * variances[1])
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def decode_landmarks(deltas: torch.Tensor, priors: torch.Tensor, variances: Sequence[float]) -> torch.Tensor:
    """Decode five landmark offsets per anchor.

    Args:
        deltas: [..., A, 10] offsets ``(dx1, dy1, ..., dx5, dy5)``.
        priors: [A, 4] anchors ``(cx, cy, w, h)``.

    Returns:
        [..., A, 5, 2] points ``(x, y)``: left eye, right eye, nose, left and right mouth
        corners (as seen in the image), in the priors' units.
    """
    offsets = deltas.unflatten(-1, (5, 2))
    return priors[:, None, :2] + offsets * variances[0] * priors[:, None, 2:]
