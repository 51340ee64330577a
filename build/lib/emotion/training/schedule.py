"""Learning-rate schedules as pure functions of the global step.

A schedule holds no state, so resuming needs only the step count (saved in the
checkpoint) and the same config: ``lr(step) = base_lr x lr_factor(step)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch

SCHEDULES = ("cosine", "step", "constant")


@dataclass(frozen=True)
class LRSchedule:
    """Linear warm-up, then ``kind``: cosine decay to ``min_factor``, step decay by
    ``gamma`` every ``step_epochs`` epochs, or constant."""

    kind: str
    total_steps: int
    steps_per_epoch: int
    warmup_steps: int = 0
    min_factor: float = 0.0
    step_epochs: int = 3
    gamma: float = 0.1

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


def build_schedule(cfg: Mapping, steps_per_epoch: int, epochs: int) -> LRSchedule:
    """``cfg``: schedule (cosine|step|constant), warmup_epochs, min_lr_factor, step_epochs, gamma."""
    steps_per_epoch = max(1, int(steps_per_epoch))
    return LRSchedule(
        kind=str(cfg.get("schedule", "cosine")),
        total_steps=steps_per_epoch * max(1, int(epochs)),
        steps_per_epoch=steps_per_epoch,
        warmup_steps=int(round(float(cfg.get("warmup_epochs", 0.0)) * steps_per_epoch)),
        min_factor=float(cfg.get("min_lr_factor", 0.0)),
        step_epochs=int(cfg.get("step_epochs", 3)),
        gamma=float(cfg.get("gamma", 0.1)),
    )
