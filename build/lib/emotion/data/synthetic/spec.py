"""The scene specification of the synthetic data set (no pixels: see ``drawing``).

Categories, levels and conflict kinds, the true label rule (``true_label``), the
parameters of a person and a scene (``PersonSpec``, ``SceneSpec``), how scenes are sampled
(``sample_scene``, one generator per image from ``scene_rng``) and edited (``with_cues``),
and the body geometry: the poses in unit coordinates and ``person_geometry``, a person's
pixel joints and the exact body and face boxes written as labels.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np

from emotion.labels import SYNTHETIC_CATEGORIES

CATEGORIES = SYNTHETIC_CATEGORIES
HAPPINESS, SADNESS, ANGER, FEAR, SURPRISE, PEACE = range(len(CATEGORIES))
LEVELS: tuple[str, ...] = ("face", "body", "context")
CONFLICT_KINDS: tuple[str, ...] = ("face_odd", "body_odd", "context_odd", "all_differ")

# (valence, arousal, dominance) on EMOTIC's 1-10 scale, one per category.
CATEGORY_VAD: dict[str, tuple[float, float, float]] = {
    "Happiness": (8.5, 6.5, 7.0),
    "Sadness": (2.5, 3.0, 3.5),
    "Anger": (2.5, 8.0, 7.5),
    "Fear": (2.5, 7.5, 2.5),
    "Surprise": (6.5, 8.5, 5.0),
    "Peace": (7.5, 2.0, 6.0),
}
SPLIT_INDEX: dict[str, int] = {"train": 0, "val": 1, "test": 2}

SKIN_TONES = ((255, 224, 189), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 56, 32))


def true_label(face: int, body: int, context: int) -> int:
    """The rule: majority of the three levels; the face's category when all differ."""
    if body == context:
        return body
    return face  # face == body, face == context, or all three differ


# ---------------------------------------------------------------- scene specification


@dataclass(frozen=True)
class PersonSpec:
    """One person: cue categories, the true label, and placement in pixels."""

    face: int
    body: int
    label: int
    conflict: str  # "none" or one of CONFLICT_KINDS
    center_x: float  # body midline
    ground_y: float  # where the feet (or the seat) touch the ground
    height: float  # standing height in pixels (head top to feet)
    skin: tuple[int, int, int]
    clothes: tuple[int, int, int]
    jitter: tuple[float, ...]  # small offsets of the joints, in units of height
    vad: tuple[float, float, float]


@dataclass(frozen=True)
class SceneSpec:
    width: int
    height: int
    context: int
    conflict: bool
    people: tuple[PersonSpec, ...]
    seed: int  # seeds the scene texture (rain, confetti, ...)


def _cue_triplet(rng: np.random.Generator, context: int, kind: str, k: int) -> tuple[int, int]:
    """(face, body) categories for a person of conflict ``kind`` in scene ``context``."""

    def other(*excluded: int) -> int:
        choices = [c for c in range(k) if c not in excluded]
        return int(choices[rng.integers(len(choices))])

    if kind == "none":
        return context, context
    if kind == "face_odd":
        return other(context), context
    if kind == "body_odd":
        return context, other(context)
    if kind == "context_odd":
        shared = other(context)
        return shared, shared
    face = other(context)
    return face, other(context, face)


