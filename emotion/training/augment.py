"""Batched image augmentation for training, on tensors (no per-image Python work).

Images arrive as uint8 [B, S, S, 3] (the crops the predictor cuts, so training sees what
tagging and serving see) and leave as float32 [B, 3, S, S], ImageNet-normalised.
Geometry (scale, shift, rotation, flip) is one affine warp per image done by a single
``grid_sample`` over the batch; photometric jitter is two broadcast ops. Two transforms
make a model indifferent to how a face was captured: ``downscale`` (shrink a face to as
little as ``min_downscale`` of its side and enlarge it back: low-resolution and blurred
faces) and ``grayscale`` (colour dropped, for models that read colour).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from emotion.models.backbones import imagenet_normalize
from emotion.settings import AugmentSettings


def given(cfg: AugmentSettings | None) -> AugmentSettings:
    """``cfg``, which a training batch cannot do without (the ``train.augment`` settings)."""
    if cfg is None:
        raise ValueError("training batches are augmented by the train.augment settings: none were given")
    return cfg


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, S, S, 3] -> float32 [B, 3, S, S] in [0, 1]."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [B, S, S, 3], got {tuple(images.shape)} {images.dtype}")
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def random_affine(images: torch.Tensor, cfg: AugmentSettings, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random zoom/shift/rotation/flip of each image of [B, 3, S, S] (border pixels extend)."""
    b = images.shape[0]
    opts = {"device": images.device, "generator": generator}

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(b, **opts) * (high - low) + low

    angle = uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg) * (math.pi / 180.0)
    scale = uniform(cfg.min_scale, cfg.max_scale)  # a smaller window zooms in, a larger one out
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


def color_jitter(images: torch.Tensor, cfg: AugmentSettings, generator: torch.Generator | None = None) -> torch.Tensor:
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


def random_downscale(images: torch.Tensor, prob: float, min_fraction: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Shrink the chosen images of [B, 3, S, S] to a random side in [min_fraction * S, S]
    and enlarge them back: the detail a low-resolution or blurred face has. Images of one
    batch share the drawn side (one resize pair per batch)."""
    b, _, h, w = images.shape
    opts = {"device": images.device, "generator": generator}
    chosen = torch.rand(b, **opts) < prob
    fraction = float(torch.rand(1, **opts).item()) * (1.0 - min_fraction) + min_fraction
    side_h, side_w = max(4, round(h * fraction)), max(4, round(w * fraction))
    if not bool(chosen.any()) or (side_h, side_w) == (h, w):
        return images
    small = F.interpolate(images[chosen], size=(side_h, side_w), mode="bilinear", align_corners=False, antialias=True)
    out = images.clone()
    out[chosen] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return out


def random_grayscale(images: torch.Tensor, prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Turn the chosen images of [B, 3, S, S] gray (ITU-R 601 luma in every channel)."""
    chosen = torch.rand(images.shape[0], device=images.device, generator=generator) < prob
    weights = images.new_tensor((0.299, 0.587, 0.114)).view(1, 3, 1, 1)
    gray = (images * weights).sum(dim=1, keepdim=True).expand_as(images)
    return torch.where(chosen.view(-1, 1, 1, 1), gray, images)


def augment(images: torch.Tensor, cfg: AugmentSettings | None,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 [B, S, S, 3] -> augmented, ImageNet-normalised float32 [B, 3, S, S]."""
    cfg = given(cfg)
    x = to_float(images)
    x = random_affine(x, cfg, generator)
    if cfg.downscale_prob > 0:
        x = random_downscale(x, cfg.downscale_prob, cfg.min_downscale, generator)
    if cfg.grayscale_prob > 0:
        x = random_grayscale(x, cfg.grayscale_prob, generator)
    x = color_jitter(x, cfg, generator)
    if cfg.erase_prob > 0:
        x = random_erase(x, cfg.erase_prob, generator)
    return imagenet_normalize(x)


def prepare_eval(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, S, S, 3] -> ImageNet-normalised float32 [B, 3, S, S] (no randomness)."""
    return imagenet_normalize(to_float(images))
