"""Model families: what the trainer needs to know about a kind of model.

The training loop (``loop.py``) is the same for every model; a family supplies the
parts that differ (``Family``):

* ``build_model(cfg) -> nn.Module`` — an ``EmotionModel`` that is also an ``nn.Module``,
  with ``config`` (a JSON-able mapping that ``emotion.models.registry.build_model(name,
  config)`` rebuilds it from), ``labels``, ``multi_label``, ``input_levels``,
  ``input_size``; ``forward(**{level: images})`` returns a dict with ``logits`` [B, K];
* ``build_criterion(cfg, model) -> nn.Module`` — ``criterion(outputs, targets)`` returns
  a dict of loss terms with the total under ``loss``;
* ``collate(batch, model, train, device, augment_cfg, generator) -> (inputs, targets)`` —
  training rows (``rows.py``: ``crop_<level>`` uint8, ``labels`` multi-hot, ``vad``)
  into the forward's keyword inputs (augmented when ``train``) and the criterion's
  targets (``labels`` multi-hot [B, K], ``classes`` [B]).

Validation needs nothing from a family: the model owns its outputs (``predict``), and
``loop.evaluate`` scores and reports exactly as ``emotion eval`` does (``emotion.metrics``).

``FAMILIES`` maps a registered model name to its family.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emotion.training.augment import AugmentConfig, augment, prepare_eval
from emotion.training.cocoer_family import CocoERFamily
from emotion.training.qcs_family import QCSFamily
from emotion.training.targets import check_target_mode, classification_loss, logit_adjustment


class Family(Protocol):
    """What ``loop.py`` and ``emotion.pipelines.training`` call on a family (module doc)."""

    def build_model(self, cfg: Mapping[str, Any]) -> nn.Module: ...

    def build_criterion(self, cfg: Mapping[str, Any], model: nn.Module) -> nn.Module: ...

    def collate(self, batch: Mapping[str, np.ndarray], model: nn.Module, train: bool, device: torch.device,
                augment_cfg: AugmentConfig | None = None,
                generator: torch.Generator | None = None
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]: ...


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
    return {"labels": labels, "classes": labels.argmax(dim=-1)}


class ClassifierFamily:
    """Models whose forward takes the crops of their levels and returns ``logits``
    (``face_cnn``); a classification loss on them."""

    def __init__(self, builder_name: str):
        self.builder_name = builder_name

    def build_model(self, cfg: Mapping[str, Any]) -> nn.Module:
        from emotion.models.registry import build_model

        return build_model(self.builder_name, cfg)

    def build_criterion(self, cfg: Mapping[str, Any], model: nn.Module) -> nn.Module:
        return ClassificationCriterion(model.multi_label, float(cfg.get("label_smoothing", 0.0)),
                                       str(cfg.get("target_mode") or "majority"),
                                       logit_adjustment(cfg.get("class_prior"), float(cfg.get("logit_adjust_tau") or 0)))

    def collate(self, batch: Mapping[str, np.ndarray], model: nn.Module, train: bool, device: torch.device,
                augment_cfg: AugmentConfig | None = None,
                generator: torch.Generator | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        inputs = {}
        for level in model.input_levels:
            key = f"crop_{level}"
            if key not in batch:
                raise KeyError(f"training batch has no {key!r} column (columns: {sorted(batch)})")
            # Ray Data hands out read-only arrays; torch wants writable memory.
            images = torch.from_numpy(np.require(batch[key], dtype=np.uint8, requirements="W")).to(device)
            inputs[level] = augment(images, augment_cfg or AugmentConfig(), generator) if train else prepare_eval(images)
        return inputs, _targets(batch, device)


# Registered model name -> its family.
FAMILIES: dict[str, Callable[[], Family]] = {
    "face_cnn": lambda: ClassifierFamily("face_cnn"),
    "cocoer": CocoERFamily,
    "qcs": QCSFamily,
}


def get_family(model_name: str) -> Family:
    """The training family of registered model ``model_name``."""
    try:
        return FAMILIES[model_name]()
    except KeyError:
        raise KeyError(f"model {model_name!r} has no training family; trainable models: {sorted(FAMILIES)}") from None


__all__ = ["FAMILIES", "ClassificationCriterion", "ClassifierFamily", "CocoERFamily", "Family", "QCSFamily", "get_family"]