def sample_scene(
    rng: np.random.Generator,
    image_size: tuple[int, int] = (160, 160),
    conflict_rate: float = 0.3,
    max_people: int = 3,
) -> SceneSpec:
    """Draw one scene: context, people, their cues, labels and layout."""
    if not 0.0 <= conflict_rate <= 1.0:
        raise ValueError(f"conflict_rate must be in [0, 1], got {conflict_rate}")
    if not 1 <= max_people <= len(_PEOPLE_WEIGHTS):
        raise ValueError(f"max_people must be 1..{len(_PEOPLE_WEIGHTS)}, got {max_people}")
    width, height = image_size
    k = len(CATEGORIES)
    context = int(rng.integers(k))
    conflict = bool(rng.random() < conflict_rate)
    n = int(rng.choice(np.arange(1, max_people + 1), p=_people_distribution(max_people)))
    cues = []
    for _ in range(n):
        kind = CONFLICT_KINDS[int(rng.integers(len(CONFLICT_KINDS)))] if conflict else "none"
        face, body = _cue_triplet(rng, context, kind, k)
        cues.append((face, body, kind))
    # Layout: people side by side, each as wide as its pose, scaled to fit the image.
    extents = [_pose_extent(body) for _, body, _ in cues]
    total_width = sum(right - left for left, right, _ in extents)
    # Sized by standing height whatever the pose, so head size does not give the pose away.
    tallest = max([1.0 + LIMB_WIDTH] + [bottom for _, _, bottom in extents])
    scale = min(0.94 * width / total_width, rng.uniform(0.62, 0.8) * height / tallest)
    gaps = rng.dirichlet(np.ones(n + 1)) * max(0.0, width - scale * total_width)
    ground_y = rng.uniform(0.9, 0.97) * height
    people, x = [], 0.0
    for i, ((face, body, kind), (left, right, _)) in enumerate(zip(cues, extents)):
        person_height = scale * rng.uniform(0.9, 1.0)
        x += gaps[i]
        center_x = x - left * scale
        x += (right - left) * scale
        label = true_label(face, body, context)
        vad = np.clip(np.array(CATEGORY_VAD[CATEGORIES[label]]) + rng.normal(0.0, 0.5, 3), 1.0, 10.0)
        people.append(
            PersonSpec(
                face=face, body=body, label=label, conflict=kind,
                center_x=float(center_x), ground_y=float(ground_y), height=float(person_height),
                skin=SKIN_TONES[int(rng.integers(len(SKIN_TONES)))],
                clothes=tuple(int(v) for v in rng.integers(30, 226, 3)),
                jitter=tuple(float(v) for v in rng.uniform(-0.02, 0.02, 12)),
                vad=tuple(float(v) for v in vad),
            )  # fmt: skip
        )
    return SceneSpec(width, height, context, conflict, tuple(people), int(rng.integers(2**31)))


# How often an image has 1, 2, ... people (cut at max_people and renormalised).
_PEOPLE_WEIGHTS = (0.4, 0.35, 0.25, 0.15, 0.1, 0.05)


def _people_distribution(max_people: int) -> np.ndarray:
    weights = np.array(_PEOPLE_WEIGHTS[:max_people])
    return weights / weights.sum()


# ---------------------------------------------------------------- body geometry
#
# Unit coordinates: x to the person's right on screen, y down, standing height 1
# (head top at 0, feet at 1). Each pose gives the right elbow, hand, knee and foot;
# the left side mirrors them (Peace crosses the feet).

HEAD_RADIUS = 0.13
SHOULDER = (0.10, 0.30)
HIP = (0.05, 0.62)
LIMB_WIDTH = 0.055
HAND_RADIUS = 0.035

POSES: dict[int, dict[str, tuple[float, float]]] = {
    HAPPINESS: {"elbow": (0.21, 0.17), "hand": (0.29, 0.03), "knee": (0.07, 0.81), "foot": (0.09, 1.0)},
    SADNESS: {"elbow": (0.12, 0.47), "hand": (0.11, 0.63), "knee": (0.05, 0.81), "foot": (0.05, 1.0), "head": (0.04, 0.07)},
    ANGER: {"elbow": (0.25, 0.43), "hand": (0.10, 0.57), "knee": (0.13, 0.80), "foot": (0.20, 1.0)},
    FEAR: {"elbow": (0.23, 0.40), "hand": (0.21, 0.14), "knee": (0.17, 0.76), "foot": (0.09, 0.93)},
    SURPRISE: {"elbow": (0.27, 0.31), "hand": (0.43, 0.25), "knee": (0.08, 0.81), "foot": (0.13, 1.0)},
    PEACE: {"elbow": (0.18, 0.48), "hand": (0.22, 0.64), "knee": (0.25, 0.70), "foot": (-0.07, 0.74)},
}


def _joints(body: int, jitter: Sequence[float] = (0.0,) * 12) -> dict[str, tuple[float, float]]:
    """Unit-coordinate joints of pose ``body`` (both sides) with small per-person jitter."""
    return pose_joints(POSES[body], jitter)


