"""The one crop function: the windows a model reads, head (face), body and context
(whole image), cut the same way in tagging, serving, evaluation and training.

Boxes are in working-image pixels: the decoded image shrunk so its longer side is at most
``CropSpec.max_side`` (``emotion.images.resize_max_side``), which every path applies first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from emotion.boxes import body_box_from_face


@dataclass(frozen=True)
class CropSpec:
    """How to cut crops for one model from one box source.

    ``levels`` and ``size`` come from the model's ``InputSpec``; ``head_expand`` from the
    box source (a detector's or a dataset's face-box convention: 1.25 around RetinaFace's
    tight boxes, 1.0 when the image already is the face); ``max_side`` from the predictor
    config (one value for every path).
    """

    levels: tuple[str, ...]
    size: int
    head_expand: float
    max_side: int


def person_crops(pixels: np.ndarray, faces: np.ndarray, bodies: np.ndarray, spec: CropSpec) -> dict[str, np.ndarray]:
    """Crops of n people: level -> uint8 [n, S, S, 3].

    ``faces`` [n, 4]: face boxes; ``bodies`` [n, 4]: person boxes, a row of NaN where
    unknown (then derived from the face, as ``emotion.boxes.body_box_from_face`` does at
    tagging time). Head = the face box made square and expanded by ``head_expand``.
    """
    faces = np.asarray(faces, dtype=np.float32).reshape(-1, 4)
    bodies = np.array(bodies, dtype=np.float32).reshape(-1, 4)
    size = spec.size
    if len(faces) == 0:
        return {level: np.zeros((0, size, size, 3), dtype=np.uint8) for level in spec.levels}
    unknown = ~np.isfinite(bodies).all(axis=1)
    if unknown.any():
        bodies[unknown] = body_box_from_face(faces[unknown], pixels.shape[:2])
    out: dict[str, np.ndarray] = {}
    for level in spec.levels:
        if level == "head":
            out[level] = np.stack([crop_resize(pixels, box, size) for box in square_box(faces, spec.head_expand)])
        elif level == "body":
            out[level] = np.stack([crop_resize(pixels, box, size) for box in bodies])
        else:
            out[level] = np.repeat(context_window(pixels, size)[None], len(faces), axis=0)
    return out


def square_box(boxes: np.ndarray, expand: float) -> np.ndarray:
    """Square boxes of side ``expand`` x the longer side, on the same centres. [n,4] -> [n,4]."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2
    half = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * expand / 2
    return np.stack([centre_x - half, centre_y - half, centre_x + half, centre_y + half], axis=1)


def crop_resize(pixels: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Crop ``box`` (x1,y1,x2,y2 in ``pixels`` coordinates) and resize to size x size.

    Parts of the box outside the image are filled with black, so a face at the border
    keeps its place in the crop instead of being stretched.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (x2 - x1 >= 1 and y2 - y1 >= 1):
        return np.zeros((size, size, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    crop = image.crop((round(x1), round(y1), round(x2), round(y2)))
    return np.asarray(crop.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def context_window(pixels: np.ndarray, size: int) -> np.ndarray:
    """The whole image resized to size x size (the context level)."""
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.BILINEAR), dtype=np.uint8)
