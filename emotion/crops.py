"""Cut the three windows CocoER looks at: head (face), body and context (whole image)."""

from __future__ import annotations

import numpy as np
from PIL import Image


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
