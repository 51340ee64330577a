"""A "detector" for images that each hold one person's face: pre-cropped faces (FER2013,
RAF-DB aligned), portraits, lab photos of a posed face.

Every image is one face, so each image gives exactly one face box, with score 1. Without a
finder the box is the whole image: the image is taken to be the face crop. With a finder
(``find_face``: RetinaFace), the face is looked for inside the image and put into the
framing the face models learnt (FER2013's crops, where RetinaFace's box is 0.97 of the
frame's side): the box is the square of the found face box's longer side, centred on it and
moved to lie inside the image (``face_square``). An image where no face is found, or whose
face square does not fit inside it (a crop already tighter than FER2013's), keeps the whole
image as its box. Landmarks are never returned: the crop is a box crop, so
``predictor.align_faces`` leaves these faces as they are.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def face_square(box: np.ndarray, height: int, width: int) -> np.ndarray | None:
    """The square [4] of side the longer side of ``box`` (x1, y1, x2, y2), centred on it and
    shifted to lie inside a ``height`` x ``width`` image; None when it does not fit."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1)
    if not side > 0 or side > min(height, width):
        return None
    left = min(max((x1 + x2 - side) / 2, 0.0), width - side)
    top = min(max((y1 + y2 - side) / 2, 0.0), height - side)
    return np.array([left, top, left + side, top + side], dtype=np.float32)


class FullFrameDetector:
    """One face per image: the whole image, or the face a ``finder`` finds in it (module doc).

    ``finder``: a detector with ``detect(images) -> [{"boxes", "scores", ...}]``, boxes
    sorted by score (``FaceDetector``); its most confident face is the image's face.
    """

    def __init__(self, finder: Any | None = None) -> None:
        self.finder = finder

    @property
    def device(self) -> Any:
        """Where the finder runs; None without one (no network)."""
        return None if self.finder is None else self.finder.device

    def detect(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        found = self.finder.detect(images) if self.finder is not None and len(images) else [None] * len(images)
        results = []
        for image, faces in zip(images, found):
            height, width = image.shape[:2]
            box = None
            if faces is not None and len(faces["scores"]):
                box = face_square(faces["boxes"][0], height, width)
            if box is None:
                box = np.array([0, 0, width, height], dtype=np.float32)
            results.append({
                "boxes": box[None],
                "landmarks": np.full((1, 5, 2), np.nan, dtype=np.float32),
                "scores": np.ones(1, dtype=np.float32),
            })
        return results

    def to(self, device: str) -> "FullFrameDetector":
        if self.finder is not None:
            self.finder = self.finder.to(device)
        return self
