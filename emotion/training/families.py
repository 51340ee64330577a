"""Model families: what the trainer needs to know about a kind of model.

The training loop (``loop.py``) is the same for every model; a family supplies the
parts that differ (``Family``):

* ``build_model(cfg) -> nn.Module`` — an ``EmotionModel`` that is also an ``nn.Module``,
  with ``config`` (a JSON-able mapping that ``emotion.models.registry.build_model(name,
  config)`` rebuilds it from), ``labels``, ``multi_label``, ``input_levels``,
  ``input_size``; ``forward(**{level: images})`` returns a dict with ``logits`` [B, K];
* ``build_criterion(settings, model, class_prior) -> nn.Module`` — from the ``train``
  settings (``emotion.settings.LoopSettings``) and, when ``train.logit_adjust_tau`` > 0,
  the train split's class prior; ``criterion(outputs, targets)`` returns a dict of loss
  terms with the total under ``loss``;
* ``collate(batch, model, train, device, augment_cfg, generator) -> (inputs, targets)`` —
  training rows (``rows.py``: ``crop_<level>`` uint8, ``labels`` multi-hot, ``vad``)
  into the forward's keyword inputs (augmented when ``train``) and the criterion's
  targets (``labels`` multi-hot [B, K], ``classes`` [B]).

Validation needs nothing from a family: the model owns its outputs (``predict``), and
``loop.evaluate`` scores and reports exactly as ``emotion eval`` does (``emotion.metrics``).

Optional seams, for models that are not crop classifiers (DSCT finds the people itself):

* ``row_maker(model_cfg) -> make_rows`` — rows other than one per person (default
  ``rows.person_rows``), called as ``make_rows(samples, spec, counts, num_labels=,
  multi_label=)``;
* ``parameter_groups(model, settings)`` — optimiser groups (default: weight decay on
  matrices and kernels only, one learning rate);
* ``evaluate(model, batches, rank=, world_size=)`` — validation (default ``loop.evaluate``);
  returns a report with ``score``;
* ``before_training(model, batches, settings, device)`` — once per fresh run (CocoER).

``FAMILIES`` maps a registered model name to its family.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol

import numpy as np
import torch
from torch import nn

from emotion.settings import AugmentSettings, LoopSettings
from emotion.training.classifier_family import ClassificationCriterion, ClassifierFamily
from emotion.training.cocoer_family import CocoERFamily
from emotion.training.dsct_family import DSCTFamily
from emotion.training.qcs_family import QCSFamily


class Family(Protocol):
    """What ``loop.py`` and ``emotion.pipelines.training`` call on a family (module doc)."""

    def build_model(self, cfg: Mapping[str, Any]) -> nn.Module: ...

    def build_criterion(self, settings: LoopSettings, model: nn.Module,
                        class_prior: list[float] | None = None) -> nn.Module: ...

    def collate(self, batch: Mapping[str, np.ndarray], model: nn.Module, train: bool, device: torch.device,
                augment_cfg: AugmentSettings | None = None,
                generator: torch.Generator | None = None
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]: ...


# Registered model name -> its family.
FAMILIES: dict[str, Callable[[], Family]] = {
    "face_cnn": lambda: ClassifierFamily("face_cnn"),
    "cocoer": CocoERFamily,
    "qcs": QCSFamily,
    "dsct": DSCTFamily,
}


def get_family(model_name: str) -> Family:
    """The training family of registered model ``model_name``."""
    try:
        return FAMILIES[model_name]()
    except KeyError:
        raise KeyError(f"model {model_name!r} has no training family; trainable models: {sorted(FAMILIES)}") from None


__all__ = ["FAMILIES", "ClassificationCriterion", "ClassifierFamily", "CocoERFamily", "DSCTFamily", "Family", "QCSFamily", "get_family"]