def pose_joints(pose: Mapping[str, tuple[float, float]], jitter: Sequence[float] = (0.0,) * 12) -> dict[str, tuple[float, float]]:
    """Unit-coordinate joints (both sides) of a pose given as ``POSES`` entries are (right
    elbow, hand, knee, foot and an optional head offset), with small per-person jitter."""
    head_dx, head_dy = pose.get("head", (0.0, 0.0))
    j = list(jitter) + [0.0] * (12 - len(jitter))
    joints = {"head": (head_dx, HEAD_RADIUS + head_dy), "neck": (head_dx * 0.5, 0.26 + head_dy * 0.5)}
    for side, sign in (("r", 1.0), ("l", -1.0)):
        offset = 0 if side == "r" else 6
        joints[f"shoulder_{side}"] = (sign * SHOULDER[0], SHOULDER[1] + head_dy * 0.4)
        joints[f"hip_{side}"] = (sign * HIP[0], HIP[1])
        for n, name in enumerate(("elbow", "hand", "knee")):
            x, y = pose[name]
            joints[f"{name}_{side}"] = (sign * (x + j[offset + 2 * n]), y + j[offset + 2 * n + 1])
        foot_x, foot_y = pose["foot"]
        joints[f"foot_{side}"] = (sign * foot_x, foot_y)
    return joints


def _pose_extent(body: int) -> tuple[float, float, float]:
    """(left, right, bottom) of pose ``body`` in unit coordinates, with margins."""
    joints = _joints(body)
    xs = [x for x, _ in joints.values()]
    margin = max(LIMB_WIDTH, 2 * HAND_RADIUS)
    left = min(min(xs) - margin, joints["head"][0] - HEAD_RADIUS) - 0.02
    right = max(max(xs) + margin, joints["head"][0] + HEAD_RADIUS) + 0.02
    bottom = max(y for _, y in joints.values()) + margin
    return left, right, bottom


def person_geometry(person: PersonSpec) -> dict[str, object]:
    """Pixel joints, head circle and the exact body and face boxes of a person."""
    return geometry_from_joints(_joints(person.body, person.jitter), person.center_x, person.ground_y, person.height)


def geometry_from_joints(
    joints_unit: Mapping[str, tuple[float, float]], center_x: float, ground_y: float, height: float
) -> dict[str, object]:
    """``person_geometry`` of unit-coordinate joints placed at ``center_x`` / ``ground_y``
    with standing height ``height`` pixels."""
    bottom = max(y for _, y in joints_unit.values())
    h = height
    top = ground_y - bottom * h  # seated/crouched people rest on the ground too

    def to_px(point: tuple[float, float]) -> tuple[float, float]:
        return center_x + point[0] * h, top + point[1] * h

    joints = {name: to_px(p) for name, p in joints_unit.items()}
    head_x, head_y = joints["head"]
    radius = HEAD_RADIUS * h
    limb = max(1.5, LIMB_WIDTH * h)
    hand = max(1.5, HAND_RADIUS * h)
    # Every drawn part lies within these extents (limbs have round caps of radius limb/2).
    xs = [x for x, _ in joints.values()]
    ys = [y for _, y in joints.values()]
    pad = max(limb / 2, hand) + 1
    body_box = [
        min(min(xs) - pad, head_x - radius - 1), min(min(ys) - pad, head_y - radius - 1),
        max(max(xs) + pad, head_x + radius + 1), max(max(ys) + pad, head_y + radius + 1),
    ]  # fmt: skip
    face_box = [head_x - radius - 1, head_y - radius - 1, head_x + radius + 1, head_y + radius + 1]
    return {"joints": joints, "radius": radius, "limb": limb, "hand": hand, "body_box": body_box, "face_box": face_box}


# ---------------------------------------------------------------- one generator per image, edited scenes


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split``: independent of how many are made."""
    return np.random.default_rng([int(seed), SPLIT_INDEX.get(split, sum(map(ord, split))), int(index)])


def with_cues(spec: SceneSpec, person: int, face: int | None = None, body: int | None = None, context: int | None = None) -> SceneSpec:
    """The same scene with one person's face/body cue or the scene's context changed
    (labels recomputed by the rule); layout and colours stay, so renders differ only
    where the changed level is drawn."""
    people = list(spec.people)
    target = people[person]
    new_context = spec.context if context is None else context
    target = replace(target, face=target.face if face is None else face, body=target.body if body is None else body)
    people[person] = target
    people = [replace(p, label=true_label(p.face, p.body, new_context)) for p in people]
    return replace(spec, context=new_context, people=tuple(people))
