"""Models whose forward takes the crops of their levels and returns ``logits`` (``face_cnn``,
and the base of ``qcs``): a classification loss on them, and the collate that turns
training rows into augmented crops and targets."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emotion.settings import AugmentSettings, LoopSettings
from emotion.training.augment import augment, prepare_eval
from emotion.training.targets import check_target_mode, classification_loss, loss_settings


class ClassificationCriterion(nn.Module):
    """BCE-with-logits (multi-label), or a single-label loss read per ``target_mode``
    (``emotion.training.targets``: cross-entropy on the class by default)."""

    def __init__(self, multi_label: bool, label_smoothing: float = 0.0, target_mode: str = "majority",
                 adjustment: torch.Tensor | None = None):
        super().__init__()
        self.multi_label = bool(multi_label)
        self.label_smoothing = float(label_smoothing)
        self.target_mode = check_target_mode(target_mode)
        self.adjustment = adjustment

    def forward(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = outputs["logits"].float()
        if self.multi_label:
            loss = F.binary_cross_entropy_with_logits(logits, targets["labels"].to(logits.dtype))
        else:
            loss = classification_loss(logits, targets["labels"], self.target_mode, self.label_smoothing,
                                       adjustment=self.adjustment)
        return {"loss": loss, "loss_cls": loss.detach()}


def _targets(batch: Mapping[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    labels = torch.as_tensor(np.asarray(batch["labels"], dtype=np.float32), device=device)
    # NaN marks a class the row's dataset lacks (emotion.training.targets): never its class.
    return {"labels": labels, "classes": torch.nan_to_num(labels, nan=-1.0).argmax(dim=-1)}


class ClassifierFamily:
    """Models whose forward takes the crops of their levels and returns ``logits``
    (``face_cnn``); a classification loss on them."""

    def __init__(self, builder_name: str):
        self.builder_name = builder_name

    def build_model(self, cfg: Mapping[str, Any]) -> nn.Module:
        from emotion.models.registry import build_model

        return build_model(self.builder_name, cfg)

    def build_criterion(self, settings: LoopSettings, model: nn.Module,
                        class_prior: list[float] | None = None) -> nn.Module:
        return ClassificationCriterion(model.multi_label, **loss_settings(settings, class_prior))

    def collate(self, batch: Mapping[str, np.ndarray], model: nn.Module, train: bool, device: torch.device,
                augment_cfg: AugmentSettings | None = None,
                generator: torch.Generator | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        inputs = {}
        for level in model.input_levels:
            key = f"crop_{level}"
            if key not in batch:
                raise KeyError(f"training batch has no {key!r} column (columns: {sorted(batch)})")
            # Ray Data hands out read-only arrays; torch wants writable memory.
            images = torch.from_numpy(np.require(batch[key], dtype=np.uint8, requirements="W")).to(device)
            inputs[level] = augment(images, augment_cfg, generator) if train else prepare_eval(images)
        return inputs, _targets(batch, device)
