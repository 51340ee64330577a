"""Synthetic emotion scenes whose labels need face, body AND context to be read right.

Each RGB image shows 1-3 cartoon people in a scene. Three levels each carry a cue for
one of the ``SYNTHETIC_CATEGORIES`` (Happiness, Sadness, Anger, Fear, Surprise, Peace):

========== ============================================================================
level      cue per category
========== ============================================================================
face       mouth and brows: smile / frown + worried brows / V brows + tight mouth /
           wide eyes + small open mouth / raised brows + big "O" / closed eyes + soft smile
body       pose: arms up in a V / slumped, arms hanging, head down / hands on hips,
           wide stance / hands up beside the head, crouched / arms flung out wide /
           seated cross-legged, hands on knees
context    scene: sunny yellow sky, sun, balloons / dark blue rain / red sky, flames,
           lightning / night, moon, bare trees, glowing eyes / pink confetti, stars /
           blue sky over a green meadow
========== ============================================================================

The context is one per image; face and body are per person. Clothes colour, skin tone,
positions, sizes and scene details are random and carry no label.

**True label rule** (``true_label``): the category that at least two of the three levels
show; when all three differ, the face's. A fraction ``conflict_rate`` of images are
*conflict* images in which every person's levels disagree, in one of four equally likely
ways: face odd one out (label = body = context), body odd (label = face = context),
context odd (label = face = body), all three different (label = face). So on conflict
people a face-only model is right 3/4 of the time, body-only or context-only 1/2, and only
a model that combines levels can reach 100 %.

Labels are stored multi-hot over the 6 categories (one true category per person) and
evaluated like EMOTIC (sigmoid, mAP). VAD per person is the category's (valence,
arousal, dominance) on EMOTIC's 1-10 scale plus N(0, 0.5) noise.

``generate_synthetic_emotic`` writes a real EMOTIC-format dataset (JPEGs under
``<root>/synthetic/images/`` and ``<root>/Annotations.mat``) that
``emotion.data.emotic.read_emotic`` reads; each person also carries ``head_bbox`` (read as
the face box) and ``cue_face``/``cue_body``/``cue_context`` fields (ignored by readers,
kept so tests and analyses can check the rule). Everything is deterministic in ``seed``:
image ``i`` of split ``s`` depends only on (seed, s, i, conflict_rate, image_size).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from emotion.data.emotic import EmoticImage, EmoticPerson, write_emotic_annotations
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
IMAGE_FOLDER = "synthetic/images"
SUPERSAMPLE = 2  # draw at 2x and shrink: anti-aliased edges like a real photo's

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
    pose = POSES[body]
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
    joints_unit = _joints(person.body, person.jitter)
    bottom = max(y for _, y in joints_unit.values())
    h = person.height
    top = person.ground_y - bottom * h  # seated/crouched people rest on the ground too

    def to_px(point: tuple[float, float]) -> tuple[float, float]:
        return person.center_x + point[0] * h, top + point[1] * h

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


# ---------------------------------------------------------------- drawing


def _gradient(width: int, height: int, top: Sequence[int], bottom: Sequence[int]) -> Image.Image:
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    rows = (1 - t) * np.asarray(top, np.float32) + t * np.asarray(bottom, np.float32)
    return Image.fromarray(np.broadcast_to(rows, (height, width, 3)).astype(np.uint8))


def _star(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: tuple[int, ...]) -> None:
    points = []
    for i in range(10):
        angle = -math.pi / 2 + i * math.pi / 5
        radius = r if i % 2 == 0 else r * 0.45
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    draw.polygon(points, fill=fill)


def draw_context(context: int, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """The scene background that carries the context cue (people are drawn over it)."""
    w, h = width, height
    u = min(w, h) / 100.0  # drawing unit
    horizon = h * rng.uniform(0.62, 0.75)
    if context == HAPPINESS:
        img = _gradient(w, h, (255, 214, 90), (255, 243, 190))
        draw = ImageDraw.Draw(img)
        sx = w * rng.choice([0.15, 0.85])
        sy = h * 0.15
        for i in range(12):
            a = i * math.pi / 6
            draw.line([(sx + 9 * u * math.cos(a), sy + 9 * u * math.sin(a)), (sx + 15 * u * math.cos(a), sy + 15 * u * math.sin(a))], fill=(255, 170, 0), width=max(1, int(1.5 * u)))
        draw.ellipse([sx - 7 * u, sy - 7 * u, sx + 7 * u, sy + 7 * u], fill=(255, 190, 0))
        draw.rectangle([0, horizon, w, h], fill=(140, 210, 100))
        for _ in range(int(rng.integers(2, 5))):
            bx, by = rng.uniform(0.05, 0.95) * w, rng.uniform(0.1, 0.45) * h
            color = tuple(int(v) for v in rng.choice([(230, 40, 60), (40, 120, 230), (50, 190, 80), (200, 60, 200), (255, 130, 0)]))
            draw.line([(bx, by + 6 * u), (bx + rng.uniform(-3, 3) * u, by + 20 * u)], fill=(90, 90, 90), width=1)
            draw.ellipse([bx - 4 * u, by - 5.5 * u, bx + 4 * u, by + 5.5 * u], fill=color)
            draw.ellipse([bx - 2 * u, by - 3.5 * u, bx - 0.5 * u, by - 1.5 * u], fill=(255, 255, 255))
    elif context == SADNESS:
        img = _gradient(w, h, (38, 48, 84), (78, 90, 124))
        draw = ImageDraw.Draw(img)
        for _ in range(5):
            cx, cy = rng.uniform(0, w), rng.uniform(0, 0.15) * h
            draw.ellipse([cx - 18 * u, cy - 7 * u, cx + 18 * u, cy + 9 * u], fill=(70, 74, 88))
        draw.rectangle([0, horizon, w, h], fill=(52, 56, 66))
        for _ in range(int(70 * w * h / 160**2)):
            x, y = rng.uniform(-0.1, 1.0) * w, rng.uniform(0, 1.0) * h
            draw.line([(x, y), (x + 2 * u, y + 7 * u)], fill=(150, 170, 215), width=1)
    elif context == ANGER:
        img = _gradient(w, h, (150, 20, 10), (235, 100, 30))
        draw = ImageDraw.Draw(img)
        draw.rectangle([0, horizon, w, h], fill=(60, 15, 10))
        step = 6 * u
        points, x = [(0, h)], 0.0
        while x <= w + step:
            points += [(x, horizon + rng.uniform(-2, 4) * u), (x + step / 2, horizon - rng.uniform(8, 20) * u)]
            x += step
        points.append((w, h))
        draw.polygon(points, fill=(255, 140, 0))
        bx = rng.uniform(0.2, 0.8) * w
        bolt = [(bx, 0), (bx - 5 * u, 14 * u), (bx + 1 * u, 14 * u), (bx - 4 * u, 30 * u), (bx + 6 * u, 11 * u), (bx, 11 * u), (bx + 4 * u, 0)]
        draw.polygon(bolt, fill=(255, 235, 60))
    elif context == FEAR:
        img = _gradient(w, h, (12, 6, 24), (46, 28, 64))
        draw = ImageDraw.Draw(img)
        mx, my = rng.uniform(0.15, 0.85) * w, 0.15 * h
        draw.ellipse([mx - 8 * u, my - 8 * u, mx + 8 * u, my + 8 * u], fill=(235, 235, 210))
        draw.ellipse([mx - 4 * u, my - 10 * u, mx + 10 * u, my + 6 * u], fill=(16, 9, 30))
        draw.rectangle([0, horizon, w, h], fill=(20, 14, 26))
        for _ in range(int(rng.integers(2, 4))):
            _tree(draw, rng.uniform(0, w), horizon + 2 * u, rng.uniform(25, 45) * u, rng, max(1, int(1.5 * u)))
        for _ in range(int(rng.integers(2, 5))):
            ex, ey = rng.uniform(0, w), rng.uniform(0.3, 0.7) * h
            for dx in (-1.8 * u, 1.8 * u):
                draw.ellipse([ex + dx - 1.1 * u, ey - 0.8 * u, ex + dx + 1.1 * u, ey + 0.8 * u], fill=(250, 220, 40))
    elif context == SURPRISE:
        img = _gradient(w, h, (250, 170, 225), (200, 160, 250))
        draw = ImageDraw.Draw(img)
        draw.rectangle([0, horizon, w, h], fill=(150, 90, 190))
        for _ in range(int(rng.integers(2, 4))):
            _star(draw, rng.uniform(0, w), rng.uniform(0.05, 0.5) * h, rng.uniform(5, 9) * u, (255, 230, 40))
        for _ in range(int(60 * w * h / 160**2)):
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            color = tuple(int(v) for v in rng.integers(0, 256, 3))
            draw.rectangle([x, y, x + rng.uniform(1, 2.5) * u, y + rng.uniform(1, 2.5) * u], fill=color)
    elif context == PEACE:
        img = _gradient(w, h, (150, 200, 245), (205, 230, 250))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(2, 4))):
            cx, cy = rng.uniform(0, w), rng.uniform(0.05, 0.35) * h
            for dx, r in ((-6, 5), (0, 7), (6, 5)):
                draw.ellipse([cx + (dx - r) * u, cy - r * u, cx + (dx + r) * u, cy + r * u * 0.8], fill=(255, 255, 255))
        draw.rectangle([0, horizon, w, h], fill=(110, 185, 95))
        draw.rectangle([0, horizon, w, horizon + 4 * u], fill=(120, 170, 220))
        for _ in range(int(25 * w * h / 160**2)):
            fx, fy = rng.uniform(0, w), rng.uniform(horizon + 6 * u, h)
            draw.ellipse([fx - u, fy - u, fx + u, fy + u], fill=(255, 255, 255) if rng.random() < 0.5 else (250, 220, 60))
    else:
        raise ValueError(f"unknown context category {context}")
    return img


def _tree(draw: ImageDraw.ImageDraw, x: float, y: float, size: float, rng: np.random.Generator, width: int) -> None:
    top = (x, y - size)
    draw.line([(x, y), top], fill=(5, 3, 8), width=width * 2)
    for _ in range(4):
        start_y = y - size * rng.uniform(0.4, 0.95)
        direction = rng.choice([-1.0, 1.0])
        end = (x + direction * size * rng.uniform(0.2, 0.45), start_y - size * rng.uniform(0.1, 0.3))
        draw.line([(x, start_y), end], fill=(5, 3, 8), width=width)


def draw_person(draw: ImageDraw.ImageDraw, person: PersonSpec, scale: float = 1.0) -> None:
    """Draw body (pose cue) and face (expression cue); ``scale`` maps spec pixels to canvas."""
    geometry = person_geometry(person)
    joints = {k: (x * scale, y * scale) for k, (x, y) in geometry["joints"].items()}
    limb = geometry["limb"] * scale
    hand = geometry["hand"] * scale
    radius = geometry["radius"] * scale
    outline = (25, 25, 25)
    clothes = person.clothes
    dark_clothes = tuple(int(c * 0.7) for c in clothes)

    def limb_line(a: str, b: str, color: tuple[int, ...]) -> None:
        for width, fill in ((limb + 2 * scale, outline), (limb, color)):
            draw.line([joints[a], joints[b]], fill=fill, width=max(1, int(round(width))))
            for name in (a, b):
                x, y = joints[name]
                r = width / 2
                draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)

    for side in ("l", "r"):  # legs first: the torso covers the hips
        limb_line(f"hip_{side}", f"knee_{side}", dark_clothes)
        limb_line(f"knee_{side}", f"foot_{side}", dark_clothes)
    torso = [joints["shoulder_l"], joints["shoulder_r"], joints["hip_r"], joints["hip_l"]]
    sx = (joints["shoulder_r"][0] - joints["shoulder_l"][0]) * 0.12
    torso = [(torso[0][0] - sx, torso[0][1]), (torso[1][0] + sx, torso[1][1]), torso[2], torso[3]]
    draw.polygon(torso, fill=clothes, outline=outline)
    limb_line("neck", "neck", person.skin)
    for side in ("l", "r"):
        limb_line(f"shoulder_{side}", f"elbow_{side}", clothes)
        limb_line(f"elbow_{side}", f"hand_{side}", clothes)
        x, y = joints[f"hand_{side}"]
        draw.ellipse([x - hand, y - hand, x + hand, y + hand], fill=person.skin, outline=outline)
    hx, hy = joints["head"]
    draw.ellipse([hx - radius, hy - radius, hx + radius, hy + radius], fill=person.skin, outline=outline, width=max(1, int(scale)))
    draw_face(draw, person.face, hx, hy, radius, scale)


def draw_face(draw: ImageDraw.ImageDraw, category: int, cx: float, cy: float, r: float, scale: float = 1.0) -> None:
    """Expression cue of ``category`` inside the head circle at (cx, cy), radius r."""
    ink = (30, 20, 20)
    stroke = max(1, int(round(0.11 * r)))

    def p(x: float, y: float) -> tuple[float, float]:
        return cx + x * r, cy + y * r

    def box(x1: float, y1: float, x2: float, y2: float) -> list[float]:
        return [cx + x1 * r, cy + y1 * r, cx + x2 * r, cy + y2 * r]

    def dot_eyes(size: float = 0.12) -> None:
        for ex in (-0.38, 0.38):
            draw.ellipse(box(ex - size, -0.12 - size, ex + size, -0.12 + size), fill=ink)

    def wide_eyes() -> None:
        for ex in (-0.38, 0.38):
            draw.ellipse(box(ex - 0.2, -0.34, ex + 0.2, 0.08), fill=(255, 255, 255), outline=ink)
            draw.ellipse(box(ex - 0.08, -0.18, ex + 0.08, -0.02), fill=ink)

    def brows(inner_y: float, outer_y: float) -> None:
        for sign in (-1.0, 1.0):
            draw.line([p(sign * 0.15, inner_y), p(sign * 0.6, outer_y)], fill=ink, width=stroke)

    if category == HAPPINESS:
        dot_eyes()
        brows(-0.45, -0.45)
        draw.arc(box(-0.5, -0.05, 0.5, 0.6), start=15, end=165, fill=ink, width=stroke + 1)
    elif category == SADNESS:
        dot_eyes()
        brows(-0.5, -0.3)  # inner ends raised: worry
        draw.arc(box(-0.42, 0.32, 0.42, 0.9), start=200, end=340, fill=ink, width=stroke + 1)
        draw.ellipse(box(0.3, 0.05, 0.46, 0.3), fill=(80, 150, 255))  # a tear
    elif category == ANGER:
        dot_eyes()
        brows(-0.22, -0.55)  # V: inner ends down
        brows(-0.24, -0.57)
        draw.line([p(-0.35, 0.45), p(0.35, 0.45)], fill=ink, width=stroke + 1)
        draw.line([p(-0.35, 0.45), p(-0.45, 0.55)], fill=ink, width=stroke)
        draw.line([p(0.35, 0.45), p(0.45, 0.55)], fill=ink, width=stroke)
    elif category == FEAR:
        wide_eyes()
        brows(-0.58, -0.42)
        draw.ellipse(box(-0.3, 0.32, 0.3, 0.56), fill=ink)
        draw.line([p(-0.22, 0.44), p(0.22, 0.44)], fill=(255, 255, 255), width=max(1, stroke // 2))  # teeth
    elif category == SURPRISE:
        wide_eyes()
        for sign in (-1.0, 1.0):
            draw.arc(box(sign * 0.38 - 0.25, -0.75, sign * 0.38 + 0.25, -0.4), start=200, end=340, fill=ink, width=stroke)
        draw.ellipse(box(-0.2, 0.22, 0.2, 0.72), fill=ink)
    elif category == PEACE:
        for ex in (-0.38, 0.38):  # closed eyes
            draw.arc(box(ex - 0.18, -0.25, ex + 0.18, 0.0), start=20, end=160, fill=ink, width=stroke)
        brows(-0.42, -0.42)
        draw.arc(box(-0.28, 0.15, 0.28, 0.5), start=20, end=160, fill=ink, width=stroke)
        for ex in (-0.55, 0.55):  # rosy cheeks
            draw.ellipse(box(ex - 0.13, 0.12, ex + 0.13, 0.32), fill=(245, 150, 150))
    else:
        raise ValueError(f"unknown face category {category}")


@dataclass(frozen=True)
class RenderedScene:
    """A rendered scene: ``pixels`` uint8 [H, W, 3], boxes float32 [n, 4] xyxy, ``labels``
    int64 [n] category indices, ``spec`` the scene it came from."""

    pixels: np.ndarray
    body_boxes: np.ndarray
    face_boxes: np.ndarray
    labels: np.ndarray
    spec: SceneSpec


def render_scene(spec: SceneSpec) -> RenderedScene:
    """Draw a scene; boxes are clipped to the image."""
    s = SUPERSAMPLE
    rng = np.random.default_rng(spec.seed)
    canvas = draw_context(spec.context, spec.width * s, spec.height * s, rng)
    draw = ImageDraw.Draw(canvas)
    bodies, faces = [], []
    for person in spec.people:
        draw_person(draw, person, scale=s)
        geometry = person_geometry(person)
        bodies.append(geometry["body_box"])
        faces.append(geometry["face_box"])
    image = canvas.resize((spec.width, spec.height), Image.LANCZOS)
    limits = np.array([spec.width, spec.height, spec.width, spec.height], dtype=np.float32)
    clip = lambda boxes: np.clip(np.asarray(boxes, dtype=np.float32).reshape(-1, 4), 0, limits)  # noqa: E731
    return RenderedScene(
        pixels=np.asarray(image, dtype=np.uint8),
        body_boxes=clip(bodies),
        face_boxes=clip(faces),
        labels=np.array([p.label for p in spec.people], dtype=np.int64),
        spec=spec,
    )


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split``: independent of how many are made."""
    return np.random.default_rng([int(seed), SPLIT_INDEX.get(split, sum(map(ord, split))), int(index)])


