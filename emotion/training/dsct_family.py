"""The training family of DSCT (``model=dsct``): whole-image rows, set-prediction loss,
and validation by the DSCT protocol.

Where it differs from the crop-classifier families (``families.py`` lists the seams):

* ``row_maker``: whole-image rows with every person's box and labels
  (``emotion.training.image_rows``), not one row per person;
* ``collate``: the image, augmented with a horizontal flip (boxes mirrored with it) and
  brightness/contrast jitter (no zoom or rotation: boxes would need warping too); targets
  ``{"labels": [B, K] image-level, "people": [{"boxes": [n, 4] cxcywh, "labels": [n, K]}]}``;
* ``build_criterion``: ``emotion.models.dsct.criterion`` from ``train.dsct`` (loss weights,
  matcher costs, focal parameters) and the model's decoder depth;
* ``parameter_groups``: the backbone at ``train.dsct.backbone_lr_scale`` x the learning
  rate;
* ``evaluate``: each validation person matched to the highest-IoU predicted box; the score
  is mAP (multi-label) or accuracy, with ``ap50`` of the subject boxes alongside.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from emotion.models.backbones import imagenet_normalize
from emotion.models.dsct.criterion import build_criterion as build_set_criterion
from emotion.models.dsct.evaluation import dsct_report
from emotion.models.dsct.model import build_dsct
from emotion.models.dsct.postprocess import postprocess
from emotion.settings import AugmentSettings, LoopSettings
from emotion.training.augment import color_jitter, given, to_float
from emotion.training.image_rows import image_rows
from emotion.training.loop import unwrap

ROW_COLUMNS = ("crop_context", "boxes", "people_labels", "num_people", "labels")


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    cx, cy, w, h = (boxes[..., i] for i in range(4))
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def people_targets(batch: Mapping[str, np.ndarray], device: torch.device,
                   flipped: torch.Tensor | None = None) -> list[dict[str, torch.Tensor]]:
    """Per-image ``{"boxes": [n, 4] cxcywh, "labels": [n, K]}`` of a row batch; boxes of
    the images in ``flipped`` (bool [B]) are mirrored."""
    out = []
    for i, n in enumerate(np.asarray(batch["num_people"]).tolist()):
        boxes = torch.as_tensor(np.array(batch["boxes"][i][:n], dtype=np.float32), device=device).reshape(-1, 4)
        if flipped is not None and bool(flipped[i]):
            boxes[:, 0] = 1.0 - boxes[:, 0]
        labels = torch.as_tensor(np.array(batch["people_labels"][i][:n], dtype=np.float32), device=device)
        out.append({"boxes": boxes, "labels": labels.reshape(n, -1)})
    return out


class DSCTFamily:
    """What the trainer needs to know about DSCT (module doc)."""

    def row_maker(self, model_cfg: Mapping[str, Any]) -> Callable[..., dict[str, np.ndarray]]:
        """``image_rows`` with room for the model's subject queries."""
        return partial(image_rows, max_people=int(model_cfg["num_subject_queries"]))

    def build_model(self, cfg: Mapping[str, Any]) -> nn.Module:
        return build_dsct(cfg)

    def build_criterion(self, settings: LoopSettings, model: nn.Module,
                        class_prior: list[float] | None = None) -> nn.Module:
        return build_set_criterion(settings.dsct, dec_layers=int(model.config["dec_layers"]),
                                   multi_label=bool(model.multi_label))

    def parameter_groups(self, model: nn.Module, settings: LoopSettings) -> list[dict[str, Any]]:
        return model.parameter_groups(settings.lr, settings.dsct.backbone_lr_scale, settings.weight_decay)

    def collate(self, batch: Mapping[str, np.ndarray], model: nn.Module, train: bool, device: torch.device,
                augment_cfg: AugmentSettings | None = None,
                generator: torch.Generator | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        missing = [c for c in ROW_COLUMNS if c not in batch]
        if missing:
            raise KeyError(f"DSCT training batch lacks {missing} (columns: {sorted(batch)}); "
                           "its rows come from emotion.training.image_rows")
        images = to_float(torch.from_numpy(np.require(batch["crop_context"], dtype=np.uint8, requirements="W")).to(device))
        flipped = None
        if train:
            cfg = given(augment_cfg)
            if cfg.flip:
                flipped = torch.rand(len(images), device=device, generator=generator) < 0.5
                images = torch.where(flipped.view(-1, 1, 1, 1), images.flip(-1), images)
            images = color_jitter(images, cfg, generator)
        targets = {"labels": torch.from_numpy(np.asarray(batch["labels"], dtype=np.float32)).to(device),
                   "people": people_targets(batch, device, flipped.cpu() if flipped is not None else None)}
        return {"context": imagenet_normalize(images)}, targets

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[Mapping[str, np.ndarray]], *, rank: int = 0,
                 world_size: int = 1) -> dict[str, Any]:
        """The DSCT protocol on validation rows, in normalised image coordinates (IoU and
        AP50 do not depend on the unit). Every rank scores every batch (validation sets
        are small next to training), so every rank returns the same report."""
        core = unwrap(model)
        started = time.perf_counter()
        was_training = core.training
        core.eval()
        predictions, truth = [], []
        try:
            for batch in batches:
                inputs, targets = self.collate(batch, core, False, next(core.parameters()).device)
                outputs = core(**inputs)
                predictions += postprocess(outputs, [(1, 1)] * len(targets["people"]), multi_label=core.multi_label)
                truth += [{"boxes": cxcywh_to_xyxy(t["boxes"].cpu().numpy()), "labels": t["labels"].cpu().numpy()}
                          for t in targets["people"]]
        finally:
            core.train(was_training)
        report = dsct_report(predictions, truth, tuple(core.labels), bool(core.multi_label))
        report["score"] = report["mAP"] if core.multi_label else report["accuracy"]
        report["seconds"] = round(time.perf_counter() - started, 3)
        return report
