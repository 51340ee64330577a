"""The contract between emotion models and the predictor.

The predictor (``emotion.predictor``) detects people, cuts one crop per level the model
asks for, resizes each to ``input_size`` and calls ``predict``. Any model that satisfies
``EmotionModel`` plugs into tagging, serving and evaluation unchanged.

Levels are named ``"head"`` (face crop), ``"body"`` (body crop) and ``"context"`` (the
whole image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

LEVELS: tuple[str, ...] = ("head", "body", "context")


@dataclass(frozen=True)
class InputSpec:
    """A model family's input contract, derived from its config without building the
    network (``emotion.models.loading.input_spec``): which crops it reads, at what size,
    and what its outputs are called. The predictor (tagging, serving, evaluation) and
    training rows cut crops from it with the one crop function, ``emotion.crops.person_crops``.

    Colour handling stays inside each model (the crops are always RGB uint8; a face model
    trained on gray faces converts them itself), so it is not part of the contract.
    """

    name: str
    levels: tuple[str, ...]
    input_size: int
    labels: tuple[str, ...]
    multi_label: bool
    model_id: str  # ``model_id(name, weights hash)``, recorded in every output row
    # True for a single-stage model (DSCT) that reads whole images and finds the people
    # itself (``find_people``): the predictor then runs no detector and cuts no crops.
    finds_people: bool = False

    def __post_init__(self) -> None:
        unknown = [level for level in self.levels if level not in LEVELS]
        if unknown or not self.levels:
            raise ValueError(f"input levels must be a non-empty subset of {list(LEVELS)}, got {list(self.levels)}")
        if self.input_size < 1:
            raise ValueError(f"input_size must be >= 1, got {self.input_size}")

    def reads_like(self, other: "InputSpec") -> bool:
        """True when a model of this contract reads the crops ``other`` reads and scores its
        labels, in its order (so their scores can be averaged or taught)."""
        return (self.levels, self.input_size, self.labels, self.multi_label) == (
            other.levels, other.input_size, other.labels, other.multi_label)

    def reading(self) -> str:
        """What it reads, for error messages: ``['head'] at 80 px over [labels]``."""
        return f"{list(self.levels)} at {self.input_size} px over {list(self.labels)}"


def model_id(name: str, checkpoint_hash: str) -> str:
    """The id every output row records for a model: ``name@sha256:<first 16 hex digits
    of the weights' SHA-256>``."""
    return f"{name}@sha256:{checkpoint_hash[:16]}"


def plain_config(value: Any) -> Any:
    """Mappings/sequences (OmegaConf containers included) -> JSON-able dicts/lists, NumPy
    arrays -> lists, NumPy and 0-d torch scalars -> Python ones: model configs, metrics and
    training state go into checkpoints as JSON."""
    if isinstance(value, Mapping):
        return {str(k): plain_config(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [plain_config(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic) or (hasattr(value, "item") and getattr(value, "ndim", None) == 0):
        return value.item()  # a 0-d torch tensor too, without importing torch here
    return value


def adopt_config(model: object, cfg: dict) -> None:
    """Set the ``EmotionModel`` attributes a trainable family keeps from its resolved config
    (``config`` goes into checkpoints; the hash is set when a checkpoint is loaded)."""
    model.config = cfg
    model.labels = tuple(cfg["labels"])
    model.multi_label = bool(cfg["multi_label"])
    model.input_size = int(cfg["input_size"])
    model.checkpoint_hash = "untrained"


def single_level_columns(scores: np.ndarray, level: str = "head") -> dict:
    """The output columns of a model that reads one level: its scores are that level's."""
    n = len(scores)
    return {"scores": scores, "level_scores": {level: scores}, "refined": np.zeros(n, dtype=bool),
            "dropped_levels": [None] * n}


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
            ``scores``: float32 [B, K] probabilities, plus whatever else the model
            computes; ``output_columns`` turns them into output columns.
        """
        ...

    def output_columns(self, outputs: dict[str, np.ndarray]) -> dict:
        """``predict``'s outputs -> the output columns this model fills (as DETR's
        postprocessors): ``scores`` float32 [B, K]; ``level_scores``: {level name: float32
        [B, K]} for the levels it scores (names from ``emotion.schema.LEVEL_NAMES``);
        ``refined`` bool [B]; ``dropped_levels``: B lists of level names (or None)."""
        ...

    def to(self, device: str) -> "EmotionModel":  # noqa: D102 - moves weights
        ...
