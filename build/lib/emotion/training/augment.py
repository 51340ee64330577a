"""Batched image augmentation for training, on tensors (no per-image Python work).

Images arrive as uint8 [B, S, S, 3] (the crops the predictor cuts, so training sees what
tagging and serving see) and leave as float32 [B, 3, S, S], ImageNet-normalised.
Geometry (scale, shift, rotation, flip) is one affine warp per image done by a single
``grid_sample`` over the batch; photometric jitter is two broadcast ops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F

from emotion.models.backbones import imagenet_normalize


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms; zeros turn a transform off."""

    flip: bool = True
    max_rotation_deg: float = 10.0
    min_scale: float = 0.85  # zoom in by up to 1/min_scale (a random crop, resized back)
    max_shift: float = 0.08  # fraction of the side
    brightness: float = 0.2  # additive, in [0, 1] pixel units
    contrast: float = 0.2  # multiplicative around each image's mean
    erase_prob: float = 0.0  # random erasing of one rectangle (up to a quarter of the side each way)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, S, S, 3] -> float32 [B, 3, S, S] in [0, 1]."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [B, S, S, 3], got {tuple(images.shape)} {images.dtype}")
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def random_affine(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random zoom/shift/rotation/flip of each image of [B, 3, S, S] (border pixels extend)."""
    b = images.shape[0]
    opts = {"device": images.device, "generator": generator}

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(b, **opts) * (high - low) + low

    angle = uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg) * (math.pi / 180.0)
    scale = uniform(cfg.min_scale, 1.0)  # sampling a smaller window = zooming in
    flip = torch.where(torch.rand(b, **opts) < 0.5, -1.0, 1.0) if cfg.flip else torch.ones(b, device=images.device)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.zeros(b, 2, 3, device=images.device)
    theta[:, 0, 0] = cos * flip
    theta[:, 0, 1] = -sin
    theta[:, 1, 0] = sin * flip
    theta[:, 1, 1] = cos
    theta[:, 0, 2] = uniform(-cfg.max_shift, cfg.max_shift) * 2
    theta[:, 1, 2] = uniform(-cfg.max_shift, cfg.max_shift) * 2
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def color_jitter(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image brightness and contrast jitter of [B, 3, S, S] in [0, 1]."""
    b = images.shape[0]
    opts = {"device": images.device, "generator": generator}
    contrast = 1.0 + (torch.rand(b, 1, 1, 1, **opts) * 2 - 1) * cfg.contrast
    brightness = (torch.rand(b, 1, 1, 1, **opts) * 2 - 1) * cfg.brightness
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return ((images - mean) * contrast + mean + brightness).clamp_(0.0, 1.0)


def random_erase(images: torch.Tensor, prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill one random rectangle (up to a quarter of each side) with the image mean, per image."""
    b, _, h, w = images.shape
    opts = {"device": images.device, "generator": generator}
    chosen = torch.rand(b, **opts) < prob
    eh = (torch.rand(b, **opts) * 0.25 * h + 1).long()
    ew = (torch.rand(b, **opts) * 0.25 * w + 1).long()
    top = (torch.rand(b, **opts) * (h - eh)).long()
    left = (torch.rand(b, **opts) * (w - ew)).long()
    rows = torch.arange(h, device=images.device).view(1, h, 1)
    cols = torch.arange(w, device=images.device).view(1, 1, w)
    mask = ((rows >= top.view(b, 1, 1)) & (rows < (top + eh).view(b, 1, 1))
            & (cols >= left.view(b, 1, 1)) & (cols < (left + ew).view(b, 1, 1)) & chosen.view(b, 1, 1))
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return torch.where(mask.unsqueeze(1), mean, images)


def augment(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 [B, S, S, 3] -> augmented, ImageNet-normalised float32 [B, 3, S, S]."""
    x = to_float(images)
    x = random_affine(x, cfg, generator)
    x = color_jitter(x, cfg, generator)
    if cfg.erase_prob > 0:
        x = random_erase(x, cfg.erase_prob, generator)
    return imagenet_normalize(x)


def prepare_eval(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, S, S, 3] -> ImageNet-normalised float32 [B, 3, S, S] (no randomness)."""
    return imagenet_normalize(to_float(images))


def build_augment(cfg: Mapping | None) -> AugmentConfig:
    """An AugmentConfig from a mapping of its field names (missing keys keep defaults)."""
    cfg = dict(cfg or {})
    known = set(AugmentConfig.__dataclass_fields__)
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown augmentation setting(s) {unknown}; known: {sorted(known)}")
    return AugmentConfig(**cfg)