def iter_scenes(
    n: int,
    seed: int = 0,
    split: str = "train",
    conflict_rate: float = 0.3,
    image_size: tuple[int, int] = (160, 160),
    max_people: int = 3,
) -> Iterator[RenderedScene]:
    """Render ``n`` scenes of ``split`` in memory (``generate_synthetic_emotic`` writes them)."""
    for index in range(n):
        yield render_scene(sample_scene(scene_rng(seed, split, index), image_size, conflict_rate, max_people))


# ---------------------------------------------------------------- writing an EMOTIC-format dataset


def generate_synthetic_emotic(
    root: str | os.PathLike,
    n_train: int,
    n_val: int,
    n_test: int,
    conflict_rate: float = 0.3,
    seed: int = 0,
    image_size: tuple[int, int] = (160, 160),
    max_people: int = 3,
    jpeg_quality: int = 92,
) -> dict[str, object]:
    """Write a synthetic EMOTIC-format dataset to the local folder ``root``.

    Returns a summary: per split the number of images and people and the measured
    fraction of conflict images, plus the label list and the annotation path.
    """
    root = Path(root)
    (root / IMAGE_FOLDER).mkdir(parents=True, exist_ok=True)
    image_size = (int(image_size[0]), int(image_size[1]))
    splits: dict[str, list[EmoticImage]] = {}
    summary: dict[str, object] = {"root": str(root), "labels": list(CATEGORIES), "splits": {}}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        images, people, conflicts = [], 0, 0
        for index, scene in enumerate(iter_scenes(n, seed, split, conflict_rate, image_size, max_people)):
            filename = f"{split}_{index:06d}.jpg"
            Image.fromarray(scene.pixels).save(root / IMAGE_FOLDER / filename, quality=jpeg_quality)
            images.append(_emotic_image(scene, filename, split))
            people += len(scene.spec.people)
            conflicts += int(scene.spec.conflict)
        splits[split] = images
        summary["splits"][split] = {"images": n, "people": people, "conflict_fraction": conflicts / n if n else 0.0}
    annotations = root / "Annotations.mat"
    write_emotic_annotations(annotations, splits, categories=CATEGORIES, label_set="synthetic")
    summary["annotations"] = str(annotations)
    return summary


