"""Drawing ``scenes_v2`` images: the neutral room, weak contexts, and people with real faces.

* context clear: the first generator's scene (``drawing.draw_context``); weak: that scene
  at opacity ``context_alpha`` over the neutral room; absent: the neutral room alone
  (a gray-beige wall, a floor, a few gray frames: no category).
* body: the first generator's body drawing (``drawing.draw_body``) in the pose
  ``spec.blended_pose`` gives (clear, weak or neutral).
* face: the FER+ face (gray, shown as RGB) resized to the head circle and pasted with a
  soft round mask, over a skin-coloured head disc.

Like the first generator, scenes are drawn at twice the size and shrunk (``SUPERSAMPLE``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

from emotion.data.synthetic.drawing import SUPERSAMPLE, _gradient, draw_body, draw_context
from emotion.data.synthetic.scenes_v2.faces import FacePool, FaceRef
from emotion.data.synthetic.scenes_v2.layout import sample_scene_v2
from emotion.data.synthetic.scenes_v2.params import ScenesV2Params
from emotion.data.synthetic.scenes_v2.spec import PersonV2, SceneV2, scene_rng_v2

FACE_FEATHER = 0.10  # soft edge of the face mask, as a fraction of the head radius
FACE_EXTENT = 0.97  # the face covers this fraction of the head radius (the outline stays)


def draw_neutral_scene(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A plain room that carries no category: wall, floor, a few gray frames."""
    tint = rng.uniform(-12, 12, 3)
    wall = np.clip(np.array([178.0, 172.0, 160.0]) + tint + rng.uniform(-25, 25), 60, 230)
    img = _gradient(width, height, tuple(int(v) for v in wall * 1.05), tuple(int(v) for v in wall * 0.92))
    draw = ImageDraw.Draw(img)
    floor_y = height * rng.uniform(0.6, 0.75)
    floor = tuple(int(v) for v in np.clip(wall * rng.uniform(0.55, 0.75), 0, 255))
    draw.rectangle([0, floor_y, width, height], fill=floor)
    draw.line([(0, floor_y), (width, floor_y)], fill=tuple(int(v * 0.8) for v in floor), width=max(1, height // 80))
    for _ in range(int(rng.integers(1, 4))):
        w, h = rng.uniform(0.08, 0.22) * width, rng.uniform(0.08, 0.25) * height
        x, y = rng.uniform(0, width - w), rng.uniform(0.05, 0.55) * floor_y
        gray = int(rng.uniform(90, 210))
        draw.rectangle([x, y, x + w, y + h], fill=(gray, gray, gray), outline=(70, 70, 70), width=max(1, height // 100))
    return img


def draw_background(scene: SceneV2, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """The context level of ``scene`` at ``width`` x ``height``."""
    neutral = draw_neutral_scene(width, height, rng)
    if scene.context is None:
        return neutral
    shown = draw_context(scene.context, width, height, rng)
    return shown if scene.context_state == "clear" else Image.blend(neutral, shown, scene.context_alpha)


def _face_patch(face: np.ndarray, size: int) -> tuple[Image.Image, Image.Image]:
    """(RGB face, L soft round mask), both ``size`` x ``size``."""
    gray = Image.fromarray(face, mode="L").resize((size, size), Image.BICUBIC)
    centre = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size]
    distance = np.hypot(xx - centre, yy - centre) / (size / 2.0)
    alpha = np.clip((FACE_EXTENT - distance) / FACE_FEATHER, 0.0, 1.0)
    return gray.convert("RGB"), Image.fromarray((alpha * 255).astype(np.uint8), mode="L")


def draw_person_v2(canvas: Image.Image, person: PersonV2, face: np.ndarray, scale: float) -> None:
    """Body, head disc and pasted face of ``person`` on ``canvas`` (spec pixels x ``scale``)."""
    geometry = person.geometry()
    draw = ImageDraw.Draw(canvas)
    draw_body(draw, geometry, person.skin, person.clothes, scale)
    hx, hy = (v * scale for v in geometry["joints"]["head"])  # type: ignore[index]
    radius = float(geometry["radius"]) * scale  # type: ignore[arg-type]
    draw.ellipse([hx - radius, hy - radius, hx + radius, hy + radius], fill=person.skin, outline=(25, 25, 25), width=max(1, int(scale)))
    size = max(2, int(round(2 * radius)))
    patch, mask = _face_patch(face, size)
    canvas.paste(patch, (int(round(hx - size / 2)), int(round(hy - size / 2))), mask)


@dataclass(frozen=True)
class RenderedSceneV2:
    """``pixels`` uint8 [H, W, 3]; boxes float32 [n, 4] xyxy clipped to the image; ``labels``
    int64 [n]; ``spec`` the scene (people in the same order)."""

    pixels: np.ndarray
    body_boxes: np.ndarray
    face_boxes: np.ndarray
    labels: np.ndarray
    spec: SceneV2


def render_scene_v2(scene: SceneV2, pool: FacePool) -> RenderedSceneV2:
    """Draw ``scene`` with its faces read from ``pool``; boxes are clipped to the image."""
    s = SUPERSAMPLE
    canvas = draw_background(scene, scene.width * s, scene.height * s, np.random.default_rng(scene.seed))
    bodies, faces = [], []
    for person in scene.people:
        face = pool.pixels(FaceRef(person.face_source, person.face_uri, person.face))
        draw_person_v2(canvas, person, face, s)
        geometry = person.geometry()
        bodies.append(geometry["body_box"])
        faces.append(geometry["face_box"])
    image = canvas.resize((scene.width, scene.height), Image.LANCZOS)
    limits = np.array([scene.width, scene.height] * 2, dtype=np.float32)
    clip = lambda boxes: np.clip(np.asarray(boxes, dtype=np.float32).reshape(-1, 4), 0, limits)  # noqa: E731
    return RenderedSceneV2(
        pixels=np.asarray(image, dtype=np.uint8),
        body_boxes=clip(bodies),
        face_boxes=clip(faces),
        labels=np.array([p.label for p in scene.people], dtype=np.int64),
        spec=scene,
    )


def iter_scenes_v2(
    n: int, pool: FacePool, seed: int = 0, split: str = "train", image_size: tuple[int, int] = (224, 224),
    params: ScenesV2Params | None = None,
) -> Iterator[RenderedSceneV2]:
    """Sample and render ``n`` scenes of ``split`` with faces from ``pool`` (image ``i``
    depends only on seed, split, i, the image size, the parameters and the pool)."""
    if pool.split != split:
        raise ValueError(f"a {split!r} scene needs the {split!r} face pool, got the {pool.split!r} one")
    params = params or ScenesV2Params()
    for index in range(n):
        yield render_scene_v2(sample_scene_v2(scene_rng_v2(seed, split, index), pool, image_size, params), pool)
