"""The scene specification of ``scenes_v2`` (no pixels): the label rule with absent cues,
the neutral and weak poses, and how an image's cues, faces and people are sampled.

Per image: a context category (uniform over the 6) and its state (clear / weak / absent,
``ScenesV2Params.context_states``). Per person: a relation to that context
(``ScenesV2Params.relations``) that fixes the face and body categories as in the first
generator (agree: face = body = context; face_odd: body = context != face; body_odd:
face = context != body; context_odd: face = body != context; all_differ: all three
different), a body state, and a real FER+ face of the face category. An absent cue is
not drawn and shows no category; the category it would have had is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from emotion.data.synthetic.scenes_v2.faces import FacePool, FaceRef
from emotion.data.synthetic.scenes_v2.params import CUE_STATES, RELATIONS, ScenesV2Params
from emotion.data.synthetic.spec import (
    CATEGORIES,
    CATEGORY_VAD,
    POSES,
    SKIN_TONES,
    SPLIT_INDEX,
    _cue_triplet,
    geometry_from_joints,
    pose_joints,
    true_label,
)

# Standing straight, hands clasped in front of the belly, feet together: no category.
NEUTRAL_POSE: dict[str, tuple[float, float]] = {
    "elbow": (0.16, 0.47), "hand": (0.03, 0.58), "knee": (0.06, 0.81), "foot": (0.07, 1.0), "head": (0.0, 0.0),
}  # fmt: skip
_V2_STREAM = 2  # keeps scenes_v2's random streams apart from the first generator's


def rule_label(face: int, body: int | None, context: int | None) -> int:
    """The label rule with absent cues (None): the category at least two levels show,
    else the face's. The face is always shown, so only body = context can outvote it."""
    if body is None or context is None:
        return face
    return true_label(face, body, context)


def blended_pose(body: int | None, strength: float) -> dict[str, tuple[float, float]]:
    """The pose ``strength`` of the way from ``NEUTRAL_POSE`` to category ``body``'s
    (1: the clear pose, 0 or ``body`` None: neutral)."""
    if body is None or strength <= 0.0:
        return dict(NEUTRAL_POSE)
    target = POSES[body]
    out = {}
    for name, (nx, ny) in NEUTRAL_POSE.items():
        tx, ty = target.get(name, (0.0, 0.0))
        out[name] = (nx + strength * (tx - nx), ny + strength * (ty - ny))
    return out


@dataclass(frozen=True)
class PersonV2:
    """One person: cues (``body`` None when absent), the face's source, the label, placement."""

    face: int  # the face's FER+ majority label, mapped
    face_source: str  # "<FER+ folder>/<file>"
    face_uri: str
    body: int | None
    body_state: str  # clear / weak / absent
    body_strength: float  # 1 clear, weak in ``weak_body_strength``, 0 absent
    relation: str
    label: int
    skin: tuple[int, int, int]
    clothes: tuple[int, int, int]
    jitter: tuple[float, ...]
    vad: tuple[float, float, float]
    center_x: float = 0.0
    ground_y: float = 0.0
    height: float = 1.0
    visible: float = 1.0  # fraction of the drawn person inside the image and not behind nearer people

    def joints_unit(self) -> dict[str, tuple[float, float]]:
        return pose_joints(blended_pose(self.body, self.body_strength), self.jitter)

    def geometry(self) -> dict[str, object]:
        """Pixel joints, head circle, body and face boxes (as ``spec.person_geometry``)."""
        return geometry_from_joints(self.joints_unit(), self.center_x, self.ground_y, self.height)


@dataclass(frozen=True)
class SceneV2:
    """One image: the context (None when absent), its state, people far to near (drawing order)."""

    width: int
    height: int
    context: int | None
    context_state: str
    context_alpha: float  # 1 clear, weak in ``weak_context_alpha``, 0 absent
    horizon: float  # y of the horizon the people stand towards, pixels
    people: tuple[PersonV2, ...]
    seed: int  # seeds the scene texture


def scene_rng_v2(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split``: independent of how many are made."""
    return np.random.default_rng([int(seed), SPLIT_INDEX.get(split, sum(map(ord, split))), int(index), _V2_STREAM])


def _state(rng: np.random.Generator, probabilities: Sequence[float], weak_range: Sequence[float]) -> tuple[str, float]:
    state = CUE_STATES[int(rng.choice(len(CUE_STATES), p=np.asarray(probabilities)))]
    strength = {"clear": 1.0, "absent": 0.0}.get(state)
    return state, float(rng.uniform(*weak_range)) if strength is None else strength


def sample_person(rng: np.random.Generator, context: int, context_shown: bool, pool: FacePool, params: ScenesV2Params) -> PersonV2:
    """A person's relation, cues, face and looks (placed later by ``layout``)."""
    relation = RELATIONS[int(rng.choice(len(RELATIONS), p=np.asarray(params.relations)))]
    face, body = _cue_triplet(rng, context, "none" if relation == "agree" else relation, len(CATEGORIES))
    body_state, strength = _state(rng, params.body_states, params.weak_body_strength)
    shown_body = None if body_state == "absent" else body
    face_ref: FaceRef = pool.pick(face, rng)
    label = rule_label(face, shown_body, context if context_shown else None)
    vad = np.clip(np.array(CATEGORY_VAD[CATEGORIES[label]]) + rng.normal(0.0, 0.5, 3), 1.0, 10.0)
    return PersonV2(
        face=face, face_source=face_ref.source, face_uri=face_ref.uri, body=shown_body, body_state=body_state,
        body_strength=strength, relation=relation, label=label,
        skin=SKIN_TONES[int(rng.integers(len(SKIN_TONES)))],
        clothes=tuple(int(v) for v in rng.integers(30, 226, 3)),
        jitter=tuple(float(v) for v in rng.uniform(-0.02, 0.02, 12)),
        vad=tuple(float(v) for v in vad),
    )  # fmt: skip


def sample_cues(rng: np.random.Generator, pool: FacePool, params: ScenesV2Params) -> tuple[int | None, str, float, list[PersonV2]]:
    """(context or None, its state, its alpha, the unplaced people) of one image."""
    context = int(rng.integers(len(CATEGORIES)))
    state, alpha = _state(rng, params.context_states, params.weak_context_alpha)
    weights = np.asarray(params.people_weights)
    n = int(rng.choice(np.arange(1, len(weights) + 1), p=weights))
    people = [sample_person(rng, context, state != "absent", pool, params) for _ in range(n)]
    return (None if state == "absent" else context), state, alpha, people
