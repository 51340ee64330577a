"""A "detector" for collections of pre-cropped faces (FER2013, RAF-DB aligned, ...).

Every image is one face that fills the frame, so the face box is the whole image and
the score is 1. Use ``detector=full_frame`` for such folders: a real face detector
rarely finds a 48x48 face that already fills the picture.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


class FullFrameDetector:
    """Returns the whole image as the single face of each image."""

    def detect(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        results = []
        for image in images:
            height, width = image.shape[:2]
            results.append(
                {
                    "boxes": np.array([[0, 0, width, height]], dtype=np.float32),
                    "landmarks": np.full((1, 5, 2), np.nan, dtype=np.float32),
                    "scores": np.ones(1, dtype=np.float32),
                }
            )
        return results

    def to(self, device: str) -> "FullFrameDetector":
        return self


def build_full_frame_detector(cfg: Mapping | None = None) -> FullFrameDetector:
    return FullFrameDetector()
