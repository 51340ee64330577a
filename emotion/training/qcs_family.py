"""Training the ``qcs`` face model: quadruplets formed inside each batch, and its criterion.

``QCSFamily.collate`` turns a batch of training rows into the head images and, for a model
with cross-similarity, class-balanced quadruplets of row indices
(``emotion.training.quadruplets``), drawn from the epoch's seeded generator. The rows come
from Ray Data shards as for any family, so quadruplets are formed on every worker from its
own shard, and the backbone encodes each image of the batch once.

``QCSCriterion`` follows DETR's layout: one ``loss_<term>`` method per term and a weight
dict (``train.loss_weights``: ``base``, ``refined``; default 1 each). With both weights
1 and every image in a quadruplet, the total is the mean of the eight cross-entropy terms
of each quadruplet (four base, four refined); images left out of every quadruplet (their
class had no pair in the batch) still train the base branch.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

from emotion.settings import AugmentSettings, LoopSettings
from emotion.training.classifier_family import ClassifierFamily
from emotion.training.quadruplets import sample_quadruplets
from emotion.training.targets import check_target_mode, classification_loss, loss_settings

DEFAULT_WEIGHTS: dict[str, float] = {"base": 1.0, "refined": 1.0}


class QCSCriterion(nn.Module):
    """Weighted mean of ``loss_base`` and ``loss_refined`` (module doc)."""

    def __init__(self, target_mode: str = "majority", label_smoothing: float = 0.0,
                 weights: Mapping[str, float] | None = None, refined: bool = True,
                 adjustment: torch.Tensor | None = None):
        super().__init__()
        self.target_mode = check_target_mode(target_mode)
        self.label_smoothing = float(label_smoothing)
        self.adjustment = adjustment
        chosen = {**DEFAULT_WEIGHTS, **dict(weights or {})}
        unknown = sorted(set(chosen) - set(DEFAULT_WEIGHTS))
        if unknown:
            raise ValueError(f"unknown qcs loss weight(s) {unknown}; known: {sorted(DEFAULT_WEIGHTS)}")
        if not refined:
            chosen["refined"] = 0.0
        self.weights = {name: float(w) for name, w in chosen.items() if float(w) > 0}
        if not self.weights:
            raise ValueError("every qcs loss weight is 0: nothing to train")

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return classification_loss(logits, labels, self.target_mode, self.label_smoothing,
                                   adjustment=self.adjustment)

    def loss_base(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self._loss(outputs["logits"], targets["labels"])

    def loss_refined(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        refined = outputs.get("refined_logits")
        if refined is None:
            raise KeyError("loss_refined needs `refined_logits`: pass quadruplets to the model")
        labels = targets["labels"][targets["quadruplets"].reshape(-1)]
        return self._loss(refined.reshape(-1, refined.shape[-1]), labels)

    def forward(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        terms = {name: getattr(self, f"loss_{name}")(outputs, targets) for name in self.weights}
        total = sum(self.weights[name] * value for name, value in terms.items()) / sum(self.weights.values())
        return {"loss": total, **{f"loss_{name}": value.detach() for name, value in terms.items()}}


class QCSFamily(ClassifierFamily):
    """What the trainer needs for ``qcs`` (``emotion.training.families.Family``): the
    classifier's collate plus the batch's quadruplets, and ``QCSCriterion``."""

    def __init__(self) -> None:
        super().__init__("qcs")

    def build_criterion(self, settings: LoopSettings, model: nn.Module,
                        class_prior: list[float] | None = None) -> nn.Module:
        return QCSCriterion(weights=settings.loss_weights, refined=model.cross is not None,
                            **loss_settings(settings, class_prior))

    def collate(self, batch: Mapping[str, np.ndarray], model: nn.Module, train: bool, device: torch.device,
                augment_cfg: AugmentSettings | None = None,
                generator: torch.Generator | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        inputs, targets = super().collate(batch, model, train, device, augment_cfg, generator)
        if train and model.cross is not None:
            # The quadruplets' seed comes from the epoch's generator, so a resumed epoch repeats them.
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device if generator
                                     is not None else "cpu").item())
            classes = targets["classes"].cpu().numpy()
            quads = torch.as_tensor(sample_quadruplets(classes, np.random.default_rng(seed)), device=device)
            inputs["quadruplets"] = targets["quadruplets"] = quads
        return inputs, targets
