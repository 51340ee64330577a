"""Box helpers on numpy arrays: clipping, IoU, body box from a face.

Conventions: boxes are float arrays [n, 4] of ``(x1, y1, x2, y2)`` in continuous pixel
coordinates, where pixel (col, row) covers [col, col+1) x [row, row+1); a box inside an
image of height H and width W satisfies 0 <= x1 <= x2 <= W and 0 <= y1 <= y2 <= H.
``image_hw`` is ``(H, W)``. Every function accepts n = 0 and returns float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def _as_boxes(boxes: np.ndarray, name: str = "boxes") -> np.ndarray:
    array = np.asarray(boxes, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name} must have shape [n, 4] (x1, y1, x2, y2), got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite coordinates")
    return array


def _as_hw(image_hw: Sequence[int]) -> tuple[int, int]:
    if len(image_hw) < 2:
        raise ValueError(f"image_hw must be (height, width), got {image_hw!r}")
    height, width = int(image_hw[0]), int(image_hw[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"image_hw must be positive (height, width), got {image_hw!r}")
    return height, width


def clip_boxes(boxes: np.ndarray, image_hw: Sequence[int]) -> np.ndarray:
    """Clip boxes to the image: x into [0, W], y into [0, H].

    A box wholly outside the image becomes a zero-area box on the nearest edge; boxes
    are not reordered, so an inverted box (x2 < x1) stays inverted.

    Returns:
        float32 [n, 4], a new array.
    """
    array = _as_boxes(boxes)
    height, width = _as_hw(image_hw)
    limits = np.array([width, height, width, height], dtype=np.float32)
    return np.clip(array, 0.0, limits)


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Areas [n]; inverted or degenerate boxes have area 0."""
    array = _as_boxes(boxes)
    return np.clip(array[:, 2] - array[:, 0], 0, None) * np.clip(array[:, 3] - array[:, 1], 0, None)


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union.

    Returns:
        float32 [n, m]; a pair whose union is empty (two zero-area boxes) has IoU 0, not NaN.
    """
    a = _as_boxes(boxes_a, "boxes_a")
    b = _as_boxes(boxes_b, "boxes_b")
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    overlap = np.clip(bottom_right - top_left, 0, None)
    intersection = overlap[..., 0] * overlap[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - intersection
    iou = np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)
    return iou.astype(np.float32)


def body_box_from_face(
    face_boxes: np.ndarray,
    image_hw: Sequence[int],
    width_factor: float = 3.0,
    above_factor: float = 0.5,
    below_factor: float = 7.0,
) -> np.ndarray:
    """Estimate each person's body box from their face box, clipped to the image.

    Geometry, in units of the face box's width w and height h (RetinaFace boxes span
    roughly eyebrows to chin, about 0.8 of the crown-to-chin head height):

    * horizontally: ``width_factor`` x w (3 w), centred on the face. Shoulder breadth
      (biacromial, ~40 cm in adults) is 2.5-3 times face breadth (~14 cm), so 3 w covers
      the shoulders and arms held at the sides;
    * top: ``above_factor`` x h (0.5 h) above the face box, to include the forehead and
      hair above the detector's box;
    * bottom: ``below_factor`` x h (7 h) below the face top. An adult is about 7.5 head
      heights tall, i.e. about 9 face-box heights (h ~ 18 cm), so 7 h (~125 cm) reaches
      below the knees of a standing person and the feet of a seated one (common in
      EMOTIC-style scenes); whatever falls outside the frame is clipped away.

    It assumes an upright person; for tilted or lying people it is a coarse context
    window, which is what the body branch needs when no person detector runs.

    Args:
        face_boxes: [n, 4] xyxy face boxes.
        image_hw: (height, width) of the image.

    Returns:
        float32 [n, 4] body boxes; a degenerate face box gives a degenerate body box.
    """
    faces = _as_boxes(face_boxes, "face_boxes")
    for name, value in (("width_factor", width_factor), ("above_factor", above_factor), ("below_factor", below_factor)):
        if value < 0:
            raise ValueError(f"{name} must be non-negative, got {value}")
    width = np.clip(faces[:, 2] - faces[:, 0], 0, None)
    height = np.clip(faces[:, 3] - faces[:, 1], 0, None)
    centre_x = (faces[:, 0] + faces[:, 2]) / 2
    body = np.stack(
        [
            centre_x - width * width_factor / 2,
            faces[:, 1] - height * above_factor,
            centre_x + width * width_factor / 2,
            faces[:, 1] + height * below_factor,
        ],
        axis=1,
    )
    return clip_boxes(body, image_hw)


def usable_people(targets: np.ndarray, faces: np.ndarray, bodies: np.ndarray,
                  image_hw: Callable[[], Sequence[int]], *, multi_label: bool,
                  needs_face: bool = False) -> tuple[list[int], np.ndarray, list[str]]:
    """Which annotated people training rows and evaluation use: the one rule.

    A single-label person without a class (an all-zero target row; NaN marks a class the
    dataset lacks, never a class) is left out, as is a person with neither box, or without
    a face box when ``needs_face`` (a model reading the head). A kept person's unknown
    body box is derived from the face (``body_box_from_face``, as tagging does);
    ``image_hw`` is called only then.

    Returns (kept person indices, the body boxes [n, 4] with the derived ones filled in,
    one reason per person left out).
    """
    targets = np.asarray(targets, dtype=np.float32).reshape(len(targets), -1)
    faces = np.asarray(faces).reshape(-1, 4)  # the caller's dtype: crops must match tagging's to the pixel
    bodies = np.array(bodies).reshape(-1, 4)
    keep: list[int] = []
    reasons: list[str] = []
    size: Sequence[int] | None = None
    for p, target in enumerate(targets):
        face_known, body_known = bool(np.isfinite(faces[p]).all()), bool(np.isfinite(bodies[p]).all())
        if not multi_label and not np.nan_to_num(target, nan=0.0).max() > 0:
            reasons.append("no class")
        elif needs_face and not face_known:
            reasons.append("unknown face box")
        elif not body_known and not face_known:
            reasons.append("unknown body and face boxes")
        else:
            if not body_known:
                size = size if size is not None else image_hw()
                bodies[p] = body_box_from_face(faces[p:p + 1], size)[0]
            keep.append(p)
    return keep, bodies, reasons
