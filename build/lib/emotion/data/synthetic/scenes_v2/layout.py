"""Placing the people of a ``scenes_v2`` image: sizes, a simple perspective, occlusion
(``place_people``), and a whole scene sampled: cues, faces and layout (``sample_scene_v2``).

Heights are log-uniform between the height whose face (head) is ``min_face_px`` wide and
``max_height x (1 - crowd_shrink x (n - 1))`` of the image height for ``n`` people (the
face is 2 x ``HEAD_RADIUS`` = 0.26 of a person's standing height; crowds are drawn
smaller, as in photos; in small images the lower bound is at most half the image height).
People are placed nearest (tallest) first. The camera looks from ``CAMERA`` x a
person's height (one value per image) towards a horizon at ``HORIZON`` of the image
height: a person's feet stand ``camera x height x U(FEET_JITTER)`` below it, so near
people stand lower, farther ones' heads rise above theirs, and the tallest are cut by the
bottom edge (a face that would leave the image is moved back in); the body midline is
uniform over the places that keep the face inside the image, so people at the sides are
cut by the left or right edge. A position is kept when nearer people's drawn pixels cover
at most ``max_face_covered`` of the face box; bodies may be hidden by nearer people
freely. After ``placement_tries`` refused positions the person is left out (rare: under
1 % of people at 224 px; the nearest person is always placed). Each person records
``visible``: the fraction of its drawn pixels inside the image and not behind nearer
people.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from emotion.data.synthetic.drawing import draw_body
from emotion.data.synthetic.scenes_v2.faces import FacePool
from emotion.data.synthetic.scenes_v2.params import ScenesV2Params
from emotion.data.synthetic.scenes_v2.spec import PersonV2, SceneV2, sample_cues
from emotion.data.synthetic.spec import HEAD_RADIUS

HORIZON = (0.20, 0.45)  # fraction of the image height
CAMERA = (0.9, 1.3)  # camera height, in person heights (chest to above the head)
FEET_JITTER = (0.85, 1.2)  # people's own heights and depths vary


def height_range(width: int, height: int, people: int, params: ScenesV2Params) -> tuple[float, float]:
    """(smallest, tallest) standing height in pixels in an image of ``people`` people."""
    smallest = min(params.min_face_px / (2 * HEAD_RADIUS), 0.5 * params.max_height * height)
    tallest = params.max_height * height * (1.0 - params.crowd_shrink * (people - 1))
    return smallest, max(smallest, tallest)


def silhouette(geometry: Mapping[str, object]) -> tuple[np.ndarray, int, int]:
    """(bool mask of the pixels the person covers, x and y of its top-left pixel in the
    image); the mask spans the person's body box and may reach outside the image."""
    x0, y0, x1, y1 = (int(math.floor(v)) for v in geometry["body_box"])  # type: ignore[union-attr]
    canvas = Image.new("RGB", (x1 - x0 + 2, y1 - y0 + 2))
    local = dict(geometry)
    local["joints"] = {k: (x - x0, y - y0) for k, (x, y) in geometry["joints"].items()}  # type: ignore[union-attr]
    draw = ImageDraw.Draw(canvas)
    draw_body(draw, local, (255, 255, 255), (255, 255, 255))
    hx, hy = local["joints"]["head"]
    r = float(geometry["radius"])  # type: ignore[arg-type]
    draw.ellipse([hx - r, hy - r, hx + r, hy + r], fill=(255, 255, 255), outline=(25, 25, 25))
    return np.asarray(canvas)[..., 0] > 0, x0, y0


def _in_image(mask: np.ndarray, x0: int, y0: int, width: int, height: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """The part of ``mask`` (top-left at x0, y0) inside the image, and where it lies there."""
    left, top = max(0, x0), max(0, y0)
    right, bottom = min(width, x0 + mask.shape[1]), min(height, y0 + mask.shape[0])
    if right <= left or bottom <= top:
        return np.zeros((0, 0), dtype=bool), (slice(0, 0), slice(0, 0))
    return mask[top - y0 : bottom - y0, left - x0 : right - x0], (slice(top, bottom), slice(left, right))


def _position(
    rng: np.random.Generator, person: PersonV2, h: float, horizon: float, camera: float, width: int, height: int
) -> PersonV2:
    """``person`` at height ``h``, feet below the horizon, midline uniform over the places
    that keep the face box inside the image (moved up or down when the feet would not)."""
    ground_y = horizon + camera * h * float(rng.uniform(*FEET_JITTER))
    x1, y1, x2, y2 = replace(person, center_x=0.0, ground_y=ground_y, height=h).geometry()["face_box"]  # type: ignore[misc]
    ground_y += max(0.0, -y1) - max(0.0, y2 - height)
    return replace(person, center_x=float(rng.uniform(-x1, width - x2)), ground_y=ground_y, height=h)


def _covered(occupied: np.ndarray, box: Sequence[float]) -> float:
    x1, y1 = int(math.floor(box[0])), int(math.floor(box[1]))
    x2, y2 = int(math.ceil(box[2])), int(math.ceil(box[3]))
    window = occupied[y1:y2, x1:x2]
    return float(window.mean()) if window.size else 1.0


def place_people(
    rng: np.random.Generator, people: Sequence[PersonV2], width: int, height: int, params: ScenesV2Params
) -> tuple[float, tuple[PersonV2, ...]]:
    """(horizon y, the people placed, far to near: the order they are drawn in)."""
    low, high = height_range(width, height, len(people), params)
    heights = np.exp(rng.uniform(math.log(low), math.log(high), len(people)))
    horizon = float(rng.uniform(*HORIZON) * height)
    camera = float(rng.uniform(*CAMERA))
    occupied = np.zeros((height, width), dtype=bool)  # nearer people's pixels
    placed: list[PersonV2] = []
    for i in np.argsort(-heights, kind="stable"):  # nearest first
        for _ in range(params.placement_tries):
            person = _position(rng, people[i], float(heights[i]), horizon, camera, width, height)
            geometry = person.geometry()
            if _covered(occupied, geometry["face_box"]) > params.max_face_covered:
                continue
            mask, x0, y0 = silhouette(geometry)
            inside, where = _in_image(mask, x0, y0, width, height)
            visible = float((inside & ~occupied[where]).sum() / max(1, mask.sum()))
            occupied[where] |= inside
            placed.append(replace(person, visible=visible))
            break
    return horizon, tuple(reversed(placed))


def sample_scene_v2(rng: np.random.Generator, pool: FacePool, image_size: tuple[int, int], params: ScenesV2Params) -> SceneV2:
    """One image's cues, faces and layout (no pixels)."""
    width, height = image_size
    context, state, alpha, people = sample_cues(rng, pool, params)
    horizon, placed = place_people(rng, people, width, height, params)
    return SceneV2(width, height, context, state, alpha, horizon, placed, int(rng.integers(2**31)))
