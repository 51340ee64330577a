"""Drawing the synthetic scenes: the context backgrounds (``draw_context``), the people's
poses and faces (``draw_person``, ``draw_face``), and whole scenes rendered to pixels
with their clipped boxes (``render_scene``; ``iter_scenes`` samples and renders ``n``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from emotion.data.synthetic.spec import (
    ANGER,
    FEAR,
    HAPPINESS,
    PEACE,
    SADNESS,
    SURPRISE,
    PersonSpec,
    SceneSpec,
    person_geometry,
    sample_scene,
    scene_rng,
)

SUPERSAMPLE = 2  # draw at 2x and shrink: anti-aliased edges like a real photo's


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
    draw_body(draw, geometry, person.skin, person.clothes, scale)
    outline = (25, 25, 25)
    hx, hy = geometry["joints"]["head"]
    hx, hy = hx * scale, hy * scale
    radius = geometry["radius"] * scale
    draw.ellipse([hx - radius, hy - radius, hx + radius, hy + radius], fill=person.skin, outline=outline, width=max(1, int(scale)))
    draw_face(draw, person.face, hx, hy, radius, scale)


def draw_body(
    draw: ImageDraw.ImageDraw,
    geometry: Mapping[str, Any],
    skin: tuple[int, int, int],
    clothes: tuple[int, int, int],
    scale: float = 1.0,
) -> None:
    """Draw a body without its head (legs, torso, neck, arms, hands) from ``geometry``
    (``person_geometry`` / ``geometry_from_joints``); ``scale`` maps its pixels to canvas."""
    joints = {k: (x * scale, y * scale) for k, (x, y) in geometry["joints"].items()}
    limb = geometry["limb"] * scale
    hand = geometry["hand"] * scale
    outline = (25, 25, 25)
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
    limb_line("neck", "neck", skin)
    for side in ("l", "r"):
        limb_line(f"shoulder_{side}", f"elbow_{side}", clothes)
        limb_line(f"elbow_{side}", f"hand_{side}", clothes)
        x, y = joints[f"hand_{side}"]
        draw.ellipse([x - hand, y - hand, x + hand, y + hand], fill=skin, outline=outline)


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
