"""Model families: what the trainer needs to know about a kind of model.

The training loop (``loop.py``) is the same for every model; a family supplies the
parts that differ:

* ``build_model(cfg) -> nn.Module`` — an ``EmotionModel`` that is also an ``nn.Module``,
  with ``config`` (a JSON-able mapping that ``emotion.models.registry.build_model(name,
  config)`` rebuilds it from), ``labels``, ``multi_label``, ``input_levels``,
  ``input_size``; ``forward(**{level: images})`` returns a dict with ``logits`` [B, K];
* ``build_criterion(cfg, model) -> nn.Module`` — ``criterion(outputs, targets)`` returns
  a dict of loss terms with the total under ``loss``;
* ``collate(batch, model, train, device, generator) -> (inputs, targets)`` — training
  rows (``rows.py``: ``crop_<level>`` uint8, ``labels`` multi-hot, ``vad``) into the
  forward's keyword inputs (augmented when ``train``) and the criterion's targets;
* ``scores(model, outputs) -> Tensor [B, K]`` — probabilities for the metrics;
* ``metrics(scores, labels, vad_true, vad_pred, label_names, multi_label) -> dict`` with
  ``score``, the number the best checkpoint is chosen by (accuracy for single-label
  sets, mean AP for multi-label ones).

``FAMILIES`` maps a registered model name to its family.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emotion import metrics as metric_fns
from emotion.training.augment import AugmentConfig, augment, build_augment, prepare_eval


class ClassificationCriterion(nn.Module):
    """Cross-entropy with label smoothing (single-label) or BCE-with-logits (multi-label)."""

    def __init__(self, multi_label: bool, label_smoothing: float = 0.0):
        super().__init__()
        self.multi_label = bool(multi_label)
        self.label_smoothing = float(label_smoothing)

    def forward(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = outputs["logits"].float()
        if self.multi_label:
            loss = F.binary_cross_entropy_with_logits(logits, targets["labels"].to(logits.dtype))
        else:
            loss = F.cross_entropy(logits, targets["classes"], label_smoothing=self.label_smoothing)
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
        return ClassificationCriterion(model.multi_label, float(cfg.get("label_smoothing", 0.0)))

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

    def scores(self, model: nn.Module, outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        logits = outputs["logits"].float()
        return torch.sigmoid(logits) if model.multi_label else torch.softmax(logits, dim=-1)

    def metrics(self, scores: np.ndarray, labels: np.ndarray, label_names: tuple[str, ...], multi_label: bool,
                vad_true: np.ndarray | None = None, vad_pred: np.ndarray | None = None) -> dict[str, Any]:
        return classification_metrics(scores, labels, label_names, multi_label, vad_true, vad_pred)


def classification_metrics(scores: np.ndarray, labels: np.ndarray, label_names: tuple[str, ...], multi_label: bool,
                           vad_true: np.ndarray | None = None, vad_pred: np.ndarray | None = None) -> dict[str, Any]:
    """``score`` (accuracy or mAP) plus details, from scores [N, K] and multi-hot labels [N, K]."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 2 or len(scores) == 0:
        raise ValueError(f"scores and labels must both be non-empty [N, K], got {scores.shape} and {labels.shape}")
    out: dict[str, Any] = {"n": int(len(scores))}
    if multi_label:
        mean_ap, per_class = metric_fns.mean_average_precision((labels > 0.5).astype(np.int64), scores)
        out.update({"score": mean_ap, "mAP": mean_ap,
                    "per_class_ap": {name: (None if np.isnan(v) else float(v)) for name, v in zip(label_names, per_class)}})
    else:
        report = metric_fns.classification_report(labels.argmax(axis=1), scores.argmax(axis=1), list(label_names))
        out.update({"score": report["accuracy"], "accuracy": report["accuracy"], "per_class": report["per_class"],
                    "confusion": report["confusion"]})
    if vad_true is not None and vad_pred is not None:
        known = np.isfinite(vad_true).all(axis=1) & np.isfinite(vad_pred).all(axis=1)
        if known.any():
            out["vad_mae"] = [float(v) for v in metric_fns.vad_error(vad_true[known], vad_pred[known])]
    return out


def _cocoer_family() -> ClassifierFamily:
    # emotion.training.cocoer_family imports this module: import it when first asked for.
    from emotion.training.cocoer_family import build_cocoer_family

    return build_cocoer_family("cocoer")


# Registered model name -> its family.
FAMILIES: dict[str, Callable[[], ClassifierFamily]] = {
    "face_cnn": lambda: ClassifierFamily("face_cnn"),
    "cocoer": _cocoer_family,
}


def get_family(model_name: str) -> ClassifierFamily:
    """The training family of registered model ``model_name``."""
    try:
        return FAMILIES[model_name]()
    except KeyError:
        raise KeyError(f"model {model_name!r} has no training family; trainable models: {sorted(FAMILIES)}") from None


__all__ = ["FAMILIES", "ClassificationCriterion", "ClassifierFamily", "build_augment",
           "classification_metrics", "get_family"]
