"""Sine position encodings (DETR, DAB-DETR) for feature-map cells and for boxes.

Coordinates are normalised to [0, 1]; each scalar becomes ``num_feats`` numbers
(interleaved sin / cos at geometrically spaced wavelengths, scale 2π as DETR's
``PositionEmbeddingSine(normalize=True)``). The memory's cells and the subject queries'
reference boxes are encoded by the same function, so a query's position and a key's
position live in the same space and cross-attention can compare them.
"""

from __future__ import annotations

import math

import torch


def sine_encode(coords: torch.Tensor, num_feats: int, temperature: float = 10000.0,
                scale: float = 2 * math.pi) -> torch.Tensor:
    """[..., n] coordinates in [0, 1] -> [..., n * num_feats] (coordinate-major order).

    ``num_feats`` must be even (a sin and a cos per wavelength).
    """
    if num_feats % 2:
        raise ValueError(f"num_feats must be even, got {num_feats}")
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=coords.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos = coords.float()[..., None] * scale / dim_t  # [..., n, F]
    pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)  # [..., n, F]
    return pos.flatten(-2).to(coords.dtype)


def grid_centres(height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Centres (x, y) of an h x w grid of cells, normalised: [h*w, 2], row-major."""
    ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((x.flatten(), y.flatten()), dim=-1)


def grid_position(height: int, width: int, dim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Position encoding of the memory's cells: [h*w, dim] (y then x, dim/2 each)."""
    if dim % 4:
        raise ValueError(f"hidden_dim must be a multiple of 4 for the sine encoding, got {dim}")
    centres = grid_centres(height, width, device)
    return sine_encode(centres[:, [1, 0]], dim // 2)


def box_position(boxes: torch.Tensor, dim: int) -> torch.Tensor:
    """Boxes [..., 4] (cx, cy, w, h) -> [..., 2 * dim]: (cy, cx, w, h) each as dim/2
    numbers; the (cy, cx) half matches ``grid_position`` of the same point."""
    return sine_encode(boxes[..., [1, 0, 2, 3]], dim // 2)
