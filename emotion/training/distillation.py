"""Knowledge distillation: a student trained on its labels and on a teacher's soft scores
(Hinton, Vinyals and Dean, "Distilling the knowledge in a neural network", 2015).

``train.distill.teacher`` names a trained checkpoint (a ``face_ensemble`` checkpoint
included: an ensemble teaches the mean of its members' tempered softmaxes). ``Distilled``
wraps a training family: its ``collate`` adds ``teacher_probabilities`` [B, K] to the
targets of each training batch, computed by the frozen teacher on the very images the
student sees (after augmentation), and its criterion is ``DistillationCriterion``:

    loss = (1 - w) * family loss + w * T^2 * KL(teacher_T || student_T)

with w = ``train.distill.weight`` and T = ``train.distill.temperature`` (softmaxes of
logits / T; the T^2 keeps the gradient's scale as T changes). The distillation term reads
the student's ``logits`` over all its classes, so a row whose dataset lacks a class
(ExpW: contempt) still learns what the teacher thinks of it. Validation is unchanged.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emotion.models.protocol import InputSpec
from emotion.settings import AugmentSettings, DistillSettings, LoopSettings


def check_teacher(student: InputSpec, teacher: InputSpec) -> None:
    """A teacher must read the student's crops and score its labels, in its order."""
    if not teacher.reads_like(student):
        raise ValueError(f"train.distill.teacher reads {teacher.reading()}; the student reads {student.reading()}: "
                         "a teacher must read the same crops and score the same labels")


@torch.no_grad()
def teacher_probabilities(teacher: nn.Module, inputs: Mapping[str, torch.Tensor], temperature: float) -> torch.Tensor:
    """[B, K]: softmax(logits / T) of ``teacher`` on ``inputs`` (its levels only); for an
    ensemble (a model with ``members``), the mean over its members."""
    members = teacher.members if isinstance(getattr(teacher, "members", None), nn.ModuleList) else [teacher]
    probabilities = [torch.softmax(member(**{level: inputs[level] for level in member.input_levels})["logits"]
                                   / temperature, dim=-1) for member in members]
    return torch.stack(probabilities).mean(dim=0)


class DistillationCriterion(nn.Module):
    """``(1 - w) * base + w * loss_distill`` (module doc); the base criterion's terms are
    reported beside ``loss_distill``."""

    def __init__(self, base: nn.Module, weight: float, temperature: float):
        super().__init__()
        self.base = base
        self.weight = float(weight)
        self.temperature = float(temperature)

    def loss_distill(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        teacher = targets["teacher_probabilities"]
        log_student = F.log_softmax(outputs["logits"].float() / self.temperature, dim=-1)
        return F.kl_div(log_student, teacher, reduction="batchmean") * self.temperature ** 2

    def forward(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        base = self.base(outputs, targets)
        distill = self.loss_distill(outputs, targets)
        total = (1.0 - self.weight) * base["loss"] + self.weight * distill
        return {**base, "loss": total, "loss_distill": distill.detach()}


class Distilled:
    """A training family whose student also learns from a frozen teacher (module doc); every
    other part of the family (rows, optimiser groups, validation) is the wrapped one's."""

    def __init__(self, family: Any, teacher: nn.Module, settings: DistillSettings):
        self.family = family
        self.teacher = teacher.eval().requires_grad_(False)
        self.settings = settings

    def __getattr__(self, name: str) -> Any:  # row_maker, parameter_groups, evaluate, before_training
        if name == "family":  # not set yet: no lookup through it
            raise AttributeError(name)
        return getattr(self.family, name)

    def build_model(self, cfg: Mapping[str, Any]) -> nn.Module:
        return self.family.build_model(cfg)

    def build_criterion(self, settings: LoopSettings, model: nn.Module,
                        class_prior: list[float] | None = None) -> nn.Module:
        base = self.family.build_criterion(settings, model, class_prior)
        return DistillationCriterion(base, self.settings.weight, self.settings.temperature)

    def collate(self, batch: Mapping[str, np.ndarray], model: nn.Module, train: bool, device: torch.device,
                augment_cfg: AugmentSettings | None = None,
                generator: torch.Generator | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        inputs, targets = self.family.collate(batch, model, train, device, augment_cfg, generator)
        if train:
            targets["teacher_probabilities"] = teacher_probabilities(self.teacher, inputs, self.settings.temperature)
        return inputs, targets
