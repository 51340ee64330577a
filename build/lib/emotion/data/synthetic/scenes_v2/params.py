"""The parameters of ``scenes_v2`` (``ScenesV2Params``), fixed before any model was trained.

The defaults here are the recorded values (``jobs/configs/data_scenes_v2.yaml`` and
``docs/scenes_v2.md`` hold the same numbers; a test keeps the three in step). They were
chosen from the closed form of ``agreement.expected_level_agreement`` so that each level
alone is right on about 2/3 of the people (face 0.675, body 0.640, context 0.640), never
by training a model.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence

CUE_STATES: tuple[str, ...] = ("clear", "weak", "absent")
# How a person's face and body relate to the image's context category (see ``spec``).
RELATIONS: tuple[str, ...] = ("agree", "face_odd", "body_odd", "context_odd", "all_differ")
MAX_PEOPLE = 6


@dataclass(frozen=True)
class ScenesV2Params:
    """Probabilities and sizes of ``scenes_v2``; tuples follow ``CUE_STATES`` / ``RELATIONS``."""

    body_states: tuple[float, float, float] = (0.60, 0.25, 0.15)  # per person: clear, weak, absent
    context_states: tuple[float, float, float] = (0.60, 0.25, 0.15)  # per image: clear, weak, absent
    relations: tuple[float, ...] = (0.25, 0.45, 0.12, 0.12, 0.06)  # per person, over RELATIONS
    people_weights: tuple[float, ...] = (0.22, 0.20, 0.18, 0.15, 0.13, 0.12)  # 1..6 people per image
    weak_body_strength: tuple[float, float] = (0.35, 0.60)  # a weak pose goes this far from neutral
    weak_context_alpha: tuple[float, float] = (0.30, 0.50)  # opacity of a weak scene over the neutral room
    min_face_px: float = 24.0  # smallest face (head) diameter in pixels
    max_height: float = 1.0  # tallest person, as a fraction of the image height
    crowd_shrink: float = 0.08  # the tallest allowed shrinks by this x (people - 1)
    max_face_covered: float = 0.10  # at most this fraction of a face box hidden by nearer people
    placement_tries: int = 60  # positions tried per person before leaving the person out

    def __post_init__(self) -> None:
        for name, size in (("body_states", 3), ("context_states", 3), ("relations", len(RELATIONS))):
            _check_distribution(name, getattr(self, name), size)
        if not 1 <= len(self.people_weights) <= MAX_PEOPLE:
            raise ValueError(f"people_weights: 1..{MAX_PEOPLE} weights (for 1, 2, ... people), got {len(self.people_weights)}")
        _check_distribution("people_weights", self.people_weights, len(self.people_weights))
        for name in ("weak_body_strength", "weak_context_alpha"):
            low, high = getattr(self, name)
            if not 0.0 < low <= high < 1.0:
                raise ValueError(f"{name}: need 0 < low <= high < 1, got {[low, high]}")
        if self.min_face_px <= 0 or not 0.0 < self.max_height <= 1.0:
            raise ValueError(f"min_face_px must be > 0 and max_height in (0, 1], got {self.min_face_px}, {self.max_height}")
        if not 0.0 <= self.crowd_shrink <= 0.15:
            raise ValueError(f"crowd_shrink must be in [0, 0.15], got {self.crowd_shrink}")
        if not 0.0 <= self.max_face_covered <= 1.0 or self.placement_tries < 1:
            raise ValueError("max_face_covered must be in [0, 1] and placement_tries >= 1")


def _check_distribution(name: str, values: Sequence[float], size: int) -> None:
    if len(values) != size or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"{name}: {size} probabilities >= 0 summing to 1, got {list(values)}")


def params_from_config(cfg: Mapping[str, Any]) -> ScenesV2Params:
    """``ScenesV2Params`` from a config: the state and relation probabilities as mappings
    by name (``{clear: .6, weak: .25, absent: .15}``), the rest as they are; keys that are
    absent keep the defaults."""
    values: dict[str, Any] = {}
    for f in fields(ScenesV2Params):
        if f.name not in cfg or cfg[f.name] is None:
            continue
        value = cfg[f.name]
        if f.name in ("body_states", "context_states"):
            value = _by_name(f.name, value, CUE_STATES)
        elif f.name == "relations":
            value = _by_name(f.name, value, RELATIONS)
        elif isinstance(value, (list, tuple)):
            value = tuple(float(v) for v in value)
        elif f.name == "placement_tries":
            value = int(value)
        else:
            value = float(value)
        values[f.name] = value
    return ScenesV2Params(**values)


def _by_name(key: str, value: Any, names: Sequence[str]) -> tuple[float, ...]:
    if not isinstance(value, Mapping):
        return tuple(float(v) for v in value)
    unknown = sorted(set(value) - set(names))
    missing = [n for n in names if n not in value]
    if unknown or missing:
        raise ValueError(f"{key}: expected the keys {list(names)}; unknown {unknown}, missing {missing}")
    return tuple(float(value[n]) for n in names)


def params_to_config(params: ScenesV2Params) -> dict[str, Any]:
    """The config form of ``params`` (what ``params_from_config`` reads)."""
    out: dict[str, Any] = {}
    for f in fields(ScenesV2Params):
        value = getattr(params, f.name)
        if f.name in ("body_states", "context_states"):
            value = dict(zip(CUE_STATES, value))
        elif f.name == "relations":
            value = dict(zip(RELATIONS, value))
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out
