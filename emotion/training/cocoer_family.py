"""The training family of CocoER (``emotion.models.joint.cocoer``): what the generic loop
(``loop.py``, ``emotion.pipelines.training``) needs to train the joint model
(``families.Family``; ``families.FAMILIES`` registers it).

* ``build_model(cfg)``: the registry's ``cocoer`` builder (labels from the dataset);
* ``build_criterion(settings, model)``: ``emotion.losses.CocoERCriterion`` — fused, head,
  body, context and vocabulary classification terms plus the workspace's gradient
  distance, weighted by ``train.loss_weights`` (defaults: ``DEFAULT_WEIGHTS``);
* ``collate``: rows (``crop_head``/``crop_body``/``crop_context`` uint8 [B, S, S, 3],
  ``labels`` multi-hot) -> the forward's ``head``/``body``/``context`` float tensors.
  Non-training batches go through ``CocoER._crops_to_tensor``, the very function
  ``CocoER.predict`` uses, so the projection pre-training embeds exactly what tagging
  sees; training batches go through ``augment`` (same ImageNet normalisation after the
  random transforms). Validation needs no family: ``loop.evaluate`` calls
  ``CocoER.predict`` itself;
* ``before_training(model, batches, settings, device)``: the short pre-training of the
  vocabulary projection ω (step 4 of the pipeline in ``cocoer.py``; ``vocabulary.py``):
  frozen image embeddings of the training split's context windows, then
  ``pretrain_projection`` towards the class prototypes of each person's labels. The loop
  calls it once, before the first epoch of a fresh run (a resumed run has ω in its
  checkpoint). Settings: ``train.projection`` (``steps: 0`` skips it).

Only trainable parameters reach the optimiser (``loop.build_optimizer`` keeps those with
``requires_grad``): the vocabulary image encoder and ω are frozen inside the model.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from emotion.losses import CocoERCriterion
from emotion.models.joint.vocabulary import collect_embeddings, pretrain_projection, projection_loss
from emotion.settings import AugmentSettings, LoopSettings
from emotion.training.augment import augment

log = logging.getLogger(__name__)

class CocoERLoss(nn.Module):
    """``CocoERCriterion`` on the loop's targets dict (multi-hot ``labels`` for multi-label
    sets, class indices ``classes`` otherwise)."""

    def __init__(self, multi_label: bool, weight_dict: Mapping[str, float] | None = None):
        super().__init__()
        self.criterion = CocoERCriterion(multi_label, weight_dict)
        self.multi_label = bool(multi_label)

    def forward(self, outputs: Mapping[str, Any], targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.criterion(outputs, targets["labels"] if self.multi_label else targets["classes"])


def _writable_uint8(array: Any) -> np.ndarray:
    # Ray Data hands out read-only arrays; torch.from_numpy wants writable memory.
    return np.require(array, dtype=np.uint8, requirements=("C", "W"))


class CocoERFamily:
    """CocoER's training family (see the module doc)."""

    def build_model(self, cfg: Mapping[str, Any]) -> nn.Module:
        from emotion.models.registry import build_model

        return build_model("cocoer", cfg)

    def build_criterion(self, settings: LoopSettings, model: nn.Module,
                        class_prior: list[float] | None = None) -> nn.Module:
        return CocoERLoss(model.multi_label, settings.loss_weights)

    def collate(self, batch: Mapping[str, np.ndarray], model: nn.Module, train: bool, device: torch.device,
                augment_cfg: AugmentSettings | None = None,
                generator: torch.Generator | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Rows -> ({head, body, context: float [B, 3, S, S]}, {labels [B, K], classes [B]})."""
        missing = [f"crop_{m}" for m in model.input_levels if f"crop_{m}" not in batch]
        if missing:
            raise KeyError(f"CocoER training batch lacks {missing} (columns: {sorted(batch)})")
        crops = {m: _writable_uint8(batch[f"crop_{m}"]) for m in model.input_levels}
        if train:
            inputs = {m: augment(torch.from_numpy(crops[m]).to(device), augment_cfg, generator)
                      for m in model.input_levels}
        else:
            inputs = model._crops_to_tensor(crops)  # noqa: SLF001 - the normalisation predict() applies
        labels = torch.as_tensor(np.array(batch["labels"], dtype=np.float32), device=device)  # a writable copy
        return inputs, {"labels": labels, "classes": labels.argmax(dim=-1)}

    def context_batches(self, model: nn.Module, batches: Iterable[Mapping[str, np.ndarray]],
                        device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(context images as the model reads them, multi-hot labels) per row batch."""
        for batch in batches:
            inputs, targets = self.collate(batch, model, False, device)
            yield inputs[getattr(model, "vocab_level", "context")], targets["labels"]

    def before_training(self, model: nn.Module, batches: Iterable[Mapping[str, np.ndarray]],
                        settings: LoopSettings, device: torch.device) -> dict[str, Any]:
        """Pre-train ω on the training rows (see the module doc). Returns what it did:
        ``projection_images``, ``projection_loss_before`` / ``_after`` (the mean squared
        distance to the label prototypes over the embedded rows); empty when skipped."""
        projection = settings.projection
        if projection.steps <= 0:
            return {}
        vocab = model.vocabulary
        was_training = model.training
        model.eval()
        try:
            embeddings, targets = collect_embeddings(vocab, self.context_batches(model, batches, device),
                                                     max_images=projection.max_images)
        finally:
            model.train(was_training)
        embeddings = embeddings.to(device)
        targets = targets.to(device)
        with torch.no_grad():
            before = float(projection_loss(vocab.projection(embeddings), targets, vocab.prototypes))
        pretrain_projection(vocab, embeddings, targets, steps=projection.steps, lr=projection.lr,
                            batch_size=projection.batch_size, weight_decay=projection.weight_decay,
                            seed=projection.seed)
        with torch.no_grad():
            after = float(projection_loss(vocab.projection(embeddings), targets, vocab.prototypes))
        report = {"projection_images": int(len(targets)), "projection_loss_before": before,
                  "projection_loss_after": after}
        log.info("vocabulary projection pre-trained on %d rows: prototype distance %.4f -> %.4f",
                 report["projection_images"], before, after)
        return report

