"""The contract between emotion models and the predictor.

The predictor (``emotion.predictor``) detects people, cuts one crop per level the model
asks for, resizes each to ``input_size`` and calls ``predict``. Any model that satisfies
``EmotionModel`` plugs into tagging, serving and evaluation unchanged.

Levels are named ``"head"`` (face crop), ``"body"`` (body crop) and ``"context"`` (the
whole image).
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

LEVELS: tuple[str, ...] = ("head", "body", "context")


@runtime_checkable
class EmotionModel(Protocol):
    """What the predictor needs from an emotion model.

    Attributes:
        name: model family name, e.g. ``"fer"`` or ``"cocoer"``.
        labels: category names, in score order.
        multi_label: True when scores are independent sigmoids (EMOTIC), False for softmax.
        input_levels: which crops ``predict`` wants, a subset of ``LEVELS``.
        input_size: side length in pixels every crop is resized to.
        checkpoint_hash: SHA-256 of the weights/checkpoint file (recorded in outputs).
    """

    name: str
    labels: Sequence[str]
    multi_label: bool
    input_levels: Sequence[str]
    input_size: int
    checkpoint_hash: str

    def predict(self, crops: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Score a batch of people.

        Args:
            crops: level name -> uint8 array [B, S, S, 3] (RGB, S = ``input_size``).

        Returns:
            ``scores``: float32 [B, K] probabilities; optionally ``level_scores``:
            float32 [B, L, K] for the levels in ``level_names`` (a list of L names, e.g.
            head, body, context, vocabulary), ``dropped_levels``: int8 [B, q-1] level
            indices (into LEVELS order of the competing levels) in elimination order,
            ``refined``: bool [B], ``vad``: float32 [B, 3].
        """
        ...

    def to(self, device: str) -> "EmotionModel":  # noqa: D102 - moves weights
        ...
