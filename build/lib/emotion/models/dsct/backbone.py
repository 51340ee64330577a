"""DSCT's image backbone: an ImageNet CNN (``emotion.models.backbones``) whose last feature
map is projected to the transformer's width, plus the cells' position encoding.

The paper uses a multi-scale ResNet-50; here one scale (stride 32) of MobileNetV2 (the
default, offline ImageNet weights) or ResNet-50 (``backbone_weights`` = a torchvision
state dict) keeps the token count small on CPU (224 px -> 7 x 7 = 49 tokens).

``frozen_bn`` keeps the backbone's BatchNorm layers in eval mode while training (their
ImageNet statistics are kept, as DETR's FrozenBatchNorm2d does): detection batches are
small and the statistics of a few scenes are noisy. Their affine weights still train.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from emotion.models.backbones import build_backbone
from emotion.models.dsct.position_encoding import grid_position


class Backbone(nn.Module):
    """[B, 3, S, S] ImageNet-normalised -> (tokens [B, h*w, D], pos [1, h*w, D], (h, w))."""

    def __init__(self, name: str, pretrained: bool, weights_path: str | None, hidden_dim: int, frozen_bn: bool):
        super().__init__()
        self.body, channels = build_backbone(name, pretrained, weights_path)
        self.input_proj = nn.Conv2d(channels, hidden_dim, kernel_size=1)
        self.hidden_dim = hidden_dim
        self.frozen_bn = frozen_bn

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        if self.frozen_bn:
            for module in self.body.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        features = self.input_proj(self.body(images))  # [B, D, h, w]
        h, w = features.shape[-2:]
        tokens = features.flatten(2).transpose(1, 2)  # [B, h*w, D]
        pos = grid_position(h, w, self.hidden_dim, features.device).to(tokens.dtype)[None]
        return tokens, pos, (int(h), int(w))


def build_dsct_backbone(cfg: Mapping[str, Any]) -> Backbone:
    """From a resolved DSCT config (``emotion.models.dsct.model.resolve_config``)."""
    return Backbone(cfg["backbone"], bool(cfg["pretrained"]), cfg["backbone_weights"], int(cfg["hidden_dim"]),
                    bool(cfg["frozen_bn"]))
