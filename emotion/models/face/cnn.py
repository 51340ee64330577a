"""``face_cnn``: a facial-expression classifier trained here (``emotion train``).

An ImageNet-pretrained backbone (``emotion.models.backbones``; MobileNetV2 by default,
from offline weights) + global average pooling + dropout + a linear head, on the head
crop. Faces are turned to gray (BT.601 luma, replicated to three channels) inside
``forward`` when ``grayscale`` is on, so a model trained on gray FER2013 faces sees gray
faces at tagging time too, whatever colour the photo has.

forward(head): float [B, 3, S, S] ImageNet-normalised -> dict
  * ``logits`` [B, K]; * ``features`` [B, C] (pooled backbone features).

``predict`` (``EmotionModel``) takes uint8 crops [B, S, S, 3] and returns softmax
``scores`` [B, K] (sigmoid when ``multi_label``).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from emotion.models.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone, crops_to_input
from emotion.models.config_check import validated_config
from emotion.models.protocol import InputSpec, adopt_config, model_id, single_level_columns
from emotion.models.registry import register_model, register_spec

# ITU-R BT.601 luma (PIL's convert("L")), the conversion FER2013's faces went through.
_LUMA = (0.299, 0.587, 0.114)


def resolve_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` checked by ``FaceCNNConfig`` (every key of ``jobs/configs/model/face_cnn.yaml``),
    as plain values; labels are required."""
    return validated_config("face_cnn", cfg)


class ToGray(nn.Module):
    """ImageNet-normalised RGB -> the luma replicated to three channels, still normalised.

    With ``equalize`` the luma is histogram-equalised per image first (256 levels, the
    classic ``cdf`` mapping). FER2013 circulates in two renderings of the same faces: the
    raw pixels (FER+'s PNGs) and histogram-equalised JPEGs (the class-folder copies); and
    photos differ in exposure and contrast. Equalising inside the model maps all of them
    to one rendering, for training and inference alike, at the cost of a histogram.
    """

    def __init__(self, equalize: bool = False) -> None:
        super().__init__()
        self.equalize = bool(equalize)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("luma", torch.tensor(_LUMA).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = x * self.std + self.mean
        gray = (raw * self.luma).sum(dim=1, keepdim=True)
        if self.equalize:
            gray = equalize_histogram(gray)
        return (gray - self.mean) / self.std


@torch.no_grad()
def equalize_histogram(gray: torch.Tensor) -> torch.Tensor:
    """Per-image histogram equalisation of float images [B, 1, H, W] in [0, 1] (256 levels):
    each level goes to (cdf(level) - cdf_min) / (N - cdf_min). A constant image is returned
    unchanged. Batched: one scatter, one cumsum, one gather for the whole batch."""
    b = gray.shape[0]
    levels = (gray.reshape(b, -1).clamp(0.0, 1.0) * 255.0).round().long()  # [B, N]
    count = levels.shape[1]
    hist = torch.zeros(b, 256, device=gray.device, dtype=gray.dtype).scatter_add_(1, levels, torch.ones_like(gray.reshape(b, -1)))
    cdf = hist.cumsum(dim=1)
    cdf_min = cdf.gather(1, levels.min(dim=1, keepdim=True).values)  # pixels at the darkest level
    span = count - cdf_min
    mapped = (cdf.gather(1, levels) - cdf_min) / span.clamp(min=1.0)
    flat = torch.where(span > 0, mapped, gray.reshape(b, -1))
    return flat.reshape(gray.shape)


@torch.inference_mode()
def head_logits(model: nn.Module, crops: dict[str, np.ndarray]) -> torch.Tensor:
    """float32 logits [B, K] of a head-crop model (``forward(head)`` returning ``logits``)
    on uint8 crops [B, S, S, 3], computed in eval mode (the model's mode is restored)."""
    if "head" not in crops:
        raise KeyError(f"{model.name} needs the 'head' crop; got levels {sorted(crops)}")
    x = crops_to_input(crops["head"], model.input_size, next(model.parameters()).device, "head crops")
    if len(x) == 0:
        return torch.zeros(0, len(model.labels))
    was_training = model.training
    model.eval()
    try:
        return model(x)["logits"].float()
    finally:
        model.train(was_training)


class FaceCNN(nn.Module):
    """Backbone + linear head over the head crop; an ``EmotionModel``."""

    name = "face_cnn"
    input_levels: tuple[str, ...] = ("head",)

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__()
        cfg = resolve_config(cfg)
        adopt_config(self, cfg)
        self.to_gray = ToGray() if cfg["grayscale"] else nn.Identity()
        self.backbone, channels = build_backbone(cfg["backbone"], bool(cfg["pretrained"]), cfg["backbone_weights"])
        self.dropout = nn.Dropout(float(cfg["dropout"]))
        self.classifier = nn.Linear(channels, len(self.labels))

    def forward(self, head: torch.Tensor) -> dict[str, torch.Tensor]:
        if head.ndim != 4 or head.shape[1] != 3:
            raise ValueError(f"head images must be [B, 3, S, S], got {list(head.shape)}")
        features = self.backbone(self.to_gray(head)).mean(dim=(2, 3))
        return {"logits": self.classifier(self.dropout(features)), "features": features}

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)

    def predict(self, crops: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """uint8 head crops [B, S, S, 3] (RGB, S = input_size) -> ``scores`` float32 [B, K]."""
        return {"scores": self.probabilities(head_logits(self, crops)).cpu().numpy().astype(np.float32)}

    def output_columns(self, outputs: dict[str, np.ndarray]) -> dict:
        return single_level_columns(outputs["scores"])


@register_spec("face_cnn")
def face_cnn_input_spec(cfg: Mapping[str, Any], checkpoint_hash: str = "untrained") -> InputSpec:
    resolved = resolve_config(cfg)
    return InputSpec(name="face_cnn", levels=FaceCNN.input_levels, input_size=resolved["input_size"],
                     labels=tuple(resolved["labels"]), multi_label=bool(resolved["multi_label"]),
                     model_id=model_id("face_cnn", checkpoint_hash))


@register_model("face_cnn")
def build_face_cnn(cfg: Mapping[str, Any]) -> FaceCNN:
    """Build ``face_cnn`` from its config (``FaceCNNConfig``)."""
    return FaceCNN(cfg)
