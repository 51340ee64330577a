"""The one crop function: the windows a model reads, head (face), body and context
(whole image), cut the same way in tagging, serving, evaluation and training.

Boxes are in working-image pixels: the decoded image shrunk so its longer side is at most
``CropSpec.max_side`` (``emotion.images.resize_max_side``), which every path applies first.

Face alignment (``CropSpec.align``): where a face comes with its five landmarks (eyes,
nose tip, mouth corners: RetinaFace's), the head crop is the similarity transform
(rotation, scale, shift) that puts them nearest, in least squares, to
``face_template(head_expand)``, so eyes are level and at one place in every head crop. The
template is where those landmarks sit, on average, in the unaligned head crop of the same
``head_expand`` (the face box made square and expanded by it), so an aligned face is framed
as an unaligned upright one.
A face without landmarks (a pre-cropped face, ``detector=full_frame``; a dataset's box)
is cut from its square box.
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
    box source (a detector's or a dataset's face-box convention: 1.1 around RetinaFace's
    tight boxes, 1.0 when the image already is the face); ``max_side`` from the predictor
    config (one value for every path).
    """

    levels: tuple[str, ...]
    size: int
    head_expand: float
    max_side: int
    align: bool = False  # head crops of faces with landmarks by similarity transform (module doc)


def person_crops(pixels: np.ndarray, faces: np.ndarray, bodies: np.ndarray, spec: CropSpec,
                 landmarks: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Crops of n people: level -> uint8 [n, S, S, 3].

    ``faces`` [n, 4]: face boxes; ``bodies`` [n, 4]: person boxes, a row of NaN where
    unknown (then derived from the face, as ``emotion.boxes.body_box_from_face`` does at
    tagging time). Head = the face box made square and expanded by ``head_expand``, or,
    with ``spec.align`` and finite ``landmarks`` [n, 5, 2] for the face, the aligned face
    (``aligned_face``).
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
            out[level] = head_crops(pixels, faces, spec, landmarks)
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


# Where the five landmarks (left eye, right eye, nose tip, left and right mouth corner, in
# image order) sit in an upright head crop, as fractions of its side. Measured with the
# packaged RetinaFace on web faces (506 of ExpW val's 507; benchmarks/face_template.py): the
# median of each point in the unaligned head crop (face box made square, expanded by
# TEMPLATE_EXPAND), made left-right symmetric.
FACE_TEMPLATE = np.array([[0.3591, 0.4180], [0.6409, 0.4180], [0.5000, 0.5796],
                          [0.3873, 0.7232], [0.6127, 0.7232]], dtype=np.float64)
TEMPLATE_EXPAND = 1.25


def face_template(head_expand: float) -> np.ndarray:
    """``FACE_TEMPLATE`` [5, 2] for head crops of ``head_expand``: the same points about the
    crop's centre, spread by ``TEMPLATE_EXPAND / head_expand`` (a tighter crop shows the
    face larger)."""
    return 0.5 + (FACE_TEMPLATE - 0.5) * (TEMPLATE_EXPAND / float(head_expand))


def head_crops(pixels: np.ndarray, faces: np.ndarray, spec: CropSpec,
               landmarks: np.ndarray | None = None) -> np.ndarray:
    """uint8 [n, S, S, 3] head crops: aligned where ``spec.align`` and the face's
    landmarks are finite, else the square box around the face."""
    boxes = square_box(faces, spec.head_expand)
    points = None if landmarks is None or not spec.align else np.asarray(landmarks, np.float64).reshape(-1, 5, 2)
    out = []
    for i, box in enumerate(boxes):
        if points is not None and np.isfinite(points[i]).all():
            out.append(aligned_face(pixels, points[i], spec.size, face_template(spec.head_expand)))
        else:
            out.append(crop_resize(pixels, box, spec.size))
    return np.stack(out)


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 similarity (rotation, uniform scale, shift) taking points ``source`` [m, 2]
    nearest to ``target`` [m, 2] in least squares (Umeyama, 1991; no reflection)."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
    s, t = source - mu_s, target - mu_t
    covariance = t.T @ s / len(source)
    u, d, vt = np.linalg.svd(covariance)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1.0
    rotation = u @ sign @ vt
    variance = (s ** 2).sum() / len(source)
    scale = float(np.trace(np.diag(d) @ sign) / variance) if variance > 0 else 1.0
    shift = mu_t - scale * rotation @ mu_s
    return np.concatenate([scale * rotation, shift[:, None]], axis=1)


def aligned_face(pixels: np.ndarray, landmarks: np.ndarray, size: int, template: np.ndarray) -> np.ndarray:
    """uint8 [S, S, 3]: the face whose five ``landmarks`` [5, 2] (image pixels) are moved
    onto ``template`` [5, 2] (fractions of the side, ``face_template``) x ``size``; the image
    is first shrunk by a whole factor when the face is more than twice the crop (a box
    filter, so a large face is not aliased); outside the image is black, as in ``crop_resize``."""
    landmarks = np.asarray(landmarks, np.float64).reshape(5, 2)
    template = np.asarray(template, np.float64).reshape(5, 2)
    matrix = similarity_transform(landmarks, template * size)
    scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
    image = Image.fromarray(pixels)
    factor = max(1, int(1.0 / (2.0 * scale))) if scale > 0 else 1
    if factor > 1:  # work on the image shrunk by `factor`: the face is still at least twice the crop
        image = image.reduce(factor)
        matrix = similarity_transform(landmarks / factor, template * size)
    # PIL maps each output point to an input point in continuous coordinates (pixel
    # centres at +0.5), the convention of the landmarks and the template.
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]  # crop -> image
    coefficients = tuple(float(v) for v in inverse.reshape(-1))
    warped = image.transform((size, size), Image.AFFINE, data=coefficients, resample=Image.BILINEAR, fillcolor=0)
    return np.asarray(warped.convert("RGB"), dtype=np.uint8)
