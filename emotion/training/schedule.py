"""Learning-rate schedules as pure functions of the global step.

A schedule holds no state, so resuming needs only the step count (saved in the
checkpoint) and the same config: ``lr(step) = base_lr x lr_factor(step)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import torch

from emotion.settings import LoopSettings

SCHEDULES = ("cosine", "step", "constant")


@dataclass(frozen=True)
class LRSchedule:
    """Linear warm-up, then ``kind``: cosine decay to ``min_factor``, step decay by
    ``gamma`` every ``step_epochs`` epochs, or constant."""

    kind: str
    total_steps: int
    steps_per_epoch: int
    warmup_steps: int
    min_factor: float
    step_epochs: int
    gamma: float

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown lr schedule {self.kind!r}; known: {list(SCHEDULES)}")
        if self.total_steps < 1 or self.steps_per_epoch < 1:
            raise ValueError(f"lr schedule needs total_steps and steps_per_epoch >= 1, got {self.total_steps}, {self.steps_per_epoch}")

    def factor(self, step: int) -> float:
        """Multiplier of the base learning rate at global step ``step`` (0-based)."""
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        if self.kind == "constant":
            return warm
        if self.kind == "step":
            return warm * self.gamma ** (step // (self.step_epochs * self.steps_per_epoch))
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return warm * (self.min_factor + (1.0 - self.min_factor) * cosine)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every parameter group's lr for ``step`` (groups keep ``base_lr``); returns the factor."""
        factor = self.factor(step)
        for group in optimizer.param_groups:
            group["lr"] = group.setdefault("base_lr", group["lr"]) * factor
        return factor


def build_schedule(settings: LoopSettings, steps_per_epoch: int) -> LRSchedule:
    """The schedule of the ``train`` settings (``schedule``, ``epochs``, ``warmup_epochs``,
    ``min_lr_factor``, ``step_epochs``, ``gamma``) at ``steps_per_epoch``."""
    steps_per_epoch = max(1, int(steps_per_epoch))
    return LRSchedule(
        kind=settings.schedule,
        total_steps=steps_per_epoch * settings.epochs,
        steps_per_epoch=steps_per_epoch,
        warmup_steps=int(round(settings.warmup_epochs * steps_per_epoch)),
        min_factor=settings.min_lr_factor,
        step_epochs=settings.step_epochs,
        gamma=settings.gamma,
    )