def _emotic_image(scene: RenderedScene, filename: str, split: str) -> EmoticImage:
    spec = scene.spec
    people = []
    for i, person in enumerate(spec.people):
        name = CATEGORIES[person.label]
        people.append(
            EmoticPerson(
                body_bbox=scene.body_boxes[i].tolist(),
                categories=[[name]],
                continuous=[person.vad],
                head_bbox=scene.face_boxes[i].tolist(),
                gender="Unknown",
                age="Adult",
                extra={
                    "cue_face": CATEGORIES[person.face],
                    "cue_body": CATEGORIES[person.body],
                    "cue_context": CATEGORIES[spec.context],
                },
            )
        )
    return EmoticImage(filename, IMAGE_FOLDER, spec.width, spec.height, people, database="synthetic")


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


def build_synthetic(cfg: Mapping) -> dict[str, object]:
    """Generate from a config: root, n_train, n_val, n_test, conflict_rate, seed, image_size."""
    size = cfg.get("image_size", (160, 160))
    if isinstance(size, int):
        size = (size, size)
    return generate_synthetic_emotic(
        cfg["root"],
        int(cfg.get("n_train", 1000)),
        int(cfg.get("n_val", 200)),
        int(cfg.get("n_test", 200)),
        conflict_rate=float(cfg.get("conflict_rate", 0.3)),
        seed=int(cfg.get("seed", 0)),
        image_size=(int(size[0]), int(size[1])),
        max_people=int(cfg.get("max_people", 3)),
    )
